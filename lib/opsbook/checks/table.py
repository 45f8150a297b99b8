"""Table checks as push-down SQL.

Aggregate checks (row_count, coverage, expected_totals, not_null, accepted_values, range,
freshness, row_condition) on the same table and filter share one scan: a GROUP BY on the
partition date (or year) column with one aggregate per check, rolled up to months and years
here. Only the checks that fail query again, for a sample of failing rows.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import importlib
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, PartitionCount, error_result, outcome
from opsbook.checks import spec as s
from opsbook.stores.postgres import dicts

AGGREGATE_TYPES = (
    s.RowCount,
    s.Coverage,
    s.ExpectedTotals,
    s.NotNull,
    s.AcceptedValues,
    s.Range,
    s.Freshness,
    s.RowCondition,
)
DATE_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}
YEAR_TYPES = {"integer", "smallint", "bigint"}


def table_ident(name: str) -> sql.Identifier:
    return sql.Identifier(*name.split("."))


@dataclass
class Context:
    conn: psycopg.Connection
    spec: Any  # DatasetSpec
    suite: s.Suite
    years: list[int]
    reference: str | None
    _types: dict[str, dict[str, str]] = field(default_factory=dict)
    _references: dict[str, Any] = field(default_factory=dict)
    _month_rows: dict[tuple[int, int], int] | None = None
    _month_expected: dict[tuple[int, int], int] = field(default_factory=dict)

    def table_of(self, check) -> str:
        return check.table or self.spec.table

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
            getattr(check, "column", None) if isinstance(check, s.Coverage | s.ExpectedTotals | s.RowCount) else None
        )
        if column:
            return column
        if self.table_of(check) == self.spec.table:
            return self.spec.partition.column
        return None

    def window_filter(self, table: str, column: str | None) -> sql.Composable:
        """Rows of the window's years: date ranges (so partitions are pruned) or a year list."""
        if column is None or not self.years:
            return sql.SQL("TRUE")
        kind = self.column_types(table).get(column)
        if kind in YEAR_TYPES:
            return sql.SQL("{} = ANY({})").format(sql.Identifier(column), sql.Literal(self.years))
        if kind not in DATE_TYPES:
            raise TypeError(f"{table}.{column} is {kind}: the window needs a date or an integer year column")
        ranges = []
        for first, last in _runs(self.years):
            ranges.append(
                sql.SQL("({col} >= {lo} AND {col} < {hi})").format(
                    col=sql.Identifier(column), lo=sql.Literal(f"{first}-01-01"), hi=sql.Literal(f"{last + 1}-01-01")
                )
            )
        return sql.SQL("(") + sql.SQL(" OR ").join(ranges) + sql.SQL(")")

    def reference_frame(self):
        """The expected values of the chosen reference, for the window's years."""
        name = self.reference
        if not name:
            raise LookupError("no reference chosen (the suite has no default_reference)")
        if name not in self.suite.references:
            known = ", ".join(self.suite.references) or "none"
            raise LookupError(f"unknown reference {name!r} (the suite defines: {known})")
        if name not in self._references:
            ref = self.suite.references[name]
            base = self.suite.path.parent if self.suite.path else None
            frame = _reference(ref.function, tuple(self.years), tuple(sorted(ref.kwargs.items())), ref.csv, base)
            self._references[name] = frame[frame["year"].isin(self.years)]
        return self._references[name]

    def partition_counts(self) -> list[PartitionCount]:
        if self._month_rows is None:
            return []
        keys = sorted(set(self._month_rows) | set(self._month_expected))
        return [
            PartitionCount(y, m, self._month_rows.get((y, m), 0), self._month_expected.get((y, m))) for y, m in keys
        ]


@functools.lru_cache(maxsize=16)
def _reference(function: str | None, years: tuple[int, ...], kwargs: tuple, csv: str | None, base):
    """A reference's frame; cached, since the same suite often runs again in one process."""
    if function:
        module, _, name = function.partition(":")
        return getattr(importlib.import_module(module), name)(list(years), **dict(kwargs))
    import pandas as pd

    return pd.read_csv(base / csv if base else csv)


