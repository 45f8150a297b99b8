"""Retention policies: ``params/policies/<name>.yaml``, each a list of rules, one per table.

- ``drop_partitions``: for a range-partitioned table, DETACH and DROP every partition whose
  upper bound, read from the catalog, is on or before the cutoff (all of its rows are older).
- ``delete_rows``: DELETE the rows whose date or timestamp ``column`` is before the cutoff.

A rule's cutoff is midnight UTC of ``as_of - keep_days``. A problem in a policy file is named
with the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import core_schema

POLICY_FOLDER = "policies"


def _identifier(value: str) -> str:
    from opsbook.datasets import check_identifier

    return check_identifier(value, "name")


Identifier = Annotated[str, AfterValidator(_identifier)]


class Rule(BaseModel):
    """One rule of a policy: what goes from one table, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Identifier
    action: Literal["delete_rows", "drop_partitions"]
    column: Identifier | None = None
    keep_days: int = Field(ge=1)
    why: str = ""

    @model_validator(mode="after")
    def _column_fits_action(self) -> Rule:
        if self.action == "delete_rows" and not self.column:
            raise ValueError("delete_rows needs a column: the date or timestamp the rows are aged by")
        if self.action == "drop_partitions" and self.column:
            raise ValueError("drop_partitions takes no column: the partition key and bounds come from the catalog")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_rule_per_table(self) -> Policy:
        tables = [r.table for r in self.rules]
        twice = sorted({t for t in tables if tables.count(t) > 1})
        if twice:
            raise ValueError(f"one rule per table: {', '.join(twice)} has more than one")
        return self


def policy_path(name: str) -> Path:
    """``trafficsafety`` -> ``params/policies/trafficsafety.yaml``; a path is taken as it is
    (relative to the project root)."""
    from opsbook import config

    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(name)
        return path if path.is_absolute() else config.project_root() / path
    return config.params_dir() / POLICY_FOLDER / f"{name}.yaml"


def load_policy(name: str) -> tuple[Policy, Path]:
    """The policy ``name`` and its file; a problem raises UsageError naming file, line and field."""
    from opsbook import config
    from opsbook.errors import UsageError

    path = policy_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in (config.params_dir() / POLICY_FOLDER).glob("*.yaml"))
        raise UsageError(f"retention policy {name!r}: {path} does not exist (policies: {', '.join(known) or 'none'})")
    data = config.read_yaml(path, "retention policy")
    try:
        return Policy.model_validate(data), path
    except ValidationError as exc:
        text = path.read_text(encoding="utf-8")
        problems = "; ".join(
            f"{path}:{_yaml_line(text, e['loc'])}: {_field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UsageError(f"invalid retention policy: {problems}") from None


def _field_path(loc: tuple) -> str:
    """``("rules", 1, "keep_days")`` -> ``rules[1].keep_days``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "policy"


def _yaml_line(text: str, loc: tuple) -> int:
    """The line of the YAML node at ``loc`` (or of the nearest parent that exists)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


@dataclass(frozen=True)
class PolicyChoice:
    """A parameter naming a policy: validated by loading it, and written back as the name."""

    name: str
    policy: Policy
    path: Path

    @classmethod
    def parse(cls, value: Any) -> PolicyChoice:
        from opsbook.errors import UsageError

        if isinstance(value, PolicyChoice):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected the name of a policy in params/policies/ or the path of a policy file")
        try:
            policy, path = load_policy(value.strip())
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return cls(value.strip(), policy, path)

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.to_string_ser_schema(when_used="json-unless-none")
        )

    def __str__(self) -> str:
        return self.name
