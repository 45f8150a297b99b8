"""Where things live, and which values are secrets.

Settings come from the environment (and a ``.env`` file at the project root, which never
overrides a variable that is already set). Nothing here opens a connection.

=========================  ==========================================================
variable                   meaning
=========================  ==========================================================
``DATABASE_URL``           PostgreSQL to use; unset: the embedded server in ``.opsbook/pg``
``REDIS_URL``              Redis to use; unset: the embedded server in ``.opsbook/redis``
``LAKE_URL``               lake root, a folder or ``gs://bucket/prefix``; unset: ``.opsbook/lake``
``ARCHIVE_URL``            raw archive root, the same forms; unset: ``.opsbook/archive``
``OPSBOOK_HOME``           the project root (default: found from the working directory)
``OPSBOOK_STATE_DIR``      embedded servers and generated stand-in data (default: ``<root>/.opsbook``)
``OPSBOOK_REPORTS_DIR``    executed notebooks and HTML reports (default: ``<root>/reports``)
``OPSBOOK_SECRET_*``       any further secret value to redact from every artifact
=========================  ==========================================================
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _looks_like_root(path: Path) -> bool:
    return (path / "run_notebook.py").is_file() and (path / "notebooks").is_dir()


@cache
def project_root() -> Path:
    """The workbook's root folder: ``OPSBOOK_HOME``, else the nearest parent holding
    ``run_notebook.py`` and ``notebooks/``, else the checkout this package was installed from."""
    if os.environ.get("OPSBOOK_HOME"):
        return Path(os.environ["OPSBOOK_HOME"]).resolve()
    here = Path.cwd().resolve()
    for path in (here, *here.parents):
        if _looks_like_root(path):
            return path
    checkout = _PACKAGE_DIR.parent.parent
    if _looks_like_root(checkout):
        return checkout
    return here


def load_dotenv_once() -> None:
    """Read ``<root>/.env`` into the environment, without overriding what is set."""
    _load_dotenv(project_root())


@cache
def _load_dotenv(root: Path) -> None:
    env_file = root / ".env"
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)


def state_dir() -> Path:
    path = Path(os.environ.get("OPSBOOK_STATE_DIR") or project_root() / ".opsbook")
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir() -> Path:
    path = Path(os.environ.get("OPSBOOK_REPORTS_DIR") or project_root() / "reports")
    path.mkdir(parents=True, exist_ok=True)
    return path


def lake_url() -> str:
    """The lake's root: ``LAKE_URL`` (a folder or ``gs://bucket/prefix``), else ``<state>/lake``."""
    return os.environ.get("LAKE_URL") or str(state_dir() / "lake")


def archive_url() -> str:
    """The raw archive's root: ``ARCHIVE_URL`` (a folder or ``gs://bucket/prefix``), else ``<state>/archive``."""
    return os.environ.get("ARCHIVE_URL") or str(state_dir() / "archive")


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def params_dir() -> Path:
    return project_root() / "params"


def package_data(*parts: str) -> Path:
    """A file shipped inside the package (reference data, templates)."""
    return _PACKAGE_DIR.joinpath("data", *parts)


# --- files -----------------------------------------------------------------------------------


# a settings file (parameters, dataset spec, check suite, policy, runbook) is a few KB at most
MAX_YAML_BYTES = 1_000_000


def read_text_file(path: Path, what: str = "file", limit: int = MAX_YAML_BYTES) -> str:
    """A small UTF-8 text file's content, or UsageError (exit 2) saying in one line why not.

    Only a regular file is opened (a folder, a FIFO that would block, ``/dev/zero`` that
    never ends, a socket are refused before any read), at most ``limit`` bytes are read, and
    binary content (NUL bytes, invalid UTF-8) is refused rather than half-parsed.
    """
    import errno
    import stat

    from opsbook.errors import UsageError

    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise UsageError(f"{what} {str(path)[:80]}...: the path is too long for this system") from exc
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{what} {path} is a folder; give the path of a YAML file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{what} {path} is not a regular file (a pipe or a device); give a YAML file")
    if info.st_size > limit:
        raise UsageError(f"{what} {path} is {info.st_size:,} bytes; a settings file holds at most {limit:,}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    if len(data) > limit:
        raise UsageError(f"{what} {path} grew beyond {limit:,} bytes while being read")
    if b"\0" in data:
        raise UsageError(f"{what} {path} is a binary file, not YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start:,}); save it as UTF-8") from exc


def read_yaml(path: Path, what: str = "file"):
    """A YAML settings file's data; every problem is one UsageError line (exit 2) naming the
    file, and the line where YAML has one.

    Besides syntax, two things YAML allows are refused: anchors and aliases (``&a`` / ``*a``;
    nested aliases expand exponentially, a few hundred bytes can ask for gigabytes) and a key
    given twice in one mapping (YAML keeps the last silently, hiding a typo or a merge).
    """
    import yaml

    from opsbook.errors import UsageError

    text = read_text_file(Path(path), what)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # both are safe loaders; the C one is faster
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise UsageError(
                    f"{path}:{line}: YAML anchors and aliases (&name, *name) are not accepted in a {what}; "
                    "write the values out"
                )
        return yaml.load(text, Loader=_unique_keys_loader(loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else "?"
        raise UsageError(f"{path}:{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from exc


@cache
def _unique_keys_loader(base):
    """A subclass of the YAML loader ``base`` that refuses a key given twice in one mapping."""
    import yaml

    class UniqueKeys(base):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key!r} is given twice (first at line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeys


def validation_problems(exc) -> str:
    """A pydantic ValidationError as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