def _runs(years: list[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for year in sorted(years):
        if runs and year == runs[-1][1] + 1:
            runs[-1][1] = year
        else:
            runs.append([year, year])
    return [(a, b) for a, b in runs]


def _where(check) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(check.where)) if check.where else sql.SQL("TRUE")


# --- the shared aggregate scan ---------------------------------------------------------------


@dataclass
class _Scan:
    table: str
    where: str | None
    column: str | None
    expressions: list[sql.Composable] = field(default_factory=list)
    _aliases: dict[str, str] = field(default_factory=dict)

    def add(self, expression: sql.Composable) -> str:
        """The alias of an aggregate; the same aggregate asked twice is computed once."""
        key = repr(expression)
        if key not in self._aliases:
            self._aliases[key] = alias = f"a{len(self.expressions)}"
            self.expressions.append(sql.SQL("{} AS {}").format(expression, sql.Identifier(alias)))
        return self._aliases[key]


def run_aggregate_checks(ctx: Context, checks: list) -> list[CheckResult]:
    """One scan per (table, filter, partition column) for all the checks that share it. When a
    shared scan fails (one check's SQL is wrong), each of its checks runs alone, so only the
    broken one ends in error."""
    results = _run_grouped(ctx, checks, shared=True)
    order = {c.name: i for i, c in enumerate(checks)}
    return sorted(results, key=lambda r: order[r.name])


def _run_grouped(ctx: Context, checks: list, shared: bool) -> list[CheckResult]:
    scans: dict[Any, _Scan] = {}
    wanted: list[tuple[Any, _Scan, dict[str, str]]] = []
    results: list[CheckResult] = []
    for check in checks:
        try:
            table = ctx.table_of(check)
            column = ctx.partition_column(check)
            key = (table, check.where, column) if shared else check.name
            scan = scans.setdefault(key, _Scan(table, check.where, column))
            wanted.append((check, scan, _aggregates(ctx, check, scan)))
        except Exception as exc:
            results.append(error_result(check, exc))
    data: dict[int, list[dict[str, Any]] | Exception] = {}
    for scan in scans.values():
        try:
            data[id(scan)] = _run_scan(ctx, scan)
        except Exception as exc:
            data[id(scan)] = exc
    retry = []
    for check, scan, aliases in wanted:
        rows = data[id(scan)]
        if isinstance(rows, Exception):
            if shared and sum(1 for _, other, _ in wanted if other is scan) > 1:
                retry.append(check)
            else:
                results.append(error_result(check, rows))
            continue
        try:
            results.append(_evaluate(ctx, check, scan, rows, aliases))
        except Exception as exc:
            results.append(error_result(check, exc))
        if scan.table == ctx.spec.table and ctx._month_rows is None and scan.column:
            ctx._month_rows = _roll_up(ctx, scan, rows, "month", "n")
    if retry:
        results.extend(_run_grouped(ctx, retry, shared=False))
    return results


def _aggregates(ctx: Context, check, scan: _Scan) -> dict[str, str]:
    col = sql.Identifier
    if isinstance(check, s.ExpectedTotals):
        return {
            m.reference_column: scan.add(sql.SQL("sum({})").format(col(m.column)))
            for m in check.measures
            if m.measure == "sum"
        }
    if isinstance(check, s.NotNull):
        ctx.column_types(scan.table)  # fail early on a missing table
        return {c: scan.add(sql.SQL("count({})").format(col(c))) for c in check.columns}
    if isinstance(check, s.AcceptedValues):
        bad = sql.SQL("count(*) FILTER (WHERE {c} IS NOT NULL AND {c}::text <> ALL({v}::text[]))").format(
            c=col(check.column), v=sql.Literal([str(v) for v in check.values])
        )
        return {"bad": scan.add(bad)}
    if isinstance(check, s.Range):
        return {
            "bad": scan.add(sql.SQL("count(*) FILTER (WHERE {})").format(_out_of_range(check))),
            "min": scan.add(sql.SQL("min({})").format(col(check.column))),
            "max": scan.add(sql.SQL("max({})").format(col(check.column))),
        }
    if isinstance(check, s.Freshness):
        return {"newest": scan.add(sql.SQL("max({})").format(col(check.column)))}
    if isinstance(check, s.RowCondition):
        return {"bad": scan.add(sql.SQL("count(*) FILTER (WHERE ({}) IS NOT TRUE)").format(sql.SQL(check.condition)))}
    return {}  # row_count and coverage use the row count every scan has


def _out_of_range(check: s.Range) -> sql.Composable:
    c = sql.Identifier(check.column)
    parts = []
    if check.min is not None:
        parts.append(sql.SQL("{} < {}").format(c, sql.Literal(check.min)))
    if check.max is not None:
        parts.append(sql.SQL("{} > {}").format(c, sql.Literal(check.max)))
    return sql.SQL(" OR ").join(parts) if parts else sql.SQL("FALSE")


def _run_scan(ctx: Context, scan: _Scan) -> list[dict[str, Any]]:
    types = ctx.column_types(scan.table)
    if scan.column and scan.column not in types:
        raise LookupError(f"{scan.table} has no column {scan.column}")
    group = sql.SQL("NULL")
    if scan.column:
        kind = types[scan.column]
        if kind == "timestamp with time zone":
            group = sql.SQL("({} AT TIME ZONE 'UTC')::date").format(sql.Identifier(scan.column))
        elif kind in DATE_TYPES:
            group = sql.SQL("{}::date").format(sql.Identifier(scan.column))
        else:
            group = sql.Identifier(scan.column)
    select = [sql.SQL("{} AS g").format(group), sql.SQL("count(*) AS n"), *scan.expressions]
    query = sql.SQL("SELECT {} FROM {} WHERE {} AND {} GROUP BY 1").format(
        sql.SQL(", ").join(select),
        table_ident(scan.table),
        ctx.window_filter(scan.table, scan.column),
        sql.SQL("({})").format(sql.SQL(scan.where)) if scan.where else sql.SQL("TRUE"),
    )
    return dicts(ctx.conn, query)


def _key(group: Any, grain: str) -> tuple:
    if isinstance(group, dt.date):
        return {"year": (group.year,), "month": (group.year, group.month), "day": (group.year, group.month, group.day)}[
            grain
        ]
    if isinstance(group, int):
        if grain != "year":
            raise TypeError(f"a {grain} grain needs a date column; this one holds years")
        return (group,)
    return ()


def _roll_up(ctx: Context, scan: _Scan, rows: list[dict], grain: str, alias: str) -> dict[tuple, Any]:
    totals: dict[tuple, Any] = defaultdict(int)
    for row in rows:
        value = row[alias]
        if value is None:
            continue
        totals[_key(row["g"], grain)] += value
    return dict(totals)


def _expected_partitions(ctx: Context, grain: str) -> list[tuple]:
    """Every partition of the window up to today (a month still to come is not missing)."""
    today = dt.date.today()
    keys = []
    for year in ctx.years:
        if grain == "year":
            keys.append((year,))
            continue
        for month in range(1, 13):
            if grain == "month":
                if (year, month) <= (today.year, today.month):
                    keys.append((year, month))
                continue
            for day in range(1, calendar.monthrange(year, month)[1] + 1):
                if dt.date(year, month, day) <= today:
                    keys.append((year, month, day))
    return keys


def label(key: tuple) -> str:
    return "-".join(f"{part:02d}" if i else str(part) for i, part in enumerate(key)) or "all"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal | float):
        return f"{value:,.2f}"
    return str(value)


