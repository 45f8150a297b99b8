"""Retention: plan, then apply, the removal of data older than a policy keeps.

A policy (``params/retention/<name>.yaml``) lists rules, each one of:

- ``drop_partitions``: for a range-partitioned table, DETACH and DROP every partition whose
  upper bound, read from the catalog (``pg_get_expr(relpartbound)``), is on or before the
  cutoff: all of its rows are older. A partition that straddles the cutoff is kept whole.
- ``delete_rows``: DELETE the rows whose date or timestamp ``column`` is before the cutoff.

A rule's cutoff is midnight UTC of ``as_of - keep_days``: rules keep whole days, so a plan and
its apply on the same day agree, whatever the hour. By default the procedure only plans: per
rule, the rows and bytes that would go and the rows kept, counted with the predicate the
delete uses, in a read-only transaction. With ``apply=true`` a plan larger than ``max_rows``
is refused before anything is touched; otherwise the run takes an advisory lock per table
(and the load lock of every ledger-tracked partition it drops), applies each rule in one
transaction, removes the ledger entries of the partitions it dropped (so a later load of that
year loads it again instead of skipping it as unchanged), and runs VACUUM ANALYZE on every
table it deleted rows from (ANALYZE on a table that lost partitions).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from psycopg import sql
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict

NOTEBOOK = "retention.ipynb"
SUMMARY = "Plan, then apply, a retention policy: drop old partitions, delete old rows, VACUUM ANALYZE"
POLICY_FOLDER = "policies"
# the column types rows can be aged by, and the cast that reads a partition bound as that type
AGE_TYPES = {
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
}
_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \((?P<lower>.*)\) TO \((?P<upper>.*)\)$", re.S)


# --- the policy ------------------------------------------------------------------------------


def _identifier(value: str) -> str:
    from opsbook.datasets import check_identifier

    return check_identifier(value, "name")


Identifier = Annotated[str, AfterValidator(_identifier)]


class Rule(BaseModel):
    """One rule of a policy: what goes from one table, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: Identifier
    action: Literal["delete_rows", "drop_partitions"]
    column: Identifier | None = None
    keep_days: int = Field(ge=1)
    why: str = ""

    @model_validator(mode="after")
    def _column_fits_action(self) -> Rule:
        if self.action == "delete_rows" and not self.column:
            raise ValueError("delete_rows needs a column: the date or timestamp the rows are aged by")
        if self.action == "drop_partitions" and self.column:
            raise ValueError("drop_partitions takes no column: the partition key and bounds come from the catalog")
        return self


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_rule_per_table(self) -> Policy:
        tables = [r.table for r in self.rules]
        twice = sorted({t for t in tables if tables.count(t) > 1})
        if twice:
            raise ValueError(f"one rule per table: {', '.join(twice)} has more than one")
        return self


def policy_path(name: str) -> Path:
    """``trafficsafety`` -> ``params/retention/trafficsafety.yaml``; a path is taken as it is
    (relative to the project root)."""
    from opsbook import config

    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(name)
        return path if path.is_absolute() else config.project_root() / path
    return config.params_dir() / POLICY_FOLDER / f"{name}.yaml"


