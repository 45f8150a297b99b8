"""Typed parameters: the base model, shared field types, and layering of parameter sources.

Layering order (later wins): the model's defaults (the same as the notebook's parameters
cell) < each ``-f`` YAML file in order < each ``-p name=value``. Unknown names are refused
with the closest valid name; bad values name the parameter and what was expected.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from opsbook.errors import UsageError

# names a credential goes by: password, db_password, api_token, client_secret, private_key, ...
_CREDENTIAL_NAME = re.compile(
    r"(^|_)(password|passwd|pwd|token|secret|key|apikey|api_key|credentials?|private_key)$", re.IGNORECASE
)
# scheme://user:password@..., also when the password was pasted without percent-encoding
_URL_WITH_PASSWORD = re.compile(r"://[^\s/@:]+:[^\s@]+@")
CREDENTIAL_HINT = (
    "a credential is never a parameter: parameters are recorded in the notebook, the report and the run log. "
    "Put it in the environment or .env (DATABASE_URL, REDIS_URL, GOOGLE_APPLICATION_CREDENTIALS, OPSBOOK_SECRET_*)"
)


def _known_dataset(name: str) -> str:
    from opsbook import datasets

    datasets.get(name)  # raises with the closest known name
    return name


DatasetName = Annotated[str, AfterValidator(_known_dataset)]
"""The name of a dataset spec in params/datasets/."""


def _known_zone(value: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a time zone (e.g. America/Toronto, UTC)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""An IANA time zone name (America/Toronto, UTC)."""


class ProcedureParams(BaseModel):
    """Base of every procedure's parameters: unknown names are refused, values validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)

    def notebook_parameters(self) -> dict[str, Any]:
        """The values papermill injects: plain JSON types, as the parameters cell declares."""
        return self.model_dump(mode="json")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _describe_errors(model: type[ProcedureParams], error: ValidationError, origin: dict) -> str:
    lines = []
    fields = list(model.model_fields)
    for item in error.errors():
        name = ".".join(str(p) for p in item["loc"])
        if not name:  # a rule over several parameters: its message names them
            lines.append(item["msg"].removeprefix("Value error, "))
            continue
        source = origin.get(name.split(".")[0], "")
        where = f" (from {source})" if source else ""
        if item["type"] == "extra_forbidden":
            hint = closest(name, fields)
            did_you_mean = f"; did you mean {hint!r}?" if hint else ""
            lines.append(f"unknown parameter {name!r}{where}{did_you_mean} Valid names: {', '.join(fields)}.")
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            got = ""
            if isinstance(value, str | int | float | bool) and repr(value) not in message:
                got = f" (got {value!r})"
            lines.append(f"parameter {name!r}{where}: {message}{got}")
    return "\n".join(lines)


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``["years=2017", "force=true"]`` -> ``{"years": "2017", "force": "true"}``."""
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-p expects name=value, got {pair!r}")
        values[name.strip()] = value
    return values


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_params_file(path: Path) -> dict[str, Any]:
    """A YAML mapping of parameter names to values; errors name the file and line.

    Values may name environment variables (see :func:`resolve`).
    """
    from opsbook.config import read_yaml

    data = read_yaml(path, "parameters file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of parameter names to values")
    # a params file may group values under "parameters:" beside a description
    if "parameters" in data and isinstance(data["parameters"], dict):
        data = data["parameters"]
    return data


def _expand(value: Any, path: Path, name: str) -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in a file's value, from the environment (and .env)."""
    import os

    from opsbook.config import load_dotenv_once

    load_dotenv_once()
    if isinstance(value, list):
        return [_expand(v, path, name) for v in value]
    if not isinstance(value, str):
        return value

    def variable(match: re.Match) -> str:
        found = os.environ.get(match.group(1))
        if found:
            return found
        if match.group(2) is not None:
            return match.group(2)
        raise UsageError(
            f"{path}: parameter {name!r} takes its value from the environment variable {match.group(1)}, "
            f"which is not set. Set it (in the environment or .env), or give -p {name}=..."
        )

    return _VARIABLE.sub(variable, value)


def refuse_credentials(values: dict[str, Any], origin: dict[str, str]) -> None:
    """Refuse (exit 2) a parameter whose name or value looks like a credential, before it is
    recorded anywhere; the message names the parameter and where it came from, never the value."""
    from opsbook.run.redaction import secret_values, url_password

    secrets = set(secret_values())
    problems = []
    for name, value in values.items():
        where = f" (from {origin[name]})" if origin.get(name) else ""
        if _CREDENTIAL_NAME.search(str(name)):
            problems.append(f"parameter {name!r}{where} looks like a credential by its name")
        elif isinstance(value, str) and (url_password(value) or _URL_WITH_PASSWORD.search(value) or value in secrets):
            problems.append(f"parameter {name!r}{where} holds a password or a configured secret value")
    if problems:
        raise UsageError("\n".join([*problems, CREDENTIAL_HINT]))


def resolve(
    model: type[ProcedureParams],
    files: Sequence[Path] = (),
    overrides: Sequence[str] = (),
    inline: dict[str, Any] | None = None,
    raw: Sequence[str] = (),
) -> ProcedureParams:
    """Layer defaults < files < ``inline`` (``-y``) < overrides (``-p``) < ``raw`` (``-r``,
    kept as text) and validate; raises UsageError (exit 2).

    A file's value may name environment variables, ``${TORONTO_TICKETS_SOURCE}`` or with a
    default ``${LAKE_URL:-/srv/lake}``: a runbook's params file says where its data lives without
    holding the path (or a credential). An unset variable with no default is refused, naming it,
    unless ``-p`` gives the parameter.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for path in files:
        for name, value in read_params_file(Path(path)).items():
            values[name] = value
            origin[name] = str(path)
    for name, value in (inline or {}).items():
        values[str(name)] = value
        origin[str(name)] = "-y"
    for name, value in parse_overrides(overrides).items():
        values[name] = value
        origin[name] = "-p"
    from opsbook.run.options import Raw

    for name, value in parse_overrides(raw).items():
        values[name] = Raw(value)
        origin[name] = "-r"
    # a value a file takes from the environment is expanded only when no -p replaced it
    for name, value in values.items():
        if origin[name] not in ("-p", "-r", "-y"):
            values[name] = _expand(value, Path(origin[name]), name)
    refuse_credentials(values, origin)
    from opsbook.run.notebooks import NotebookParams

    if issubclass(model, NotebookParams):
        model.refuse_values(list(values))
        # as papermill: only -p values are typed from their text; a file's or -y's are YAML's
        values = {k: Raw(v) if isinstance(v, str) and origin[k] != "-p" else v for k, v in values.items()}
    return validate(model, values, origin)


def validate(model: type[ProcedureParams], values: dict[str, Any], origin=None) -> ProcedureParams:
    try:
        return model(**values)
    except ValidationError as exc:
        raise UsageError(_describe_errors(model, exc, origin or {})) from None
