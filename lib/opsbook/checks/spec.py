"""Check suites: declarative checks kept in ``params/datasets/<dataset>.checks.yaml``.

A suite is trusted configuration, reviewed like code: its ``where`` and ``condition``
entries are SQL fragments. Everything that comes from a run's parameters (the window, the
reference name) is validated and bound, never pasted into SQL.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opsbook.datasets import check_identifier
from opsbook.errors import UsageError

Severity = Literal["error", "warn"]
Grain = Literal["year", "month", "day"]


def check_table_name(name: str) -> str:
    """``table`` or ``schema.table``, each part a plain lower-case identifier."""
    for part in name.split("."):
        check_identifier(part, "table")
    if name.count(".") > 1:
        raise ValueError(f"table {name!r}: at most schema.table")
    return name


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    severity: Severity = "error"
    description: str = ""
    table: str | None = None  # default: the dataset's table
    where: str | None = None  # SQL filter, from the suite file only

    _name = field_validator("name")(lambda v: check_identifier(v, "check name"))
    _table = field_validator("table")(lambda v: v if v is None else check_table_name(v))


class _ColumnCheck(_Check):
    column: str

    _column = field_validator("column")(lambda v: check_identifier(v, "column"))


class RowCount(_Check):
    """Rows in the table (or in each partition of ``per``) between ``min`` and ``max``."""

    type: Literal["row_count"]
    min: int | None = None
    max: int | None = None
    per: Grain | None = None
    column: str | None = None  # the date column partitions are counted by (default: the dataset's)

    _column = field_validator("column")(lambda v: v if v is None else check_identifier(v, "column"))


class Coverage(_Check):
    """Every partition of the window present (each year, month or day), the missing ones listed."""

    type: Literal["coverage"]
    grain: Grain = "month"
    column: str | None = None

    _column = field_validator("column")(lambda v: v if v is None else check_identifier(v, "column"))


class Measure(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    measure: Literal["count", "sum"]
    column: str | None = None  # what is summed
    reference_column: str  # the reference's column holding the expected value
    label: str | None = None

    @model_validator(mode="after")
    def _sum_needs_column(self) -> Measure:
        if self.measure == "sum" and not self.column:
            raise ValueError("a sum measure needs a column")
        if self.column:
            check_identifier(self.column, "column")
        return self

    @property
    def title(self) -> str:
        return self.label or (f"sum of {self.column}" if self.measure == "sum" else "rows")


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    abs: float = 0.0
    rel: float = 0.0

    def allows(self, observed: float, expected: float) -> bool:
        return abs(observed - expected) <= max(self.abs, self.rel * abs(expected))


class ExpectedTotals(_Check):
    """Count and sums per partition equal to reference values, within a tolerance.

    With ``grain: all`` the totals are the whole table's (the window does not apply) and the
    expected values are given inline, e.g. the runbook's sanity totals.
    """

    type: Literal["expected_totals"]
    grain: Literal["all", "year", "month"] = "month"
    column: str | None = None

    _column = field_validator("column")(lambda v: v if v is None else check_identifier(v, "column"))
    measures: list[Measure]
    tolerance: Tolerance = Field(default_factory=Tolerance)
    expected: dict[str, float] | None = None  # reference_column -> value, for grain "all"

    @model_validator(mode="after")
    def _inline_for_all(self) -> ExpectedTotals:
        if (self.grain == "all") != (self.expected is not None):
            raise ValueError("grain 'all' takes inline expected values (and only it does)")
        if self.expected is not None:
            missing = [m.reference_column for m in self.measures if m.reference_column not in self.expected]
            if missing:
                raise ValueError(f"no expected value for {', '.join(missing)}")
        return self


class NotNull(_Check):
    type: Literal["not_null"]
    columns: list[str]

    _columns = field_validator("columns")(lambda v: [check_identifier(c, "column") for c in v])


class Unique(_Check):
    """No two rows share the ``columns`` (NULLs compare equal: NULL-safe)."""

    type: Literal["unique"]
    columns: list[str]

    _columns = field_validator("columns")(lambda v: [check_identifier(c, "column") for c in v])


class AcceptedValues(_ColumnCheck):
    type: Literal["accepted_values"]
    values: list[Any]

    @field_validator("values")
    @classmethod
    def _no_booleans(cls, values: list[Any]) -> list[Any]:
        # YAML 1.1 reads ON, NO, YES, OFF... as booleans: a province list would lose "ON"
        flagged = [v for v in values if isinstance(v, bool)]
        if flagged:
            raise ValueError(
                f"{len(flagged)} value(s) read as true/false: quote words such as ON, NO, YES, OFF in YAML"
            )
        return values


class Range(_ColumnCheck):
    type: Literal["range"]
    min: Any = None
    max: Any = None


class Freshness(_ColumnCheck):
    type: Literal["freshness"]
    max_age_hours: float


class Referential(_Check):
    """Every non-NULL key of the child table exists in the parent."""

    type: Literal["referential"]
    columns: list[str]
    parent: str
    parent_columns: list[str]

    _columns = field_validator("columns", "parent_columns")(lambda v: [check_identifier(c, "column") for c in v])
    _parent = field_validator("parent")(check_table_name)


class RowsPerGroup(_Check):
    """``expected`` rows for every group of ``group_by`` in every ``per`` (day, month, year) of
    the window. A cell is a group seen in the window and one partition of the window (a group
    silent for a whole day is a cell with 0 rows); cells with another count are off. Up to
    ``max_share_off`` of the cells off is tolerated (WARN); beyond, the check fails by its
    severity. The off cells are its failing rows."""

    type: Literal["rows_per_group"]
    group_by: list[str]
    per: Grain = "day"
    expected: int = Field(ge=0)
    max_share_off: float = Field(0.0, ge=0, le=1)
    column: str | None = None  # the date or timestamp column partitions are counted by (default: the window's)

    _columns = field_validator("group_by")(lambda v: [check_identifier(c, "column") for c in v])
    _column = field_validator("column")(lambda v: v if v is None else check_identifier(v, "column"))

    @model_validator(mode="after")
    def _names_free(self) -> RowsPerGroup:
        if not self.group_by:
            raise ValueError("rows_per_group needs at least one group_by column")
        if {self.per, "rows"} & set(self.group_by):
            raise ValueError(f"group_by may not name {self.per!r} or 'rows': the failing rows use those names")
        return self


class RowCondition(_Check):
    """A SQL boolean every row satisfies (NULL counts as false)."""

    type: Literal["row_condition"]
    condition: str


class DatabaseSize(_Check):
    type: Literal["database_size"]
    max_gb: float


class FreeDisk(_Check):
    """At least ``min_gb`` free on the disks the data lives on, where this host can see them."""

    type: Literal["free_disk"]
    min_gb: float


class RedisKey(_Check):
    """A key exists, with a TTL and size in bounds, and its payload matches a JSON schema."""

    type: Literal["redis_key"]
    key: str
    min_ttl_seconds: int | None = None  # -1 (no expiry) passes unless ``require_ttl``
    max_ttl_seconds: int | None = None
    require_ttl: bool = False
    min_bytes: int | None = None
    max_bytes: int | None = None
    json_schema: dict[str, Any] | None = None


class RedisTotals(_Check):
    """A published payload's totals equal PostgreSQL's: each ``totals`` entry maps a field of the
    decoded payload (a dotted path) to a column of ``query``. With ``per``, the payload holds
    totals per group under that field (group -> totals) and the query returns one row per group,
    named in its ``key`` column; every group on either side is compared."""

    type: Literal["redis_totals"]
    key: str
    per: str | None = None
    per_key: str | None = None  # when ``per`` holds a list of objects: the field naming each one's group
    totals: dict[str, str]
    query: str  # SQL from the suite (or the procedure); %(name)s binds a run value
    tolerance: Tolerance = Field(default_factory=Tolerance)

    @model_validator(mode="after")
    def _per_key_needs_per(self) -> RedisTotals:
        if self.per_key and not self.per:
            raise ValueError("per_key names the group of each item of the per field: give per too")
        return self


class EmptyQuery(_Check):
    """A query that returns the rows breaking a rule; the check passes when it returns none."""

    type: Literal["empty_query"]
    query: str  # SQL from the suite (or the procedure); %(name)s binds a run value


class ReadBack(_Check):
    """What was read back from a written artifact (a file, a payload) as its client reads it,
    against what the source holds: both given by the caller as totals by name, each compared
    within ``tolerance``. The caller does the reading; this check judges."""

    type: Literal["read_back"]
    artifact: str  # what was read back, as the report names it
    source: str = "the source"  # where the expected totals come from, as the report names it
    observed: dict[str, int | float | None]  # read back
    expected: dict[str, int | float | None]  # what the source holds
    tolerance: Tolerance = Field(default_factory=Tolerance)


class Geometry(_Check):
    """Valid geometries with the expected SRID: PostGIS when present, else shapely."""

    type: Literal["geometry"]
    column: str | None = None  # a geometry (or WKB/EWKB bytea) column
    lat: str | None = None  # or point coordinates
    lon: str | None = None
    srid: int = 4326

    @model_validator(mode="after")
    def _one_form(self) -> Geometry:
        if bool(self.column) == bool(self.lat and self.lon):
            raise ValueError("give either column, or lat and lon")
        for c in (self.column, self.lat, self.lon):
            if c:
                check_identifier(c, "column")
        return self


Check = Annotated[
    RowCount
    | Coverage
    | ExpectedTotals
    | NotNull
    | Unique
    | AcceptedValues
    | Range
    | Freshness
    | Referential
    | RowsPerGroup
    | RowCondition
    | DatabaseSize
    | FreeDisk
    | RedisKey
    | RedisTotals
    | EmptyQuery
    | ReadBack
    | Geometry,
    Field(discriminator="type"),
]


class Reference(BaseModel):
    """Where expected values come from: a function returning a DataFrame, or a CSV file.

    The frame has the partition columns (``year``, and ``month`` for a monthly grain) and one
    column per measure's ``reference_column``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    function: str | None = None  # "module:function", called with the window's years and kwargs
    kwargs: dict[str, Any] = Field(default_factory=dict)
    csv: str | None = None  # a path relative to the suite file
    tolerance: Tolerance | None = None  # overrides each check's

    @model_validator(mode="after")
    def _one_source(self) -> Reference:
        if bool(self.function) == bool(self.csv):
            raise ValueError("a reference needs either function or csv")
        return self


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    description: str = ""
    sample_columns: list[str] = Field(default_factory=list)  # shown beside failing rows
    references: dict[str, Reference] = Field(default_factory=dict)
    default_reference: str | None = None
    checks: list[Check]
    path: Path | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        names = [c.name for c in self.checks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"check names must be unique: {', '.join(repeated)}")
        if self.default_reference and self.default_reference not in self.references:
            raise ValueError(f"default_reference {self.default_reference!r} is not among references")
        return self


def suite_path(dataset: str) -> Path:
    from opsbook.datasets import datasets_dir

    return datasets_dir() / f"{dataset}.checks.yaml"


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; errors name the file (and line for YAML errors)."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError as exc:
        raise UsageError(f"no check suite at {path}") from exc
    return _load_suite(path, mtime)


@functools.lru_cache(maxsize=32)
def _load_suite(path: Path, mtime: int) -> Suite:
    from opsbook.config import read_yaml, validation_problems

    try:
        return Suite(**read_yaml(path, "check suite"), path=path)
    except ValidationError as exc:
        raise UsageError(f"{path}: invalid check suite: {validation_problems(exc)}") from None
