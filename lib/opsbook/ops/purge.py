"""Retention rules that remove what is no longer used, whatever its age (see :mod:`.policy`).

- ``drop_staging``: a load copies a partition into ``<table>_<partition>_load`` and swaps it in;
  a load killed before the swap leaves that table behind. It is dropped only under the load's
  own partition lock, so a load running now keeps its table.
- ``delete_orphans``: rows of a derived table (a yearly aggregate) whose year has no partition
  in the parent table any more.
"""

from __future__ import annotations

import re

from psycopg import sql

from opsbook.history import locks


def plan_staging(conn, planned) -> None:
    """Fill ``planned`` (a RulePlan) with the leftover staging tables of its table."""
    from opsbook.ops.retention import Partition, table_bytes

    pattern = f"^{re.escape(planned.rule.table)}_(.+)_load$"
    rows = conn.execute(
        "SELECT c.oid::bigint, n.nspname, c.relname, substring(c.relname FROM %s) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relname ~ %s "
        "AND NOT c.relispartition ORDER BY c.relname",
        (pattern, pattern),
    ).fetchall()
    for oid, schema, name, partition in rows:
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]
        part = Partition(schema, name, oid, f"staging of {partition}", count, table_bytes(conn, oid), True)
        part.ledger = [(planned.rule.dataset, partition, "load")]
        planned.partitions.append(part)
    planned.remove_rows = sum(p.rows for p in planned.partitions)
    planned.remove_bytes = sum(p.bytes for p in planned.partitions)
    planned.status = "to remove" if planned.partitions else "nothing to remove"
    planned.note = planned.rule.why


def drop_staging(conn, planned, done) -> None:
    """Drop each leftover staging table whose load lock is free (in the caller's transaction)."""
    busy = []
    for part in planned.partitions:
        dataset, partition, step = part.ledger[0]
        key = locks.partition_lock(step, dataset, partition)
        if not locks.lock_is_free(conn, key):
            busy.append(f"{part.name} (a load of {partition} runs)")
            continue
        exists = conn.execute("SELECT to_regclass(%s)", (f"{part.schema}.{part.name}",)).fetchone()[0]
        if exists is None:
            continue
        table = sql.Identifier(part.schema, part.name)
        done.removed_rows += conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
        done.dropped.append(part.name)
    if busy:
        done.note = "kept, in use: " + ", ".join(busy)


def parent_years(conn, parent: str) -> list[int]:
    """The years the partitions of ``parent`` hold (from the catalog's partition bounds)."""
    bounds = conn.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(quote_ident(%s))",
        (parent,),
    ).fetchall()
    years = set()
    for (bound,) in bounds:
        match = re.search(r"FROM \('(\d{4})-", bound or "")
        if match:
            years.add(int(match.group(1)))
    return sorted(years)


def _orphan_filter(column: str) -> sql.Composed:
    return sql.SQL("{} <> ALL(%s)").format(sql.Identifier(column))


def plan_orphans(conn, planned) -> None:
    from opsbook.ops.retention import table_bytes

    rule = planned.rule
    planned.column = rule.column
    years = parent_years(conn, rule.parent)
    table = sql.Identifier(planned.schema, rule.table)
    planned.rows, planned.remove_rows = conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(_orphan_filter(rule.column), table),
        (years,),
    ).fetchone()
    planned.table_bytes = table_bytes(conn, planned.oid)
    planned.remove_bytes = round(planned.table_bytes * planned.remove_rows / planned.rows) if planned.rows else 0
    planned.cutoff = None
    if not years:
        planned.remove_rows, planned.remove_bytes = 0, 0
        planned.status, planned.note = "nothing to remove", f"{rule.parent} holds no partition: nothing is removed"
        return
    planned.status = "to remove" if planned.remove_rows else "nothing to remove"
    planned.note = f"{rule.why} (years held by {rule.parent}: {years[0]}-{years[-1]})".strip()
    planned.years = years


def delete_orphans(conn, planned, done) -> None:
    done.removed_rows = conn.execute(
        sql.SQL("DELETE FROM {} WHERE {}").format(
            sql.Identifier(planned.schema, planned.table), _orphan_filter(planned.column)
        ),
        (planned.years,),
    ).rowcount
