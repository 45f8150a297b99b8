"""Repair a reconcile's differences: re-apply the source of truth to the differing keys only.

The repair is planned from a comparison (:func:`plan`), shown, then applied (:func:`apply`):

- the lake is the truth: the lake's rows of the keys missing in PostgreSQL, drifted, shifted or
  duplicated (the last written file's row of a duplicated key) are upserted into PostgreSQL, and
  the keys PostgreSQL holds alone (missing in the lake, or where a shifted row landed) deleted;
- PostgreSQL is the truth: each day with a difference has its lake file rewritten from
  PostgreSQL (replaced whole), the other days are not touched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa
from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.stores import uri
from opsbook.trafficsafety import layout
from opsbook.trafficsafety.compare import Comparison
from opsbook.trafficsafety.sides import lake_files, read_lake, read_postgres
from opsbook.windows import Days

TRUTHS = ("lake", "postgres")
UPSERTED = ("missing in postgres", "value drift", "timestamp shifted", "duplicate key")


@dataclass
class RepairPlan:
    """What a repair from ``source_of_truth`` changes, and nothing else."""

    source_of_truth: str
    window: Days
    differences: int  # the comparison's differences the plan answers
    upsert: set[tuple] = field(default_factory=set)  # keys whose lake row goes to PostgreSQL
    delete: set[tuple] = field(default_factory=set)  # keys deleted from PostgreSQL
    days: list[dt.date] = field(default_factory=list)  # lake days rewritten from PostgreSQL

    @property
    def empty(self) -> bool:
        return not (self.upsert or self.delete or self.days)

    def actions(self) -> list[dict]:
        """One row per change the plan makes: what, where, how many keys or days."""
        rows = []
        if self.upsert:
            rows.append({"action": "upsert the lake's rows", "into": "postgres", "keys or days": len(self.upsert)})
        if self.delete:
            rows.append({"action": "delete keys the lake lacks", "into": "postgres", "keys or days": len(self.delete)})
        if self.days:
            shown = ", ".join(d.isoformat() for d in self.days[:10]) + (" ..." if len(self.days) > 10 else "")
            rows.append({"action": f"rewrite lake days ({shown})", "into": "lake", "keys or days": len(self.days)})
        return rows


def plan(comparison: Comparison, window: Days, source_of_truth: str) -> RepairPlan:
    """The changes that bring the other side to ``source_of_truth`` over the comparison's differences."""
    if source_of_truth not in TRUTHS:
        raise ValueError(f"source of truth {source_of_truth!r} is neither of {', '.join(TRUTHS)}")
    found = comparison.differences
    planned = RepairPlan(source_of_truth, window, len(found))
    if source_of_truth == "lake":
        planned.upsert = {d["key"] for d in found if d["class"] in UPSERTED}
        planned.delete = {d["key"] for d in found if d["class"] == "missing in lake"}
        planned.delete |= {d["shifted_to"] for d in found if d["class"] == "timestamp shifted"}
    else:
        planned.days = sorted({d["day"] for d in found})
    return planned


def apply(spec: DatasetSpec, planned: RepairPlan) -> dict[str, int]:
    """Make the planned changes; returns how many rows were upserted and deleted, days rewritten."""
    from opsbook.trafficsafety import dualwrite

    done = {"upserted": 0, "deleted": 0, "lake days rewritten": 0}
    if planned.upsert:
        lake = _dedupe_last(spec, read_lake(spec, lake_files(spec, planned.window)))
        rows = lake.filter(_key_mask(spec, lake, planned.upsert))
        if rows.num_rows:
            done["upserted"] = dualwrite.write_postgres(spec, rows.select(spec.column_names))
    if planned.delete:
        done["deleted"] = _delete_keys(spec, planned.delete)
    for day in planned.days:
        one = Days(day, day)
        table = read_postgres(spec, one)
        old = lake_files(spec, one)
        if not table.num_rows and old:
            # PostgreSQL holds nothing for a day the lake has: purged on purpose (retention), or
            # lost; either way an empty file must not replace the lake's copy
            done["lake days kept (no rows in PostgreSQL)"] = done.get("lake days kept (no rows in PostgreSQL)", 0) + 1
            continue
        uri.write_bytes(layout.lake_file(spec, day), layout.parquet_bytes(table))  # the day's file, replaced whole
        done["lake days rewritten"] += 1
    return done


def _dedupe_last(spec: DatasetSpec, table: pa.Table) -> pa.Table:
    """One row per key: the one from the file written last (names sort by time)."""
    import duckdb

    con = duckdb.connect()
    con.register("t", table)
    key = ", ".join(f'"{k}"' for k in spec.key)
    out = con.sql(
        f"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _file DESC) "
        f"AS _rn FROM t) WHERE _rn = 1"
    ).to_arrow_table()
    con.close()
    return out


def _key_mask(spec: DatasetSpec, table: pa.Table, keys: set[tuple]):
    columns = [table.column(k).to_pylist() for k in spec.key]
    return pa.array([tuple(values) in keys for values in zip(*columns, strict=True)])


def _delete_keys(spec: DatasetSpec, keys: set[tuple]) -> int:
    from opsbook.stores import postgres

    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key)
    deleted = 0
    with postgres.connection(purpose="reconcile repair") as conn, conn.transaction(), conn.cursor() as cur:
        for key in sorted(keys):
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(spec.table), where), key)
            deleted += cur.rowcount
    return deleted


@dataclass
class Repaired:
    """What a repair did: pending writes retried first, then the plan applied."""

    retried: int  # pending batches written again from their staged copies
    plan: RepairPlan  # the plan applied (made again on a fresh comparison when writes were retried)
    done: dict[str, int]
    replanned: bool = False


def run(spec: DatasetSpec, planned: RepairPlan, run_id: str, lock: str, row_limit: int) -> Repaired:
    """Retry the pending writes, then apply the repair, holding the dataset's write lock.

    A retried write changes a side after the comparison the plan came from: the plan would then
    delete (or overwrite) rows that write just put back. So when anything was retried, the
    sides are compared again and the repair planned anew from what then differs.

    Raises
    ------
    LockHeld
        A dual_write (or another repair) of the dataset is running.
    """
    from opsbook.history import locks
    from opsbook.stores import postgres
    from opsbook.trafficsafety import dualwrite
    from opsbook.trafficsafety.compare import compare

    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as control:
        dualwrite.ensure_tables(control, spec)
        locks.try_lock(control, lock, f"run {run_id}")
        retried = dualwrite.retry_pending(control, spec)
        replanned = bool(retried) and planned.differences > 0
        if replanned:
            planned = plan(compare(spec, planned.window, row_limit), planned.window, planned.source_of_truth)
        done = apply(spec, planned)
        locks.unlock(control, lock)
    return Repaired(len(retried), planned, done, replanned)
