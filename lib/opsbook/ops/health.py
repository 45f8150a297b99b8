"""The morning check (breezeway_etl.md "Daily Operations: Morning Check"): is every scheduled
procedure on time, did anything fail, is anything stuck?

Read from the run log (``opsbook.runs``, through :mod:`opsbook.history.runs`) and from
PostgreSQL's own views (:mod:`.sessions`), and judged against :class:`Limits`:

- sync status per procedure and dataset: last success, hours since against a limit per
  procedure, failures in the last 24 hours, rows written per day over the trend window (a last
  run writing far fewer rows than the earlier runs of the same window is flagged);
- runs left 'running' past ``stuck_after_minutes`` whose process is gone (optionally marked
  failed with a note saying which health run did it and why); interactive runs whose kernel
  is gone are marked ``abandoned`` (not a failure);
- sessions waiting on a lock and queries running too long in this database;
- the database: size, connections against ``max_connections``, dual-write batches left
  pending too long.
"""

from __future__ import annotations

import datetime as dt
import socket
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from opsbook.history import runs
from opsbook.ops.sessions import Blocked, Database, RunningRun, Session, one_line, ts

SELF = "health"
SUCCESS = ("success", "warn")  # a run that completed (WARN is exit 0)


@dataclass(frozen=True)
class Limits:
    """What the check judges against (the procedure's parameters)."""

    expected: tuple[str, ...]  # scheduled procedures: each must have succeeded within its lag
    lag_hours: dict[str, float]  # procedure -> hours since the last success; "default" for the rest
    max_failures_24h: int
    trend_days: int
    max_drop: float
    stuck_after_minutes: int
    long_query_seconds: int
    blocked_seconds: int
    max_connections_used: float
    max_db_size_gb: float
    pending_write_hours: float


@dataclass
class SyncStatus:
    """One procedure and dataset as the run log shows it."""

    procedure: str
    dataset: str | None
    monitored: bool
    threshold_h: float | None
    last_success: dt.datetime | None = None
    lag_h: float | None = None
    failures_24h: int = 0
    last_failure_error: str | None = None
    runs: int = 0  # in the trend window
    daily_rows: dict[str, int | None] = field(default_factory=dict)  # day -> rows of that day's last success
    last_rows: int | None = None
    baseline_rows: float | None = None
    baseline_runs: int = 0
    window: str | None = None
    breaches: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.procedure}/{self.dataset}" if self.dataset else self.procedure

    @property
    def status(self) -> str:
        return "fail" if self.breaches else "pass"


