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


def read_yaml(path: Path, what: str = "file"):
    """A YAML file's data; a syntax error names the file and line (UsageError, exit 2)."""
    import yaml

    from opsbook.errors import UsageError

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # both are safe loaders; the C one is faster
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} does not exist") from exc
    try:
        return yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise UsageError(f"{path}:{line}: not valid YAML: {exc.problem}") from exc


def validation_problems(exc) -> str:
    """A pydantic ValidationError as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
