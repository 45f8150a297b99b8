"""Dataset specs: ``params/datasets/<name>.yaml`` describes a table, its partitions and its source.

A spec is the single place where a dataset's table names, column types and source format
are written down; procedures take a dataset name and read everything else from here.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsbook import config
from opsbook.errors import UsageError

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

ColumnType = Literal["text", "integer", "bigint", "numeric", "double", "date", "time", "timestamptz"]


def check_identifier(name: str, what: str = "identifier") -> str:
    """A lower-case SQL identifier (letters, digits, underscore; at most 63 bytes)."""
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} must be lower-case letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return name


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: ColumnType = "text"
    # how the source writes the value: yyyymmdd dates, hhmm times (leading zeros dropped)
    format: Literal["yyyymmdd", "hhmm", "iso"] | None = None
    # numeric(precision, scale): a fixed scale keeps every value written alike ("30.00")
    precision: int = Field(18, ge=1, le=38)
    scale: int | None = Field(None, ge=0)
    required: bool = False
    description: str = ""

    _check_name = field_validator("name")(lambda v: check_identifier(v, "column"))

    @model_validator(mode="after")
    def _numeric_scale(self) -> Column:
        if self.type == "numeric" and (self.scale is None or self.scale > self.precision):
            raise ValueError(f"numeric column {self.name!r} needs a scale between 0 and its precision")
        return self

    # reconcile: how far a float may drift before it counts as a difference
    abs_tolerance: float = 0.0
    rel_tolerance: float = 0.0

    @property
    def sql_type(self) -> str:
        if self.type == "numeric":
            return f"numeric({self.precision},{self.scale})"
        if self.type == "double":
            return "double precision"
        return self.type


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["city_csv", "parquet"] = "city_csv"
    # parquet: where a day's file lies under the source's root ({date}: YYYY-MM-DD), e.g.
    # processed/indices/indices_{date}.parquet
    layout: str = ""
    # the source's names for the spec's columns, where they differ (older files):
    # {Combined_Index: combined_index}
    rename: dict[str, str] = Field(default_factory=dict)
    # incoming raw files (a glob on the name, e.g. bsm_*.parquet), archived byte for byte where
    # raw_layout says ({yyyy}/{mm}/{dd}: the file's UTC day; {name}: its name), e.g.
    # raw/bsm/{yyyy}/{mm}/{dd}/{name}
    raw_files: str = ""
    raw_layout: str = ""
    # a file belongs to the year whose four digits appear in its name
    file_pattern: str = r"(?<!\d)(?P<year>(19|20)\d\d)(?!\d)"
    encodings: list[str] = Field(default_factory=lambda: ["utf-8", "cp1252"])
    delimiter: str = ","
    # files in subfolders of the source belong to it only when this says so (a backup copy in
    # old/ must not be loaded beside the original)
    recursive: bool = False
    # a longer line is refused while it is read: the file is damaged (NUL padding) or foreign
    max_line_bytes: int = Field(1 << 20, ge=1024)


class Partition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: Literal["year", "day"] = "year"
    column: str

    _check_column = field_validator("column")(lambda v: check_identifier(v, "partition column"))


class DatasetSpec(BaseModel):
    """One dataset: its table, the quarantine table, partitioning, columns and source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str = ""
    description: str = ""
    table: str
    rejected_table: str | None = None  # where malformed input rows are quarantined (loaded datasets)
    partition: Partition
    key: list[str] = Field(default_factory=list)  # the natural key (primary key, upsert target)
    source: Source = Field(default_factory=Source)
    columns: list[Column]
    # the dataset's other tables by role (rollups, reference tables, logs), for a team whose
    # names differ from the procedures' defaults: {hourly: si_hourly, quality_log: dq_log}
    tables: dict[str, str] = Field(default_factory=dict)
    path: Path | None = None

    _check_table = field_validator("table", "rejected_table")(
        lambda v: v if v is None else check_identifier(v, "table")
    )

    @field_validator("tables")
    @classmethod
    def _check_tables(cls, value: dict[str, str]) -> dict[str, str]:
        for role, table in value.items():
            check_identifier(role, "table role")
            check_identifier(table, f"table ({role})")
        return value

    def table_of(self, role: str, default: str) -> str:
        """The table playing ``role`` for this dataset: the spec's ``tables`` entry, else ``default``."""
        return self.tables.get(role, default)

    @model_validator(mode="after")
    def _key_columns_exist(self) -> DatasetSpec:
        unknown = [k for k in self.key if k not in self.column_names]
        if unknown:
            raise ValueError(f"key column(s) {', '.join(unknown)} are not columns")
        return self

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def fingerprint(self) -> str:
        """A hash of what decides the loaded rows: columns, types, formats, partitioning."""
        payload = self.model_dump(mode="json", include={"table", "partition", "source", "columns"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def datasets_dir() -> Path:
    return config.params_dir() / "datasets"


def available() -> list[str]:
    # <name>.yaml; <name>.checks.yaml beside it is the dataset's check suite
    return sorted(p.stem for p in datasets_dir().glob("*.yaml") if "." not in p.stem)


@cache
def _load(path: Path, mtime: float) -> DatasetSpec:
    try:
        return DatasetSpec(**config.read_yaml(path, "dataset spec"), path=path)
    except ValidationError as exc:
        raise UsageError(f"{path}: invalid dataset spec: {config.validation_problems(exc)}") from None


def get(name: str) -> DatasetSpec:
    """The spec named ``name``; an unknown name is refused with the closest known one."""
    path = datasets_dir() / f"{name}.yaml"
    if not IDENTIFIER.match(name) or not path.is_file():
        from opsbook.run.params import closest

        known = available()
        hint = closest(name, known)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean} Known datasets: {', '.join(known) or 'none'} "
            f"(specs in {datasets_dir()})"
        )
    return _load(path, path.stat().st_mtime)