def load_policy(name: str) -> tuple[Policy, Path]:
    """The policy ``name`` and its file; a problem raises UsageError naming file, line and field."""
    from opsbook import config
    from opsbook.errors import UsageError

    path = policy_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in (config.params_dir() / POLICY_FOLDER).glob("*.yaml"))
        raise UsageError(f"retention policy {name!r}: {path} does not exist (policies: {', '.join(known) or 'none'})")
    data = config.read_yaml(path, "retention policy")
    try:
        return Policy.model_validate(data), path
    except ValidationError as exc:
        text = path.read_text(encoding="utf-8")
        problems = "; ".join(
            f"{path}:{_yaml_line(text, e['loc'])}: {_field_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UsageError(f"invalid retention policy: {problems}") from None


def _field_path(loc: tuple) -> str:
    """``("rules", 1, "keep_days")`` -> ``rules[1].keep_days``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "policy"


def _yaml_line(text: str, loc: tuple) -> int:
    """The line of the YAML node at ``loc`` (or of the nearest parent that exists)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 1
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


# --- parameters ------------------------------------------------------------------------------


def _known_policy(name: str) -> str:
    from opsbook.errors import UsageError

    try:
        load_policy(name)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return name


def _date_as_text(value: Any) -> Any:
    # YAML reads `as_of: 2026-01-31` as a date
    return value.isoformat() if isinstance(value, dt.date) else value


def _valid_as_of(value: str) -> str:
    value = value.strip()
    if value:
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date: expected YYYY-MM-DD, or empty for today") from None
    return value


class Params(ProcedureParams):
    """Parameters of ``retention``."""

    policy: Annotated[str, AfterValidator(_known_policy)] = Field(
        "trafficsafety", description="a policy in params/retention/ (its name) or the path of a policy file"
    )
    as_of: Annotated[str, BeforeValidator(_date_as_text), AfterValidator(_valid_as_of)] = Field(
        "", description='the date the cutoffs count back from, YYYY-MM-DD ("": today, UTC)'
    )
    apply: bool = Field(False, description="remove what the plan shows (false: plan only, nothing changes)")
    max_rows: int = Field(1_000_000, ge=0, description="refuse to apply a plan that removes more rows than this")
    vacuum: bool = Field(True, description="VACUUM ANALYZE each table rows were deleted from (ANALYZE after drops)")

    def as_of_date(self) -> dt.date:
        return dt.date.fromisoformat(self.as_of) if self.as_of else dt.datetime.now(dt.UTC).date()


def table_lock(table: str) -> str:
    """The advisory lock a retention run holds on ``table`` while it removes from it."""
    return f"opsbook.retention:{table}"


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel: a plan takes none."""
    if not params.apply:
        return []
    policy, _ = load_policy(params.policy)
    return [table_lock(rule.table) for rule in policy.rules]


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
    cutoff: dt.date | dt.datetime
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


@dataclass
class Plan:
    params: Params
    policy: Policy
    path: Path
    as_of: dt.date
    rules: list[RulePlan]

    @property
    def remove_rows(self) -> int:
        return sum(r.remove_rows for r in self.rules)

    @property
    def remove_bytes(self) -> int:
        return sum(r.remove_bytes for r in self.rules)

    @property
    def remove_partitions(self) -> int:
        return sum(len(r.dropping) for r in self.rules)

    @property
    def errors(self) -> list[RulePlan]:
        return [r for r in self.rules if r.status == "error"]


def plan(params: Params) -> Plan:
    """What the policy would remove today, counted in one read-only snapshot: changes nothing."""
    import psycopg

    from opsbook.stores import postgres

    policy, path = load_policy(params.policy)
    as_of = params.as_of_date()
    with postgres.connection(purpose="retention plan") as conn:
        conn.read_only = True  # a plan cannot write, whatever it runs
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # every count from one snapshot
        try:
            rules = [plan_rule(conn, rule, as_of) for rule in policy.rules]
        finally:
            conn.rollback()
    return Plan(params, policy, path, as_of, rules)


def cutoff_of(as_of: dt.date, keep_days: int, type_name: str | None = None) -> dt.date | dt.datetime:
    """Midnight (UTC for timestamptz) of ``as_of - keep_days``, as a value of the column's type."""
    day = as_of - dt.timedelta(days=keep_days)
    if type_name == "date":
        return day
    midnight = dt.datetime.combine(day, dt.time())
    return midnight.replace(tzinfo=dt.UTC) if type_name == "timestamp with time zone" else midnight


def plan_rule(conn, rule: Rule, as_of: dt.date) -> RulePlan:
    found = conn.execute(
        "SELECT c.oid::bigint, n.nspname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(quote_ident(%s))",
        (rule.table,),
    ).fetchone()
    day = cutoff_of(as_of, rule.keep_days, "date")
    if found is None:
        return RulePlan(rule, day, "absent", note=f"no table {rule.table}: nothing to remove")
    oid, schema, kind = found
    if kind not in ("r", "p"):
        return RulePlan(rule, day, "error", schema, oid, note=f"{rule.table} is not a table (relkind {kind!r})")
    if rule.action == "drop_partitions":
        return _plan_partitions(conn, rule, as_of, schema, oid)
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
    plan_ = RulePlan(rule, cutoff_of(as_of, rule.keep_days, "date"), "error", schema, oid, rule.column)
    if type_row is None:
        plan_.note = f"{rule.table} has no column {rule.column!r}"
        return plan_
    plan_.column_type = type_row[0]
    if plan_.column_type not in AGE_TYPES:
        plan_.note = f"{rule.table}.{rule.column} is {plan_.column_type}, not a date or timestamp"
        return plan_
    plan_.cutoff = cutoff_of(as_of, rule.keep_days, plan_.column_type)
    plan_.rows, plan_.remove_rows = conn.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(
            older_than(rule.column), sql.Identifier(schema, rule.table)
        ),
        (plan_.cutoff,),
    ).fetchone()
    plan_.table_bytes = table_bytes(conn, oid)
    # the space the rows hold, at the table's average row size (indexes and TOAST included)
    plan_.remove_bytes = round(plan_.table_bytes * plan_.remove_rows / plan_.rows) if plan_.rows else 0
    plan_.status = "to remove" if plan_.remove_rows else "nothing to remove"
    plan_.note = rule.why
    return plan_