@dataclass
class Findings:
    """Everything one check found, and the limits it breaches."""

    run_id: str
    checked_at: dt.datetime
    host: str
    limits: Limits
    sync: list[SyncStatus]
    daily: list[dict]  # {"day", "status", "runs"} over the trend window
    running: list[RunningRun]
    long_queries: list[Session]
    blocked: list[Blocked]
    database: Database
    notes: list[str] = field(default_factory=list)
    partitions: list[dict] = field(default_factory=list)  # day-partitioned tables: tomorrow's partition

    @property
    def stuck(self) -> list[RunningRun]:
        return [r for r in self.running if r.state == "dead"]

    @property
    def abandoned(self) -> list[RunningRun]:
        return [r for r in self.running if r.state == "abandoned"]

    def breaches(self) -> list[str]:
        """Every limit breached, one sentence each."""
        p = self.limits
        found = [b for s in self.sync for b in s.breaches]
        for r in self.stuck:
            what = "marked failed" if r.marked else "still 'running' (mark_stuck=true marks it failed)"
            found.append(
                f"run {r.run_id} ({r.procedure}) has been 'running' for {r.minutes:,.0f} min "
                f"but its process is gone ({r.evidence}); {what}"
            )
        for q in self.long_queries:
            found.append(
                f"session {q.pid} ({q.application or q.user}) has been {q.state} for {q.seconds:,.0f} s "
                f"(over {p.long_query_seconds} s): {one_line(q.query, 80)}"
            )
        for b in self.blocked:
            if b.waited_s > p.blocked_seconds:
                found.append(
                    f"session {b.blocked_pid} has waited {b.waited_s:,.0f} s on {b.lock} held by session "
                    f"{b.blocking_pid} ({b.blocking_application or 'unnamed'}, {b.blocking_state})"
                )
        for p_ in self.partitions:
            if not p_["tomorrow present"]:
                found.append(
                    f"{p_['table']} has no partition for tomorrow ({p_['tomorrow']}, UTC): inserts of its readings "
                    f"will fail; rollups makes the coming days' (-p partitions_ahead=7)"
                )
        db = self.database
        if db.used > p.max_connections_used * db.max_connections:
            found.append(f"{db.used} of {db.max_connections} connections are in use, over {p.max_connections_used:.0%}")
        if p.max_db_size_gb and db.size_bytes > p.max_db_size_gb * 1024**3:
            found.append(f"database {db.name} is {db.size}, over {p.max_db_size_gb:g} GB")
        for w in db.pending:
            if w["older"]:
                found.append(
                    f"{w['older']} dual-write batch(es) of {w['dataset']} to {w['target']} have been pending "
                    f"over {p.pending_write_hours:g} h (oldest since {ts(w['oldest'])})"
                )
        return found

    def figures(self) -> dict[str, Any]:
        return {
            "procedures": len(self.sync),
            "failures 24h": sum(s.failures_24h for s in self.sync),
            "stuck runs": len(self.stuck),
            "marked failed": sum(r.marked for r in self.stuck),
            "abandoned": len(self.abandoned),
            "blocked sessions": len({b.blocked_pid for b in self.blocked}),
            "long queries": len(self.long_queries),
            "database size": self.database.size,
            "connections": f"{self.database.used}/{self.database.max_connections}",
        }

    def as_dict(self) -> dict[str, Any]:
        """The findings as plain data (the JSON of the escalation bundle)."""
        return {
            "run_id": self.run_id,
            "checked_at": self.checked_at,
            "host": self.host,
            "limits": asdict(self.limits),
            "breaches": self.breaches(),
            "sync": [{**asdict(s), "status": s.status} for s in self.sync],
            "running": [{**asdict(r), "status": r.status} for r in self.running],
            "long_queries": [asdict(q) for q in self.long_queries],
            "blocked": [asdict(b) for b in self.blocked],
            "database": {**asdict(self.database), "used": self.database.used},
            "notes": self.notes,
            "partitions": self.partitions,
        }


def check(run_id: str, limits: Limits, mark_stuck: bool = False) -> Findings:
    """Look at the run log and the database once; with ``mark_stuck``, mark the dead runs failed."""
    from opsbook.history import schema
    from opsbook.ops import sessions
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"health {run_id}") as conn:
        schema.ensure_schema(conn)
        now = conn.execute("SELECT now()").fetchone()[0]
        findings = Findings(
            run_id,
            now,
            socket.gethostname(),
            limits,
            sync=sync_status(conn, limits, now),
            daily=runs.per_day(conn, limits.trend_days, run_id),
            running=sessions.running_runs(conn, limits.stuck_after_minutes, run_id),
            long_queries=sessions.long_queries(conn, limits.long_query_seconds),
            blocked=sessions.blocked_sessions(conn),
            database=sessions.database(conn, limits.pending_write_hours),
        )
        findings.partitions = day_partitions_ahead(conn, now.astimezone(dt.UTC).date())
        # an interactive run whose kernel is gone can never finish: always recorded as such
        sessions.mark_abandoned(conn, findings.abandoned, run_id)
        if mark_stuck:
            sessions.mark_stuck(conn, findings.stuck, run_id)
    return findings


def day_partitions_ahead(conn: psycopg.Connection, today: dt.date) -> list[dict]:
    """Each dataset partitioned by day whose table is in the database: the partitions it has
    from today on, and whether tomorrow's is there (a writer's insert fails without it)."""
    from opsbook import datasets
    from opsbook.stores import postgres

    found = []
    for name in datasets.available():
        spec = datasets.get(name)
        partitioned = conn.execute(
            "SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", (spec.table,)
        ).fetchone()
        if spec.partition.by != "day" or not partitioned:
            continue
        days = sorted(d for d in postgres.day_partitions(conn, spec.table) if d >= today)
        tomorrow = today + dt.timedelta(days=1)
        found.append(
            {
                "table": spec.table,
                "tomorrow": tomorrow,
                "tomorrow present": tomorrow in days,
                "days ahead": len([d for d in days if d > today]),
                "last": days[-1] if days else None,
            }
        )
    return found


