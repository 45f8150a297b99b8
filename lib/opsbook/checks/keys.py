"""Checks of keys: ``unique`` (NULL-safe, composite keys) and ``referential`` (every child key in its parent)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.context import Context, table_ident, where_of
from opsbook.stores.postgres import dicts


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
        f=where_of(check),
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
            table_ident(table), window, where_of(check), orphan
        )
    ).fetchone()[0]
    sample: list[dict[str, Any]] = []
    if count:
        sample = dicts(
            ctx.conn,
            sql.SQL("SELECT c.* FROM {} c WHERE {} AND {} AND {} LIMIT {}").format(
                table_ident(table), window, where_of(check), orphan, sql.Literal(SAMPLE_ROWS)
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


register("unique", run=run_unique)
register("referential", run=run_referential)