def _plan_partitions(conn, rule: Rule, as_of: dt.date, schema: str, oid: int) -> RulePlan:
    plan_ = RulePlan(rule, cutoff_of(as_of, rule.keep_days, "date"), "error", schema, oid)
    key = conn.execute(
        "SELECT p.partstrat, p.partnatts, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_partitioned_table p "
        "LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
        "WHERE p.partrelid = %s",
        (oid,),
    ).fetchone()
    if key is None:
        plan_.note = f"{rule.table} is not partitioned: use action delete_rows with a column"
        return plan_
    strategy, columns, column, type_name = key
    if strategy != "r" or columns != 1 or column is None or type_name not in AGE_TYPES:
        plan_.note = (
            f"{rule.table} is partitioned by {_partition_key(conn, oid)}: only range partitions on one date or "
            "timestamp column can be aged"
        )
        return plan_
    plan_.column, plan_.column_type = column, type_name
    plan_.cutoff = cutoff_of(as_of, rule.keep_days, type_name)
    children = conn.execute(
        "SELECT c.oid::bigint, n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = %s ORDER BY c.relname",
        (oid,),
    ).fetchall()
    ledger = _ledger_exists(conn)
    for child_oid, child_schema, name, bound in children:
        upper = _upper_bound(conn, bound, type_name)
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(child_schema, name))).fetchone()[0]
        part = Partition(child_schema, name, child_oid, bound, rows, table_bytes(conn, child_oid), False)
        part.drop = upper is not None and upper <= plan_.cutoff
        if ledger:
            part.ledger = [
                tuple(row)
                for row in conn.execute(
                    "SELECT dataset, partition, step FROM opsbook.partitions WHERE table_oid = %s ORDER BY step",
                    (child_oid,),
                )
            ]
        plan_.partitions.append(part)
        plan_.rows += rows
    plan_.table_bytes = table_bytes(conn, oid)
    plan_.remove_rows = sum(p.rows for p in plan_.dropping)
    plan_.remove_bytes = sum(p.bytes for p in plan_.dropping)
    plan_.status = "to remove" if plan_.dropping else "nothing to remove"
    plan_.note = rule.why
    return plan_


def _partition_key(conn, oid: int) -> str:
    return conn.execute("SELECT pg_get_partkeydef(%s::oid)", (oid,)).fetchone()[0]


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


def _ledger_exists(conn) -> bool:
    return conn.execute("SELECT to_regclass('opsbook.partitions') IS NOT NULL").fetchone()[0]