def trend_days(now: dt.datetime, days: int) -> list[str]:
    """The UTC days of the trend window, oldest first."""
    return [(now - dt.timedelta(days=n)).astimezone(dt.UTC).date().isoformat() for n in range(days)][::-1]


def sync_status(conn: psycopg.Connection, limits: Limits, now: dt.datetime) -> list[SyncStatus]:
    """Per procedure and dataset: last success, lag, failures in 24 h, rows per day, drop."""
    expected, thresholds = limits.expected, limits.lag_hours
    last = runs.last_completed(conn, list(SUCCESS), SELF)
    keys = {(r["procedure"], r["dataset"]) for r in last} | runs.procedures_seen(conn, SELF)
    recent = runs.ended_since(conn, SELF, now, limits.trend_days)
    days = trend_days(now, limits.trend_days)
    found: dict[tuple, SyncStatus] = {}
    for procedure, dataset in sorted(keys, key=lambda k: (k[0], k[1] or "")):
        monitored = procedure in expected or procedure in thresholds
        threshold = thresholds.get(procedure, thresholds.get("default")) if monitored else None
        found[(procedure, dataset)] = SyncStatus(
            procedure, dataset, monitored, threshold, daily_rows=dict.fromkeys(days)
        )
    for r in last:
        s = found[(r["procedure"], r["dataset"])]
        s.last_success = r["at"]
        s.lag_h = (now - r["at"]).total_seconds() / 3600
    successes: dict[tuple, list[dict]] = {}
    for r in recent:
        s = found[(r["procedure"], r["dataset"])]
        s.runs += 1
        if r["status"] == "failed" and r["at"] > now - dt.timedelta(hours=24):
            s.failures_24h += 1
            s.last_failure_error = r["error"]
        if r["status"] in SUCCESS and r["rows_out"] is not None:
            s.daily_rows[r["at"].astimezone(dt.UTC).date().isoformat()] = int(r["rows_out"])
            successes.setdefault((r["procedure"], r["dataset"]), []).append(r)
    for key, s in found.items():
        judge(s, successes.get(key, []), limits)
    for procedure in expected:  # scheduled, never seen at all
        if not any(k[0] == procedure for k in found):
            s = SyncStatus(
                procedure,
                None,
                True,
                thresholds.get(procedure, thresholds.get("default")),
                daily_rows=dict.fromkeys(days),
            )
            s.breaches.append(f"{procedure} is expected but has never run")
            found[(procedure, None)] = s
    return list(found.values())


def judge(s: SyncStatus, successes: list[dict], limits: Limits) -> None:
    """Fill the breaches of one procedure and dataset (``successes``: its completed runs in the
    trend window, oldest first)."""
    if s.monitored and s.last_success is None:
        s.breaches.append(f"{s.name} is expected but has never succeeded")
    elif s.monitored and s.threshold_h is not None and s.lag_h is not None and s.lag_h > s.threshold_h:
        s.breaches.append(
            f"{s.name} last succeeded {s.lag_h:,.1f} h ago ({ts(s.last_success)}), over its {s.threshold_h:g} h limit"
        )
    if s.failures_24h > limits.max_failures_24h:
        error = f"; last error: {one_line(s.last_failure_error, 120)}" if s.last_failure_error else ""
        s.breaches.append(f"{s.name} failed {s.failures_24h} time(s) in the last 24 h{error}")
    if not successes:
        return
    latest = successes[-1]
    s.last_rows, s.window = int(latest["rows_out"]), latest["window"]
    earlier = [int(r["rows_out"]) for r in successes[:-1] if r["window"] == latest["window"]]
    if not earlier:
        return
    s.baseline_rows, s.baseline_runs = float(statistics.median(earlier)), len(earlier)
    # only scheduled procedures: an on-demand one (a backfill that found nothing to do) legitimately writes 0
    if s.monitored and s.baseline_rows > 0 and s.last_rows < (1 - limits.max_drop) * s.baseline_rows:
        drop = 1 - s.last_rows / s.baseline_rows
        s.breaches.append(
            f"{s.name} wrote {s.last_rows:,} rows in its last run, {drop:.0%} fewer than the median "
            f"{s.baseline_rows:,.0f} of its {s.baseline_runs} earlier run(s) of window {s.window or '-'} "
            f"in {limits.trend_days} days"
        )
