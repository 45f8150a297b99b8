"""``rows_per_group``: the expected number of rows for every group in every partition of the window.

E.g. 24 hourly observations per location and day. The cells are every group seen in the
window crossed with every partition of the window (up to today), so a group silent for a
whole day is a cell with 0 rows, not a cell missing; the cells with another count are off,
and they are the check's failing rows. A share of off cells may be tolerated (a WARN).
"""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.context import DATE_TYPES, Context, table_ident, where_of
from opsbook.checks.scan import date_of, expected_partitions
from opsbook.stores.postgres import dicts

_PART = sql.Identifier("opsbook_partition")


def _grid(ctx: Context, check: s.RowsPerGroup, table: str, column: str) -> sql.Composable:
    """One row per cell: the group's columns, the partition (named ``per``) and its ``rows``."""
    kind = ctx.column_types(table).get(column)
    if kind not in DATE_TYPES:
        raise TypeError(f"{table}.{column} is {kind}: rows per {check.per} need a date or timestamp column")
    bucket = date_of(kind, column)
    if check.per != "day":
        bucket = sql.SQL("date_trunc({}, {})::date").format(sql.Literal(check.per), bucket)
    partitions = [dt.date(*key, *(1,) * (3 - len(key))) for key in expected_partitions(ctx, check.per)]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in check.group_by)
    return sql.SQL(
        "WITH w AS (SELECT {cols}, {bucket} AS {part} FROM {t} WHERE {window} AND {where}), "
        "groups AS (SELECT DISTINCT {cols} FROM w), "
        "partitions AS (SELECT unnest({partitions}::date[]) AS {part} UNION SELECT {part} FROM w), "
        "counts AS (SELECT {cols}, {part}, count(*) AS n FROM w GROUP BY {cols}, {part}) "
        "SELECT {g_cols}, p.{part} AS {per}, coalesce(c.n, 0) AS rows "
        "FROM groups g CROSS JOIN partitions p LEFT JOIN counts c ON {same} AND c.{part} = p.{part}"
    ).format(
        cols=cols,
        bucket=bucket,
        part=_PART,
        t=table_ident(table),
        window=ctx.window_filter(table, column),
        where=where_of(check),
        partitions=sql.Literal([d.isoformat() for d in partitions]),
        g_cols=sql.SQL(", ").join(sql.SQL("g.{}").format(sql.Identifier(c)) for c in check.group_by),
        per=sql.Identifier(check.per),
        same=sql.SQL(" AND ").join(
            sql.SQL("c.{c} IS NOT DISTINCT FROM g.{c}").format(c=sql.Identifier(c)) for c in check.group_by
        ),
    )


def run_rows_per_group(ctx: Context, check: s.RowsPerGroup) -> CheckResult:
    table = ctx.table_of(check)
    column = ctx.partition_column(check)
    if not column:
        raise LookupError(f"no date column to count rows per {check.per} by: give the check a column")
    grid = _grid(ctx, check, table, column)
    off_cell = sql.SQL("rows <> {}").format(sql.Literal(check.expected))
    cells, off = ctx.conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM ({}) x").format(off_cell, grid)
    ).fetchone()
    failing = []
    if off:
        order = sql.SQL(", ").join(sql.Identifier(c) for c in [*check.group_by, check.per])
        failing = dicts(
            ctx.conn,
            sql.SQL("SELECT * FROM ({}) x WHERE {} ORDER BY {} LIMIT {}").format(
                grid, off_cell, order, sql.Literal(SAMPLE_ROWS)
            ),
        )
    share = off / cells if cells else 0.0
    if not off:
        status = "pass"
    elif share <= check.max_share_off:
        status = "warn"  # within the tolerated share
    else:
        status = outcome(check, True)
    group = ", ".join(check.group_by)
    cell = f"({group}, {check.per})"
    tolerated = f"; at most {check.max_share_off:.0%} of them off" if check.max_share_off else ""
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        status,
        f"{off:,} of {cells:,} {cell} cells off ({share:.1%})" if cells else "no group in the window",
        f"{check.expected:,} rows per {cell}{tolerated}",
        failing=failing,
        failing_count=off,
        message=(
            f"{off:,} of {cells:,} {cell} cells without {check.expected:,} rows ({share:.1%}; "
            f"{'within' if status == 'warn' else 'over'} the {check.max_share_off:.0%} tolerated)"
            if off
            else ""
        ),
    )


register("rows_per_group", run=run_rows_per_group)