def table_bytes(conn, oid: int) -> int:
    """Bytes on disk of a table with its indexes and TOAST, all partitions included."""
    # pg_partition_tree lists nothing for a table that is neither partitioned nor a partition
    return conn.execute(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::oid::regclass)), "
        "pg_total_relation_size(%s::oid))::bigint",
        (oid, oid),
    ).fetchone()[0]


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
class Result:
    plan: Plan
    applied: list[Applied] = field(default_factory=list)
    refused: str | None = None
    seconds: float = 0.0

    def verdict(self) -> Verdict:
        p = self.plan
        figures = {
            "rules": len(p.rules),
            "absent": sum(r.status == "absent" for r in p.rules),
            "rows planned": p.remove_rows,
            "partitions planned": p.remove_partitions,
            "bytes planned": p.remove_bytes,
        }
        where = f"policy {p.policy.name} as of {p.as_of}"
        if p.errors:
            problems = "; ".join(f"{r.table}: {r.note}" for r in p.errors)
            return Verdict.failed(
                f"{where}: {len(p.errors)} rule(s) do not fit the database, nothing changed: {problems}",
                figures,
                "retention-plan",
                CheckFailed,
            )
        if self.refused:
            return Verdict.failed(self.refused, figures, "retention-apply", CheckFailed)
        absent = sum(r.status == "absent" for r in p.rules)
        absent_text = f"; {absent} table(s) absent" if absent else ""
        if not p.params.apply:
            if not p.remove_rows and not p.remove_partitions:
                return Verdict("pass", f"plan only: {where} finds nothing older than its cutoffs{absent_text}", figures)
            partitions = f"{p.remove_partitions} partition(s), " if p.remove_partitions else ""
            return Verdict(
                "pass",
                f"plan only, nothing changed: {where} would remove {p.remove_rows:,} rows ({partitions}about "
                f"{human_bytes(p.remove_bytes)}) from {sum(r.status == 'to remove' for r in p.rules)} table(s)"
                f"{absent_text}; run with -p apply=true to remove them",
                figures,
            )
        removed = sum(a.removed_rows for a in self.applied)
        dropped = sum(len(a.dropped) for a in self.applied)
        freed = sum((a.bytes_before or 0) - (a.bytes_after or 0) for a in self.applied if a.bytes_before is not None)
        figures.update({"rows removed": removed, "partitions dropped": dropped, "bytes freed": freed})
        partitions = f" ({dropped} partition(s))" if dropped else ""
        tables = sum(a.status == "removed" for a in self.applied)
        freed_text = f"; {human_bytes(freed)} returned to the disk{absent_text}"
        off = [a for a in self.applied if a.status == "removed" and not a.as_planned]
        if off:
            detail = "; ".join(f"{a.table}: {a.removed_rows:,} removed, {a.planned_rows:,} planned" for a in off)
            return Verdict(
                "warn",
                f"{where}: removed {removed:,} rows{partitions} from {tables} table(s), not as planned: the data "
                f"changed between plan and apply ({detail}){freed_text}",
                figures,
                rows_out=removed,
            )
        return Verdict(
            "pass",
            f"{where}: removed {removed:,} rows{partitions} from {tables} table(s), as planned{freed_text}",
            figures,
            rows_out=removed,
        )


class _OverLimit(Exception):
    """Raised inside a rule's transaction to roll it back: the rows removed passed max_rows."""


def refusal(plan_: Plan) -> str | None:
    """Why this plan may not be applied, or None."""
    p = plan_.params
    if plan_.errors:
        return "the policy does not fit the database (see the plan); nothing changed"
    if plan_.remove_rows > p.max_rows:
        return (
            f"the plan removes {plan_.remove_rows:,} rows, more than max_rows={p.max_rows:,}; nothing changed. "
            f"Review the plan, then raise the limit to apply it: -p max_rows={plan_.remove_rows}"
        )
    return None


def apply(plan_: Plan, run_id: str) -> Result:
    """Carry out ``plan_`` when the parameters say apply (else return it untouched).

    Everything refusable is checked before the first lock or change: rules that do not fit
    the database, a plan larger than ``max_rows``, a lock another run holds (LockHeld, exit 4).
    Each rule then runs in one transaction; a rule whose rows grew past ``max_rows`` since the
    plan is rolled back and the rest are not run.
    """
    from opsbook import runlog
    from opsbook.stores import postgres

    t0 = time.monotonic()
    result = Result(plan_)
    if not plan_.params.apply or plan_.errors:
        return result
    result.refused = refusal(plan_)
    if result.refused:
        return result
    work = [r for r in plan_.rules if r.status == "to remove"]
    keys = [table_lock(r.table) for r in work]
    keys += [runlog.partition_lock(step, ds, part) for r in work for p in r.dropping for ds, part, step in p.ledger]
    with postgres.connection(autocommit=True, purpose=f"retention {run_id}") as conn:
        runlog.ensure_schema(conn)
        taken: list[str] = []
        try:
            for key in keys:
                runlog.try_lock(conn, key, f"run {run_id}")  # LockHeld (exit 4) before any change
                taken.append(key)
            removed_total = 0
            stopped = False
            for rule_plan in plan_.rules:
                done = _applied_shell(rule_plan)
                result.applied.append(done)
                if rule_plan.status != "to remove":
                    continue
                if stopped:
                    done.status, done.note = "not run", "an earlier rule passed max_rows"
                    continue
                done.bytes_before = table_bytes(conn, rule_plan.oid)
                try:
                    with conn.transaction():
                        if rule_plan.rule.action == "drop_partitions":
                            _drop_partitions(conn, rule_plan, done)
                        else:
                            _delete_rows(conn, rule_plan, done)
                        if removed_total + done.removed_rows > plan_.params.max_rows:
                            raise _OverLimit
                except _OverLimit:
                    done.note = (
                        f"rolled back: {done.removed_rows:,} rows here would bring the run to "
                        f"{removed_total + done.removed_rows:,}, past max_rows={plan_.params.max_rows:,} "
                        "(rows arrived since the plan)"
                    )
                    done.status, done.removed_rows, done.dropped, done.ledger_removed = "refused", 0, [], []
                    result.refused = f"{done.table}: {done.note}; the rules after it were not run"
                    stopped = True
                    continue
                removed_total += done.removed_rows
                done.status = "removed"
                if plan_.params.vacuum:
                    done.maintenance = _maintain(conn, rule_plan)
                done.bytes_after = table_bytes(conn, rule_plan.oid)
        finally:
            for key in reversed(taken):
                runlog.unlock(conn, key)
    result.seconds = time.monotonic() - t0
    return result


