"""Retention: plan, then apply, the removal of data older than a policy keeps.

A plan counts, per rule of the policy (:mod:`.policy`), the rows and bytes that would go and
the rows kept, with the predicate the delete uses, in one read-only snapshot. For
``drop_partitions`` a partition goes when its upper bound, read from the catalog
(``pg_get_expr(relpartbound)``), is on or before the cutoff; one that straddles the cutoff is
kept whole. Rules keep whole days (midnight UTC of ``as_of - keep_days``), so a plan and its
apply on the same day agree, whatever the hour.

Apply refuses a plan larger than ``max_rows`` before anything is touched; otherwise it takes
an advisory lock per table (and the load lock of every ledger-tracked partition it drops),
applies each rule in one transaction, removes the ledger entries of the partitions it dropped
(so a later load of that partition loads it again instead of skipping it as unchanged), and
runs VACUUM ANALYZE on every table it deleted rows from (ANALYZE on a table that lost
partitions).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from opsbook.history import locks
from opsbook.ops.policy import Policy, Rule

# the column types rows can be aged by, and the cast that reads a partition bound as that type
AGE_TYPES = {
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}
_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \((?P<lower>.*)\) TO \((?P<upper>.*)\)$", re.S)


def table_lock(table: str) -> str:
    """The advisory lock a retention run holds on ``table`` while it removes from it."""
    return locks.key("retention", table)


# --- plan ------------------------------------------------------------------------------------


@dataclass
class Partition:
    schema: str
    name: str
    oid: int
    bound: str  # as the catalog prints it
    rows: int
    bytes: int
    drop: bool
    ledger: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset, partition, step)


@dataclass
class RulePlan:
    rule: Rule
    cutoff: dt.date | dt.datetime | None  # None: the rule removes what is unused, whatever its age
    status: str  # to remove | nothing to remove | absent | error
    schema: str = ""
    oid: int | None = None
    column: str | None = None  # rows are aged by it (the partition key for drop_partitions)
    column_type: str | None = None
    rows: int = 0  # in the table now
    remove_rows: int = 0
    remove_bytes: int = 0  # exact for partitions; rows x average row size for deletes
    table_bytes: int = 0
    partitions: list[Partition] = field(default_factory=list)
    years: list[int] = field(default_factory=list)  # delete_orphans: the parent's years, kept
    note: str = ""

    @property
    def table(self) -> str:
        return self.rule.table

    @property
    def kept_rows(self) -> int:
        return self.rows - self.remove_rows

    @property
    def dropping(self) -> list[Partition]:
        return [p for p in self.partitions if p.drop]


def plan(policy: Policy, as_of: dt.date) -> list[RulePlan]:
    """What ``policy`` would remove as of ``as_of``, counted in one read-only snapshot."""
    from opsbook.stores import postgres

    with postgres.connection(purpose="retention plan") as conn:
        conn.read_only = True  # a plan cannot write, whatever it runs
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # every count from one snapshot
        try:
            return [plan_rule(conn, rule, as_of) for rule in policy.rules]
        finally:
            conn.rollback()


def cutoff_of(as_of: dt.date, keep_days: int, type_name: str | None = None) -> dt.date | dt.datetime:
    """Midnight (UTC for timestamptz) of ``as_of - keep_days``, as a value of the column's type."""
    day = as_of - dt.timedelta(days=keep_days)
    if type_name == "date":
        return day
    midnight = dt.datetime.combine(day, dt.time())
    return midnight.replace(tzinfo=dt.UTC) if type_name == "timestamp with time zone" else midnight


def plan_rule(conn: psycopg.Connection, rule: Rule, as_of: dt.date) -> RulePlan:
    found = conn.execute(
        "SELECT c.oid::bigint, n.nspname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(quote_ident(%s))",
        (rule.table,),
    ).fetchone()
    day = cutoff_of(as_of, rule.keep_days, "date") if rule.keep_days else None
    if found is None:
        return RulePlan(rule, day, "absent", note=f"no table {rule.table}: nothing to remove")
    oid, schema, kind = found
    if kind not in ("r", "p"):
        return RulePlan(rule, day, "error", schema, oid, note=f"{rule.table} is not a table (relkind {kind!r})")
    if rule.action == "drop_partitions":
        return _plan_partitions(conn, rule, as_of, schema, oid)
    if rule.action in ("drop_staging", "delete_orphans"):
        from opsbook.ops import purge

        planned = RulePlan(rule, None, "error", schema, oid)
        (purge.plan_staging if rule.action == "drop_staging" else purge.plan_orphans)(conn, planned)
        return planned
    return _plan_rows(conn, rule, as_of, schema, oid)


