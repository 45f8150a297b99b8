"""The shared aggregate scan, and what the checks judging it have in common.

Checks on the same table, filter and partition column share one scan: a GROUP BY on the
partition date (or year) column with one aggregate per check (each type says which through its
``aggregates`` function), rolled up to days, months and years here. When a shared scan fails
(one check's SQL is wrong), each of its checks runs alone, so only the broken one ends in error.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, check_type, error_result
from opsbook.checks.context import DATE_TYPES, Context, table_ident, where_of
from opsbook.stores.postgres import dicts


@dataclass
class Scan:
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


def run_shared(ctx: Context, checks: list) -> list[CheckResult]:
    """Run the shared-scan checks: one scan per (table, filter, partition column)."""
    results = _run_grouped(ctx, checks, shared=True)
    order = {c.name: i for i, c in enumerate(checks)}
    return sorted(results, key=lambda r: order[r.name])


def _run_grouped(ctx: Context, checks: list, shared: bool) -> list[CheckResult]:
    scans: dict[Any, Scan] = {}
    wanted: list[tuple[Any, Scan, dict[str, str]]] = []
    results: list[CheckResult] = []
    for check in checks:
        try:
            table = ctx.table_of(check)
            column = ctx.partition_column(check)
            key = (table, check.where, column) if shared else check.name
            scan = scans.setdefault(key, Scan(table, check.where, column))
            kind = check_type(check.type)
            wanted.append((check, scan, kind.aggregates(ctx, check, scan) if kind.aggregates else {}))
        except Exception as exc:
            results.append(error_result(check, exc))
    data: dict[int, list[dict[str, Any]] | Exception] = {}
    for scan in scans.values():
        try:
            with ctx.isolated():
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
            with ctx.isolated():  # evaluating may fetch failing rows
                results.append(check_type(check.type).evaluate(ctx, check, scan, rows, aliases))
        except Exception as exc:
            results.append(error_result(check, exc))
        if scan.table == ctx.table and ctx.month_rows is None and scan.column and not ctx.days:
            ctx.month_rows = roll_up(scan, rows, "month", "n")
    if retry:
        results.extend(_run_grouped(ctx, retry, shared=False))
    return results


def _run_scan(ctx: Context, scan: Scan) -> list[dict[str, Any]]:
    types = ctx.column_types(scan.table)
    if scan.column and scan.column not in types:
        raise LookupError(f"{scan.table} has no column {scan.column}")
    group = date_of(types[scan.column], scan.column) if scan.column else sql.SQL("NULL")
    select = [sql.SQL("{} AS g").format(group), sql.SQL("count(*) AS n"), *scan.expressions]
    query = sql.SQL("SELECT {} FROM {} WHERE {} AND {} GROUP BY 1").format(
        sql.SQL(", ").join(select),
        table_ident(scan.table),
        ctx.window_filter(scan.table, scan.column),
        sql.SQL("({})").format(sql.SQL(scan.where)) if scan.where else sql.SQL("TRUE"),
    )
    return dicts(ctx.conn, query)


def date_of(kind: str, column: str) -> sql.Composable:
    """The UTC date of a date or timestamp column (a year column as it is)."""
    if kind == "timestamp with time zone":
        return sql.SQL("({} AT TIME ZONE 'UTC')::date").format(sql.Identifier(column))
    if kind in DATE_TYPES:
        return sql.SQL("{}::date").format(sql.Identifier(column))
    return sql.Identifier(column)


# --- partitions --------------------------------------------------------------------------------


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


def roll_up(scan: Scan, rows: list[dict], grain: str, alias: str) -> dict[tuple, Any]:
    """The sum of ``alias`` per year, month or day of the scanned rows."""
    totals: dict[tuple, Any] = defaultdict(int)
    for row in rows:
        value = row[alias]
        if value is None:
            continue
        totals[_key(row["g"], grain)] += value
    return dict(totals)


def expected_partitions(ctx: Context, grain: str) -> list[tuple]:
    """Every partition of the window up to today (a month still to come is not missing)."""
    today = dt.date.today()
    if ctx.days:
        wanted = [d for d in ctx.days.days if d <= today]
        keys = {
            "year": (lambda d: (d.year,)),
            "month": (lambda d: (d.year, d.month)),
            "day": (lambda d: (d.year, d.month, d.day)),
        }
        return list(dict.fromkeys(keys[grain](d) for d in wanted))
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


# --- words -------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Decimal | float):
        return f"{value:,.2f}"
    return str(value)


def signed(value: Any) -> str:
    return ("+" if value > 0 else "") + fmt(value)


def within(value, low, high) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def bounds(low, high, per: str | None = None) -> str:
    text = (
        f"between {fmt(low)} and {fmt(high)}"
        if low is not None and high is not None
        else (f">= {fmt(low)}" if low is not None else f"<= {fmt(high)}" if high is not None else "any")
    )
    return text + (f" per {per}" if per else "")


def list_message(bad: list[dict], key: str, what: str) -> str:
    if not bad:
        return ""
    shown = ", ".join(f"{b[key]} ({fmt(b['rows'])})" for b in bad[:10])
    return f"{len(bad)} {what}: {shown}" + (" ..." if len(bad) > 10 else "")


# --- failing rows ------------------------------------------------------------------------------


def sample(ctx: Context, check, violation: sql.Composable) -> list[dict[str, Any]]:
    """Up to SAMPLE_ROWS rows of the window that fail ``violation``."""
    table = ctx.table_of(check)
    column = ctx.partition_column(check)
    if table == ctx.table and ctx.suite.sample_columns:
        wanted = list(dict.fromkeys([*ctx.suite.sample_columns, *_columns_of(check)]))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in wanted)
    else:
        cols = sql.SQL("*")
    query = sql.SQL("SELECT {} FROM {} WHERE {} AND {} AND ({}) LIMIT {}").format(
        cols, table_ident(table), ctx.window_filter(table, column), where_of(check), violation, sql.Literal(SAMPLE_ROWS)
    )
    return dicts(ctx.conn, query)


def _columns_of(check) -> list[str]:
    columns = getattr(check, "columns", None)
    if columns:
        return list(columns)
    column = getattr(check, "column", None)
    return [column] if column else []