def _applied_shell(rule_plan: RulePlan) -> Applied:
    status = rule_plan.status if rule_plan.status in ("absent", "nothing to remove") else "not run"
    return Applied(
        rule_plan.table,
        rule_plan.rule.action,
        status,
        planned_rows=rule_plan.remove_rows,
        planned_partitions=[p.name for p in rule_plan.dropping],
    )


def _delete_rows(conn, rule_plan: RulePlan, done: Applied) -> None:
    deleted = conn.execute(
        sql.SQL("DELETE FROM {} WHERE {}").format(
            sql.Identifier(rule_plan.schema, rule_plan.table), older_than(rule_plan.column)
        ),
        (rule_plan.cutoff,),
    )
    done.removed_rows = deleted.rowcount


def _drop_partitions(conn, rule_plan: RulePlan, done: Applied) -> None:
    """DETACH and DROP the plan's partitions (the ones still attached), and remove the ledger
    entries that describe them: a later load of the partition then loads it again."""
    parent = sql.Identifier(rule_plan.schema, rule_plan.table)
    ledger = _ledger_exists(conn)
    for part in rule_plan.dropping:
        attached = conn.execute(
            "SELECT 1 FROM pg_inherits WHERE inhrelid = %s AND inhparent = %s", (part.oid, rule_plan.oid)
        ).fetchone()
        if not attached:
            done.note = f"{part.name} was gone before apply; "
            continue
        child = sql.Identifier(part.schema, part.name)
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child))
        done.removed_rows += conn.execute(sql.SQL("SELECT count(*) FROM {}").format(child)).fetchone()[0]
        conn.execute(sql.SQL("DROP TABLE {}").format(child))
        done.dropped.append(part.name)
        if ledger:
            done.ledger_removed += [
                tuple(row)
                for row in conn.execute(
                    "DELETE FROM opsbook.partitions WHERE table_oid = %s RETURNING dataset, partition, step",
                    (part.oid,),
                )
            ]


def _maintain(conn, rule_plan: RulePlan) -> str:
    """VACUUM ANALYZE after a delete (outside any transaction: VACUUM cannot run in one); after
    dropped partitions only ANALYZE the parent, whose statistics autovacuum never refreshes."""
    table = sql.Identifier(rule_plan.schema, rule_plan.table)
    if rule_plan.rule.action == "drop_partitions":
        conn.execute(sql.SQL("ANALYZE {}").format(table))
        return "ANALYZE"
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
    return "VACUUM ANALYZE"


# --- presentation ----------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TB"


def _cutoff_text(value: dt.date | dt.datetime) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M") + (" UTC" if value.tzinfo else "")
    return value.isoformat()