def older_than(column: str) -> sql.Composed:
    """The predicate of a delete_rows rule, shared by the plan's count and the DELETE."""
    return sql.SQL("{} < %s").format(sql.Identifier(column))


def _plan_rows(conn, rule: Rule, as_of: dt.date, schema: str, oid: int) -> RulePlan:
    type_row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s AND attname = %s "
        "AND attnum > 0 AND NOT attisdropped",
        (oid, rule.column),
    ).fetchone()
    planned = RulePlan(rule, cutoff_of(as_of, rule.keep_days, "date"), "error", schema, oid, rule.column)
    if type_row is None:
        planned.note = f"{rule.table} has no column {rule.column!r}"
        return planned
    planned.column_type = type_row[0]
    if planned.column_type not in AGE_TYPES:
        planned.note = f"{rule.table}.{rule.column} is {planned.column_type}, not a date or timestamp"
        return planned
    planned.cutoff = cutoff_of(as_of, rule.keep_days, planned.column_type)
    planned.rows, planned.remove_rows = conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(
            older_than(rule.column), sql.Identifier(schema, rule.table)
        ),
        (planned.cutoff,),
    ).fetchone()
    planned.table_bytes = table_bytes(conn, oid)
    # the space the rows hold, at the table's average row size (indexes and TOAST included)
    planned.remove_bytes = round(planned.table_bytes * planned.remove_rows / planned.rows) if planned.rows else 0
    planned.status = "to remove" if planned.remove_rows else "nothing to remove"
    planned.note = rule.why
    return planned


def _plan_partitions(conn, rule: Rule, as_of: dt.date, schema: str, oid: int) -> RulePlan:
    from opsbook.history import ledger
    from opsbook.history import schema as history

    planned = RulePlan(rule, cutoff_of(as_of, rule.keep_days, "date"), "error", schema, oid)
    key = conn.execute(
        "SELECT p.partstrat, p.partnatts, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_partitioned_table p "
        "LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = %s",
        (oid,),
    ).fetchone()
    if key is None:
        planned.note = f"{rule.table} is not partitioned: use action delete_rows with a column"
        return planned
    strategy, columns, column, type_name = key
    if strategy != "r" or columns != 1 or column is None or type_name not in AGE_TYPES:
        partition_key = conn.execute("SELECT pg_get_partkeydef(%s::oid)", (oid,)).fetchone()[0]
        planned.note = (
            f"{rule.table} is partitioned by {partition_key}: only range partitions on one date or "
            "timestamp column can be aged"
        )
        return planned
    planned.column, planned.column_type = column, type_name
    planned.cutoff = cutoff_of(as_of, rule.keep_days, type_name)
    children = conn.execute(
        "SELECT c.oid::bigint, n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = %s ORDER BY c.relname",
        (oid,),
    ).fetchall()
    has_ledger = history.version(conn) > 0  # a plan creates nothing: no opsbook schema, no ledger
    for child_oid, child_schema, name, bound in children:
        upper = _upper_bound(conn, bound, type_name)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(child_schema, name))).fetchone()[0]
        part = Partition(child_schema, name, child_oid, bound, rows, table_bytes(conn, child_oid), False)
        part.drop = upper is not None and upper <= planned.cutoff
        if has_ledger:
            part.ledger = ledger.entries_of_table(conn, child_oid)
        planned.partitions.append(part)
        planned.rows += rows
    planned.table_bytes = table_bytes(conn, oid)
    planned.remove_rows = sum(p.rows for p in planned.dropping)
    planned.remove_bytes = sum(p.bytes for p in planned.dropping)
    planned.status = "to remove" if planned.dropping else "nothing to remove"
    planned.note = rule.why
    return planned