def _signed(value: Any) -> str:
    return ("+" if value > 0 else "") + _fmt(value)


def _evaluate(ctx: Context, check, scan: _Scan, rows: list[dict], aliases: dict[str, str]) -> CheckResult:
    total = sum(r["n"] for r in rows)
    base = dict(name=check.name, type=check.type, severity=check.severity)

    if isinstance(check, s.RowCount):
        if check.per:
            counts = _roll_up(ctx, scan, rows, check.per, "n")
            keys = sorted(set(_expected_partitions(ctx, check.per)) | set(counts)) if scan.column else [()]
            bad = [
                {"partition": label(k), "rows": counts.get(k, 0)}
                for k in keys
                if not _within(counts.get(k, 0), check.min, check.max)
            ]
            observed = f"{len(keys) - len(bad)} of {len(keys)} {check.per}s in bounds"
        else:
            bad = [] if _within(total, check.min, check.max) else [{"partition": "all", "rows": total}]
            observed = f"{total:,} rows"
        return CheckResult(
            **base,
            status=outcome(check, bool(bad)),
            observed=observed,
            expected=_bounds(check.min, check.max, check.per),
            failing=bad[:SAMPLE_ROWS],
            failing_count=len(bad),
            message=_list_message(bad, "partition", "rows outside bounds"),
        )

    if isinstance(check, s.Coverage):
        counts = _roll_up(ctx, scan, rows, check.grain, "n")
        expected = _expected_partitions(ctx, check.grain)
        missing = [k for k in expected if not counts.get(k)]
        failing = [{"missing partition": label(k)} for k in missing]
        message = f"missing {check.grain}s: {', '.join(label(k) for k in missing)}" if missing else ""
        return CheckResult(
            **base,
            status=outcome(check, bool(missing)),
            observed=f"{len(expected) - len(missing)} of {len(expected)} {check.grain}s present",
            expected=f"every {check.grain} of {_window_label(ctx)}",
            failing=failing[:SAMPLE_ROWS],
            failing_count=len(missing),
            message=message,
        )

    if isinstance(check, s.ExpectedTotals):
        return _expected_totals(ctx, check, scan, rows, aliases, base)

    if isinstance(check, s.NotNull):
        nulls = {c: total - sum(r[a] or 0 for r in rows) for c, a in aliases.items()}
        bad = {c: n for c, n in nulls.items() if n}
        sample = (
            _sample(ctx, check, sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in bad))
            if bad
            else []
        )
        return CheckResult(
            **base,
            status=outcome(check, bool(bad)),
            observed=", ".join(f"{c}: {n:,} NULL" for c, n in nulls.items()),
            expected="no NULL in " + ", ".join(check.columns),
            failing=sample,
            failing_count=sum(bad.values()),
            message=", ".join(f"{n:,} rows with {c} NULL" for c, n in bad.items()),
        )

    if isinstance(check, s.AcceptedValues | s.Range | s.RowCondition):
        bad = sum(r[aliases["bad"]] or 0 for r in rows)
        if isinstance(check, s.AcceptedValues):
            expected = f"{check.column} in {check.values}"
            violation = sql.SQL("{c} IS NOT NULL AND {c}::text <> ALL({v}::text[])").format(
                c=sql.Identifier(check.column), v=sql.Literal([str(v) for v in check.values])
            )
            observed = f"{bad:,} rows outside"
        elif isinstance(check, s.Range):
            expected = f"{check.column} {_bounds(check.min, check.max)}"
            violation = _out_of_range(check)
            lows = [r[aliases["min"]] for r in rows if r[aliases["min"]] is not None]
            highs = [r[aliases["max"]] for r in rows if r[aliases["max"]] is not None]
            span = f"min {_fmt(min(lows))}, max {_fmt(max(highs))}" if lows else "no values"
            observed = f"{bad:,} rows out of range ({span})"
        else:
            expected = check.condition
            violation = sql.SQL("({}) IS NOT TRUE").format(sql.SQL(check.condition))
            observed = f"{bad:,} rows fail"
        sample = _sample(ctx, check, violation) if bad else []
        return CheckResult(
            **base,
            status=outcome(check, bad > 0),
            observed=observed,
            expected=expected,
            failing=sample,
            failing_count=bad,
            message=f"{bad:,} rows violate {expected}" if bad else "",
        )

    if isinstance(check, s.Freshness):
        values = [r[aliases["newest"]] for r in rows if r[aliases["newest"]] is not None]
        if not values:
            return CheckResult(
                **base,
                status=outcome(check, True),
                observed="no rows",
                expected=f"newest within {check.max_age_hours:g} h",
                message="the table has no rows",
            )
        newest = max(values)
        moment = newest if isinstance(newest, dt.datetime) else dt.datetime.combine(newest, dt.time())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        age = (dt.datetime.now(dt.UTC) - moment).total_seconds() / 3600
        stale = age > check.max_age_hours
        return CheckResult(
            **base,
            status=outcome(check, stale),
            observed=f"newest {newest} ({age:,.1f} h ago)",
            expected=f"newest within {check.max_age_hours:g} h",
            message=f"the newest {check.column} is {age:,.1f} hours old" if stale else "",
        )
    raise TypeError(f"not an aggregate check: {check.type}")