def show_plan(plan_: Plan):
    """Per rule: the cutoff, what would go (rows, partitions, bytes) and what stays."""
    from opsbook import report

    rows = [
        {
            "table": r.table,
            "action": r.rule.action.replace("_", " "),
            "aged by": r.column or r.rule.column or "",
            "keep days": r.rule.keep_days,
            "cutoff": _cutoff_text(r.cutoff),
            "rows now": r.rows if r.status != "absent" else None,
            "rows to remove": r.remove_rows,
            "partitions to drop": len(r.dropping) if r.rule.action == "drop_partitions" else None,
            "bytes to remove": ""
            if r.status in ("absent", "error")
            else human_bytes(r.remove_bytes) + (" (est.)" if r.rule.action == "delete_rows" and r.remove_bytes else ""),
            "rows kept": r.kept_rows if r.status != "absent" else None,
            "table size": human_bytes(r.table_bytes) if r.status != "absent" else "",
            "status": r.status,
            "note": r.note,
        }
        for r in plan_.rules
    ]
    partitions_text = (
        f"{plan_.remove_partitions} partition(s), "
        if any(r.rule.action == "drop_partitions" for r in plan_.rules)
        else ""
    )
    caption = (
        f"Policy {plan_.policy.name} ({plan_.path.name}) as of {plan_.as_of}: {plan_.remove_rows:,} rows, "
        f"{partitions_text}about {human_bytes(plan_.remove_bytes)} to remove"
    )
    parts = [report.table(rows, caption=caption, status_column="status", element_id="retention-plan")]
    partitions = [
        {
            "table": r.table,
            "partition": p.name,
            "bounds": p.bound.removeprefix("FOR VALUES "),
            "rows": p.rows,
            "size": human_bytes(p.bytes),
            "ledger": ", ".join(f"{step} {ds} {part}" for ds, part, step in p.ledger),
            "status": "drop" if p.drop else "keep",
        }
        for r in plan_.rules
        for p in r.partitions
    ]
    if partitions:
        parts.append(
            report.table(
                partitions,
                caption="Partitions (bounds from the catalog): dropped when the upper bound is on or before the cutoff",
                status_column="status",
                element_id="retention-partitions",
            )
        )
    return report.stack(*parts)


def show_plan_chart(plan_: Plan):
    """Rows and bytes to remove per table (tables with nothing to remove shown at zero)."""
    from opsbook import report

    present = [r for r in plan_.rules if r.status not in ("absent", "error")]
    if not present:
        return report.note("No table of the policy exists yet: nothing to chart.")
    from plotly.subplots import make_subplots

    tables = [r.table for r in present]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rows to remove / kept", "MB to remove"))
    fig.add_bar(x=tables, y=[r.remove_rows for r in present], name="to remove", marker_color="#cf222e", row=1, col=1)
    fig.add_bar(x=tables, y=[r.kept_rows for r in present], name="kept", marker_color="#2da44e", row=1, col=1)
    fig.add_bar(
        x=tables,
        y=[r.remove_bytes / 2**20 for r in present],
        name="MB to remove",
        marker_color="#bf8700",
        showlegend=False,
        row=1,
        col=2,
    )
    fig.update_layout(
        title=f"Retention plan: policy {plan_.policy.name} as of {plan_.as_of}",
        barmode="stack",
        height=360,
        margin={"l": 50, "r": 20, "t": 70, "b": 60},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return report.chart(fig, element_id="retention-chart")


def show_applied(result: Result):
    """Planned against removed, per rule, with the table sizes before and after."""
    from opsbook import report

    p = result.plan
    if not p.params.apply:
        return report.note("plan only: nothing changed; run with -p apply=true to remove what the plan shows.")
    if p.errors:
        return report.note("Not applied: the policy does not fit the database (see the plan); nothing changed.")
    if not result.applied:
        return report.stack(report.heading("Refused", element_id="retention-apply"), report.note(result.refused or ""))
    rows = [
        {
            "table": a.table,
            "action": a.action.replace("_", " "),
            "rows planned": a.planned_rows,
            "rows removed": a.removed_rows,
            "partitions planned": len(a.planned_partitions) if a.action == "drop_partitions" else None,
            "partitions dropped": ", ".join(a.dropped),
            "size before": human_bytes(a.bytes_before),
            "size after": human_bytes(a.bytes_after),
            "maintenance": a.maintenance,
            "status": a.status,
            "note": a.note,
        }
        for a in result.applied
    ]
    parts = [
        report.table(
            rows,
            caption=f"Applied in {result.seconds:.1f}s (each rule in one transaction)",
            status_column="status",
            element_id="retention-apply",
        )
    ]
    if result.refused:
        parts.append(report.note(result.refused))
    forgotten = [
        {"dataset": ds, "partition": part, "step": step, "table": a.table}
        for a in result.applied
        for ds, part, step in a.ledger_removed
    ]
    if forgotten:
        parts.append(
            report.table(
                forgotten,
                caption="Ledger entries removed with their partitions: a later load of these loads them again",
            )
        )
    if any(a.maintenance == "VACUUM ANALYZE" for a in result.applied):
        parts.append(
            report.note(
                "VACUUM makes the space of deleted rows reusable by the table; the file shrinks only where "
                "whole pages at its end became empty. Dropped partitions return their space at once."
            )
        )
    return report.stack(*parts)