def _upper_bound(conn, bound: str, type_name: str) -> Any:
    """A range partition's exclusive upper bound as a value of the key's type; None for the
    DEFAULT partition and for MAXVALUE (neither is ever all old)."""
    match = _RANGE_BOUND.match(bound or "")
    if not match:
        return None
    upper = match.group("upper").strip()
    if upper in ("MINVALUE", "MAXVALUE"):
        return None
    if upper.startswith("'") and upper.endswith("'"):
        upper = upper[1:-1].replace("''", "'")
    # the server reads its own literal back in the key's type (the cast comes from AGE_TYPES)
    query = sql.SQL("SELECT CAST(%s::text AS {})").format(sql.SQL(AGE_TYPES[type_name]))
    return conn.execute(query, (upper,)).fetchone()[0]


def table_bytes(conn, oid: int) -> int:
    """Bytes on disk of a table with its indexes and TOAST, all partitions included."""
    # pg_partition_tree lists nothing for a table that is neither partitioned nor a partition
    return conn.execute(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::oid::regclass)), "
        "pg_total_relation_size(%s::oid))::bigint",
        (oid, oid),
    ).fetchone()[0]


def refusal(rules: list[RulePlan], max_rows: int) -> str | None:
    """Why a plan may not be applied, or None."""
    if any(r.status == "error" for r in rules):
        return "the policy does not fit the database (see the plan); nothing changed"
    total = sum(r.remove_rows for r in rules)
    if total > max_rows:
        return (
            f"the plan removes {total:,} rows, more than max_rows={max_rows:,}; nothing changed. "
            f"Review the plan, then raise the limit to apply it: -p max_rows={total}"
        )
    return None


# --- apply -----------------------------------------------------------------------------------


@dataclass
class Applied:
    table: str
    action: str
    status: str  # removed | nothing to remove | absent | refused | not run
    planned_rows: int = 0
    removed_rows: int = 0
    planned_partitions: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    bytes_before: int | None = None
    bytes_after: int | None = None
    maintenance: str = ""  # VACUUM ANALYZE | ANALYZE
    ledger_removed: list[tuple[str, str, str]] = field(default_factory=list)
    note: str = ""

    @property
    def as_planned(self) -> bool:
        return self.removed_rows == self.planned_rows and len(self.dropped) == len(self.planned_partitions)


@dataclass
class Outcome:
    applied: list[Applied] = field(default_factory=list)
    refused: str | None = None  # why the plan, or a rule, was not applied
    seconds: float = 0.0


class _OverLimit(Exception):
    """Raised inside a rule's transaction to roll it back: the rows removed passed max_rows."""


def apply(
    rules: list[RulePlan],
    run_id: str,
    max_rows: int,
    vacuum: bool,
    progress: Callable[..., None] = lambda *a, **k: None,
) -> Outcome:
    """Carry out a plan.

    Everything refusable is checked before the first lock or change: rules that do not fit
    the database, a plan larger than ``max_rows``, a lock another run holds (LockHeld, exit 4).
    Each rule then runs in one transaction; a rule whose rows grew past ``max_rows`` since the
    plan is rolled back and the rest are not run.
    """
    from opsbook.history import schema
    from opsbook.stores import postgres

    started = time.monotonic()
    outcome = Outcome(refused=refusal(rules, max_rows))
    if outcome.refused:
        return outcome
    work = [r for r in rules if r.status == "to remove"]
    keys = [table_lock(r.table) for r in work]
    keys += [
        locks.partition_lock(step, ds, part)
        for r in work
        if r.rule.action == "drop_partitions"
        for p in r.dropping
        for ds, part, step in p.ledger
    ]
    with postgres.connection(autocommit=True, purpose=f"retention {run_id}") as conn:
        schema.ensure_schema(conn)
        taken: list[str] = []
        try:
            for key in keys:
                locks.try_lock(conn, key, f"run {run_id}")  # LockHeld (exit 4) before any change
                taken.append(key)
            _apply_rules(conn, rules, max_rows, vacuum, outcome, progress)
        finally:
            for key in reversed(taken):
                locks.unlock(conn, key)
    outcome.seconds = time.monotonic() - started
    return outcome


