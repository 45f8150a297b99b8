"""Retention policies: ``params/policies/<name>.yaml``, each a list of rules, one per table.

- ``drop_partitions``: for a range-partitioned table, DETACH and DROP every partition whose
  upper bound, read from the catalog, is on or before the cutoff (all of its rows are older).
- ``delete_rows``: DELETE the rows whose date or timestamp ``column`` is before the cutoff.
- ``drop_staging``: DROP the staging tables a killed load of ``table`` left behind
  (``<table>_<partition>_load``), each only while no load of that partition runs (its lock is
  free); ``keep_days`` does not apply.
- ``delete_orphans``: DELETE the rows of a derived table whose year ``column`` has no partition
  in ``parent`` any more (yearly aggregates of years no longer loaded); ``keep_days`` does not
  apply, and a parent holding no partition at all removes nothing.

A rule's cutoff is midnight UTC of ``as_of - keep_days``. ``buckets`` lists the lifecycle rules of
the buckets behind the lake and the archive (delete, or move to a colder storage class, after
``age_days``), which GCS enforces once set (:mod:`opsbook.ops.lifecycle`). A problem in a policy
file is named with the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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
    action: Literal["delete_rows", "drop_partitions", "drop_staging", "delete_orphans"]
    column: Identifier | None = None
    keep_days: int | None = Field(None, ge=1, validate_default=True)
    dataset: Identifier | None = None  # drop_staging: whose load locks guard the staging tables
    parent: Identifier | None = None  # delete_orphans: the partitioned table the years must exist in
    why: str = ""

    @field_validator("keep_days")
    @classmethod
    def _ages_need_keep_days(cls, value: int | None, info) -> int | None:
        action = info.data.get("action")
        if value is None and action in ("delete_rows", "drop_partitions"):
            raise ValueError(f"Field required: {action} keeps keep_days days of data")
        return value

    @model_validator(mode="after")
    def _fields_fit_action(self) -> Rule:
        ages = self.action in ("delete_rows", "drop_partitions")
        if not ages and self.keep_days is not None:
            raise ValueError(f"{self.action} takes no keep_days: it removes what is no longer used, whatever its age")
        if self.action in ("delete_rows", "delete_orphans") and not self.column:
            what = "date or timestamp the rows are aged by" if ages else "year column matched against the partitions"
            raise ValueError(f"{self.action} needs a column: the {what}")
        if self.action in ("drop_partitions", "drop_staging") and self.column:
            raise ValueError(f"{self.action} takes no column: what goes comes from the catalog")
        if (self.action == "drop_staging") != bool(self.dataset):
            raise ValueError("drop_staging, and only it, takes a dataset: the load whose locks guard the tables")
        if (self.action == "delete_orphans") != bool(self.parent):
            raise ValueError("delete_orphans, and only it, takes a parent: the table whose partitions must exist")
        return self


class BucketRule(BaseModel):
    """One lifecycle rule of the bucket behind the lake or the archive, set through the GCS API
    and enforced by GCS itself (by each object's age): delete, or move to a colder class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Literal["lake", "archive"]  # LAKE_URL or ARCHIVE_URL: the bucket, and the prefix under it
    prefix: str  # under the root: raw/, processed/
    action: Literal["delete", "set_storage_class"]
    age_days: int = Field(ge=1)
    storage_class: Literal["NEARLINE", "COLDLINE", "ARCHIVE"] | None = None
    why: str = ""

    @model_validator(mode="after")
    def _class_for_moves(self) -> BucketRule:
        if (self.action == "set_storage_class") != bool(self.storage_class):
            raise ValueError("set_storage_class, and only it, takes a storage_class")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rules: list[Rule] = Field(min_length=1)
    buckets: list[BucketRule] = Field(default_factory=list)

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
