"""What a suite's checks share while they run: the connection, the table checked, the window, the reference."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from opsbook.checks import PartitionCount, Target
from opsbook.checks import spec as s
from opsbook.windows import Days, Years, format_years

DATE_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}
YEAR_TYPES = {"integer", "smallint", "bigint"}
_RANGE_BOUND = re.compile(r"FOR VALUES FROM \('(\d{4})-\d\d-\d\d[^)]*\) TO \('(\d{4})-\d\d-\d\d[^)]*\)")


def table_ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


def where_of(check) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(check.where)) if check.where else sql.SQL("TRUE")


def target_of(spec: Any) -> tuple[str | None, str | None]:
    """(table, window column) of what a suite checks: a DatasetSpec, a Target, or None."""
    if spec is None:
        return None, None
    if isinstance(spec, Target):
        return spec.table, spec.window_column
    return spec.table, spec.partition.column


@dataclass
class Context:
    conn: psycopg.Connection | None
    spec: Any  # DatasetSpec | Target | None: what the suite checks (see target_of)
    suite: s.Suite
    window: Years | Days
    reference: str | None
    params: dict[str, Any] = field(default_factory=dict)
    years: list[int] = field(default_factory=list)  # the window's years (all the table holds when empty)
    _types: dict[str, dict[str, str]] = field(default_factory=dict)
    _references: dict[str, Any] = field(default_factory=dict)
    month_rows: dict[tuple[int, int], int] | None = None
    month_expected: dict[tuple[int, int], int] = field(default_factory=dict)
    table: str | None = field(init=False, default=None)  # the table checked (a check may name another)
    window_column: str | None = field(init=False, default=None)  # the column the window filters

    def __post_init__(self) -> None:
        self.table, self.window_column = target_of(self.spec)
        if isinstance(self.window, Days):
            self.years = sorted({d.year for d in self.window.days})
        elif self.window.everything:
            self.years = self.held_years()
        else:
            self.years = list(self.window.resolve(self.held_years()))

    # --- the window -----------------------------------------------------------------------

    @property
    def days(self) -> Days | None:
        return self.window if isinstance(self.window, Days) and self.window else None

    def window_label(self) -> str:
        if self.days:
            return str(self.days)
        if not self.years:
            return "no partition"
        held = "every partition the table holds: " if isinstance(self.window, Years) and self.window.everything else ""
        return held + format_years(self.years)

    def held_years(self) -> list[int]:
        """Every year from the first to the last the dataset's table holds (a gap inside is a
        missing year, for the coverage checks to find): from the partition bounds when the table
        is partitioned by year, else from its smallest and largest partition value."""
        table, column = self.table, self.window_column
        if table is None or column is None:
            return []
        bounds = self.conn.execute(
            """SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = to_regclass(%s)""",
            (table,),
        ).fetchall()
        found = [int(m.group(1)) for (b,) in bounds if b and (m := _RANGE_BOUND.search(b))]
        if not found:
            if self.conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                raise LookupError(f"table {table} does not exist")
            row = self.conn.execute(
                sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(c=sql.Identifier(column), t=table_ident(table))
            ).fetchone()
            found = [_year_of(v) for v in row if v is not None]
        return list(range(min(found), max(found) + 1)) if found else []

    def table_of(self, check) -> str:
        table = check.table or self.table
        if table is None:
            raise LookupError(f"check {check.name} names no table, and the suite checks none")
        return table

    def isolated(self):
        """A savepoint when the checks run inside a transaction (a snapshot): a check that fails
        there rolls back to it, and the transaction stays usable for the next check."""
        if self.conn is not None and self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            return self.conn.transaction()
        return contextlib.nullcontext()

    def column_types(self, table: str) -> dict[str, str]:
        if table not in self._types:
            schema, _, name = table.rpartition(".")
            rows = self.conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (schema or "public", name),
            ).fetchall()
            if not rows:
                raise LookupError(f"table {table} does not exist")
            self._types[table] = dict(rows)
        return self._types[table]

    def partition_column(self, check) -> str | None:
        if isinstance(check, s.ExpectedTotals) and check.grain == "all":
            return None  # whole-table totals: no window, no partitions
        column = (
            getattr(check, "column", None)
            if isinstance(check, s.Coverage | s.ExpectedTotals | s.RowCount | s.RowsPerGroup)
            else None
        )
        if column:
            return column
        if getattr(check, "window_column", None):
            return check.window_column
        if self.table_of(check) == self.table:
            return self.window_column
        return None

    def window_filter(self, table: str, column: str | None) -> sql.Composable:
        """Rows of the window: date ranges (so partitions are pruned) or a year list."""
        if column is None or not self.years:
            return sql.SQL("TRUE")
        kind = self.column_types(table).get(column)
        if kind in YEAR_TYPES:
            return sql.SQL("{} = ANY({})").format(sql.Identifier(column), sql.Literal(self.years))
        if kind not in DATE_TYPES:
            raise TypeError(f"{table}.{column} is {kind}: the window needs a date or an integer year column")
        if self.days:
            spans = [(self.days.first, self.days.last + dt.timedelta(days=1))]
        else:
            spans = [(dt.date(first, 1, 1), dt.date(last + 1, 1, 1)) for first, last in _runs(self.years)]
        if kind == "timestamp with time zone":  # UTC days, as the scan groups them (not the session's zone)
            spans = [(_utc(lo), _utc(hi)) for lo, hi in spans]
        ranges = [
            sql.SQL("({col} >= {lo} AND {col} < {hi})").format(
                col=sql.Identifier(column), lo=sql.Literal(lo.isoformat()), hi=sql.Literal(hi.isoformat())
            )
            for lo, hi in spans
        ]
        return sql.SQL("(") + sql.SQL(" OR ").join(ranges) + sql.SQL(")")

    # --- the reference --------------------------------------------------------------------

    def reference_frame(self):
        """The expected values of the chosen reference, for the window's years."""
        from opsbook.checks import references

        name = self.reference
        if not name:
            raise LookupError("no reference chosen (the suite has no default_reference)")
        if name not in self._references:
            frame = references.frame(self.suite, name, tuple(self.years))
            self._references[name] = frame[frame["year"].isin(self.years)]
        return self._references[name]

    def partition_counts(self) -> list[PartitionCount]:
        if self.month_rows is None:
            return []
        keys = sorted(set(self.month_rows) | set(self.month_expected))
        return [PartitionCount(y, m, self.month_rows.get((y, m), 0), self.month_expected.get((y, m))) for y, m in keys]


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _year_of(value: Any) -> int:
    return value.year if isinstance(value, dt.date) else int(value)


def _runs(years: list[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for year in sorted(years):
        if runs and year == runs[-1][1] + 1:
            runs[-1][1] = year
        else:
            runs.append([year, year])
    return [(a, b) for a, b in runs]