def _apply_rules(conn, rules: list[RulePlan], max_rows: int, vacuum: bool, outcome: Outcome, progress) -> None:
    from opsbook.errors import LockHeld
    from opsbook.stores import postgres

    removed_total = 0
    stopped = False
    for planned in rules:
        done = _applied_shell(planned)
        outcome.applied.append(done)
        if planned.status != "to remove":
            continue
        if stopped:
            done.status, done.note = "not run", "an earlier rule passed max_rows"
            continue
        done.bytes_before = table_bytes(conn, planned.oid)
        try:
            with (
                postgres.lock_wait(conn, f"{planned.schema}.{planned.table}", f"retention of {done.table}"),
                conn.transaction(),
            ):
                _ACTIONS[planned.rule.action](conn, planned, done)
                if removed_total + done.removed_rows > max_rows:
                    raise _OverLimit
        except LockHeld as exc:
            finished = [a.table for a in outcome.applied if a.status == "removed"]
            if finished:
                exc.args = (f"{exc.args[0]} (already applied, committed: {', '.join(finished)})",)
            raise
        except _OverLimit:
            done.note = (
                f"rolled back: {done.removed_rows:,} rows here would bring the run to "
                f"{removed_total + done.removed_rows:,}, past max_rows={max_rows:,} (rows arrived since the plan)"
            )
            done.status, done.removed_rows, done.dropped, done.ledger_removed = "refused", 0, [], []
            outcome.refused = f"{done.table}: {done.note}; the rules after it were not run"
            stopped = True
            continue
        removed_total += done.removed_rows
        done.status = "removed"
        if vacuum:
            done.maintenance = _maintain(conn, planned)
        done.bytes_after = table_bytes(conn, planned.oid)
        progress(f"{done.table}: removed {done.removed_rows:,} rows" + (f", {done.maintenance}" if vacuum else ""))


def _applied_shell(planned: RulePlan) -> Applied:
    status = planned.status if planned.status in ("absent", "nothing to remove") else "not run"
    return Applied(
        planned.table,
        planned.rule.action,
        status,
        planned_rows=planned.remove_rows,
        planned_partitions=[p.name for p in planned.dropping],
    )


def _delete_rows(conn, planned: RulePlan, done: Applied) -> None:
    deleted = conn.execute(
        sql.SQL("DELETE FROM {} WHERE {}").format(
            sql.Identifier(planned.schema, planned.table), older_than(planned.column)
        ),
        (planned.cutoff,),
    )
    done.removed_rows = deleted.rowcount


def _drop_partitions(conn, planned: RulePlan, done: Applied) -> None:
    """DETACH and DROP the plan's partitions (the ones still attached), and remove the ledger
    entries that describe them: a later load of the partition then loads it again."""
    from opsbook.history import ledger

    parent = sql.Identifier(planned.schema, planned.table)
    for part in planned.dropping:
        attached = conn.execute(
            "SELECT 1 FROM pg_inherits WHERE inhrelid = %s AND inhparent = %s", (part.oid, planned.oid)
        ).fetchone()
        if not attached:
            done.note = f"{part.name} was gone before apply; "
            continue
        child = sql.Identifier(part.schema, part.name)
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child))
        done.removed_rows += conn.execute(sql.SQL("SELECT count(*) FROM {}").format(child)).fetchone()[0]
        conn.execute(sql.SQL("DROP TABLE {}").format(child))
        done.dropped.append(part.name)
        done.ledger_removed += ledger.forget_table(conn, part.oid)


def _purge(name: str):
    def act(conn, planned: RulePlan, done: Applied) -> None:
        from opsbook.ops import purge

        getattr(purge, name)(conn, planned, done)

    return act


_ACTIONS = {
    "drop_partitions": _drop_partitions,
    "delete_rows": _delete_rows,
    "drop_staging": _purge("drop_staging"),
    "delete_orphans": _purge("delete_orphans"),
}


def _maintain(conn, planned: RulePlan) -> str:
    """VACUUM ANALYZE after a delete (outside any transaction: VACUUM cannot run in one); after
    dropped partitions only ANALYZE the parent, whose statistics autovacuum never refreshes."""
    table = sql.Identifier(planned.schema, planned.table)
    if planned.rule.action == "drop_staging":
        return ""  # the tables are gone; the parent's statistics never counted them
    if planned.rule.action == "drop_partitions":
        conn.execute(sql.SQL("ANALYZE {}").format(table))
        return "ANALYZE"
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
    return "VACUUM ANALYZE"