def _within(value, low, high) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _bounds(low, high, per: str | None = None) -> str:
    text = (
        f"between {_fmt(low)} and {_fmt(high)}"
        if low is not None and high is not None
        else (f">= {_fmt(low)}" if low is not None else f"<= {_fmt(high)}" if high is not None else "any")
    )
    return text + (f" per {per}" if per else "")


def _window_label(ctx: Context) -> str:
    from opsbook.windows import format_years

    return format_years(ctx.years) if ctx.years else "all rows"


def _list_message(bad: list[dict], key: str, what: str) -> str:
    if not bad:
        return ""
    shown = ", ".join(f"{b[key]} ({_fmt(b['rows'])})" for b in bad[:10])
    return f"{len(bad)} {what}: {shown}" + (" ..." if len(bad) > 10 else "")


def _expected_totals(ctx: Context, check: s.ExpectedTotals, scan: _Scan, rows, aliases, base) -> CheckResult:
    expected_by_key: dict[tuple, dict[str, Any]] = {}
    if check.grain == "all":
        expected_by_key[()] = dict(check.expected or {})
        tolerance, source = check.tolerance, "inline values"
    else:
        reference = ctx.reference_frame()
        ref_spec = ctx.suite.references[ctx.reference]
        tolerance, source = ref_spec.tolerance or check.tolerance, f"reference {ctx.reference!r}"
        key_columns = ["year"] if check.grain == "year" else ["year", "month"]
        grouped = reference.groupby(key_columns, as_index=False).sum(numeric_only=True)
        for record in grouped.to_dict("records"):
            expected_by_key[tuple(int(record[k]) for k in key_columns)] = record
    observed: dict[str, dict[tuple, Any]] = {}
    for m in check.measures:
        alias = "n" if m.measure == "count" else aliases[m.reference_column]
        observed[m.reference_column] = _roll_up(ctx, scan, rows, check.grain, alias)
    if check.grain == "month" and scan.table == ctx.spec.table:
        for m in check.measures:
            if m.measure == "count":
                for key, record in expected_by_key.items():
                    ctx._month_expected[key] = int(record[m.reference_column])
    failing = []
    compared = 0
    for key in sorted(set(expected_by_key) | set(observed[check.measures[0].reference_column])):
        record = expected_by_key.get(key)
        for m in check.measures:
            got = observed[m.reference_column].get(key, 0 if m.measure == "count" else Decimal(0))
            if record is None:
                if got:
                    failing.append(
                        {
                            "partition": label(key),
                            "measure": m.title,
                            "observed": _fmt(got),
                            "expected": "no reference value",
                            "difference": "",
                        }
                    )
                continue
            want = _as_number(record[m.reference_column], got)
            compared += 1
            if not tolerance.allows(float(got), float(want)):
                failing.append(
                    {
                        "partition": label(key),
                        "measure": m.title,
                        "observed": _fmt(got),
                        "expected": _fmt(want),
                        "difference": _signed(got - want),
                    }
                )
    shown = "; ".join(
        f"{f['partition']} {f['measure']}: {f['observed']}, expected {f['expected']} (off by {f['difference']})"
        if f["difference"]
        else f"{f['partition']} {f['measure']}: {f['observed']} with no reference value"
        for f in failing[:10]
    )
    return CheckResult(
        **base,
        status=outcome(check, bool(failing)),
        observed=f"{compared - len(failing)} of {compared} totals match",
        expected=f"{source}, tolerance abs {tolerance.abs:g} rel {tolerance.rel:g}",
        failing=failing[:SAMPLE_ROWS],
        failing_count=len(failing),
        message=shown + (" ..." if len(failing) > 10 else ""),
    )


def _as_number(value: Any, like: Any) -> Any:
    if isinstance(like, Decimal):
        return Decimal(str(value))
    return int(value) if float(value).is_integer() else float(value)


def _sample(ctx: Context, check, violation: sql.Composable) -> list[dict[str, Any]]:
    table = ctx.table_of(check)
    column = ctx.partition_column(check)
    if table == ctx.spec.table and ctx.suite.sample_columns:
        wanted = list(dict.fromkeys([*ctx.suite.sample_columns, *_columns_of(check)]))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in wanted)
    else:
        cols = sql.SQL("*")
    query = sql.SQL("SELECT {} FROM {} WHERE {} AND {} AND ({}) LIMIT {}").format(
        cols, table_ident(table), ctx.window_filter(table, column), _where(check), violation, sql.Literal(SAMPLE_ROWS)
    )
    return dicts(ctx.conn, query)


def _columns_of(check) -> list[str]:
    if isinstance(check, s.NotNull):
        return list(check.columns)
    column = getattr(check, "column", None)
    return [column] if column else []


# --- checks with a scan of their own ---------------------------------------------------------


def run_unique(ctx: Context, check: s.Unique) -> CheckResult:
    table = ctx.table_of(check)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in check.columns)
    # GROUP BY puts NULLs together: two rows with NULL in the same key column are duplicates
    query = sql.SQL(
        "SELECT {cols}, count(*) AS rows, count(*) OVER () AS duplicate_keys FROM {t} WHERE {w} AND {f} "
        "GROUP BY {cols} HAVING count(*) > 1 ORDER BY count(*) DESC, {cols} LIMIT {n}"
    ).format(
        cols=cols,
        t=table_ident(table),
        w=ctx.window_filter(table, ctx.partition_column(check)),
        f=_where(check),
        n=sql.Literal(SAMPLE_ROWS),
    )
    rows = dicts(ctx.conn, query)
    groups = rows[0]["duplicate_keys"] if rows else 0
    for r in rows:
        r.pop("duplicate_keys")
    key = ", ".join(check.columns)
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, groups > 0),
        f"{groups:,} duplicated keys",
        f"({key}) unique",
        failing=rows,
        failing_count=groups,
        message=f"{groups:,} values of ({key}) appear more than once" if groups else "",
    )


def run_referential(ctx: Context, check: s.Referential) -> CheckResult:
    table = ctx.table_of(check)
    pairs = list(zip(check.columns, check.parent_columns, strict=True))
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc)) for cc, pc in pairs
    )
    present = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc, _ in pairs)
    orphan = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})").format(
        present, table_ident(check.parent), match
    )
    window = ctx.window_filter(table, ctx.partition_column(check))
    count = ctx.conn.execute(
        sql.SQL("SELECT count(*) FROM {} c WHERE {} AND {} AND {}").format(
            table_ident(table), window, _where(check), orphan
        )
    ).fetchone()[0]
    sample: list[dict[str, Any]] = []
    if count:
        sample = dicts(
            ctx.conn,
            sql.SQL("SELECT c.* FROM {} c WHERE {} AND {} AND {} LIMIT {}").format(
                table_ident(table), window, _where(check), orphan, sql.Literal(SAMPLE_ROWS)
            ),
        )
    keys = ", ".join(check.columns)
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, count > 0),
        f"{count:,} orphan rows",
        f"({keys}) present in {check.parent}",
        failing=sample,
        failing_count=count,
        message=f"{count:,} rows whose ({keys}) is not in {check.parent}" if count else "",
    )
