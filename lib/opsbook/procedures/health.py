"""The morning check: is every scheduled procedure on time, did anything fail, is anything stuck?

Read from the run log (``opsbook.runs``) and from PostgreSQL's own views:

- sync status per procedure and dataset: last success, hours since against a threshold per
  procedure, failures in the last 24 hours, runs and rows written per day over the trend window
  (a last run writing far fewer rows than the earlier runs of the same window is flagged);
- runs left 'running' past ``stuck_after_minutes`` whose process is gone (optionally marked
  failed with a note saying which health run did it and why);
- sessions waiting on a lock (``pg_blocking_pids``) and queries running too long in this database;
- the database: size, connections by state against ``max_connections``, dual-write batches left
  pending too long in ``opsbook.writes``;
- on request, an escalation bundle: one zip with the recent run log as CSV, the reports of the
  failed runs, the tail of their error output, and these findings as JSON, all redacted.

A run is alive when any of these holds: a connection of it is open (its run id is in the
connection's ``application_name``), an advisory lock it took is held, or, on this host, its
recorded process (``opsbook.runs.pid``: the runner, or the kernel of an interactive run) exists and
started before the run did (so a recycled pid does not count). A run on another host with no
connection and no lock cannot be judged from here: it is reported, never marked.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import socket
import statistics
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator

from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict

NOTEBOOK = "health.ipynb"
SUMMARY = "Morning check: lag and failures per procedure, stuck runs, locks and long queries, database, escalation zip"
SELF = "health"
SUCCESS = ("success", "warn")  # a run that completed (WARN is exit 0)
LOG_TAIL_LINES = 200
QUERY_CHARS = 300
# a process that started this much after its run's row was written is another process with a recycled pid
PID_CLOCK_SLACK_S = 120


def _join_list(value: Any) -> Any:
    # a params file may give a YAML list: [load, validate]
    return ",".join(str(v) for v in value) if isinstance(value, list | tuple) else value


def _join_mapping(value: Any) -> Any:
    # a params file may give a YAML mapping: {default: 25, load: 26}
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value


def _known_procedure(name: str, what: str) -> None:
    from opsbook import procedures
    from opsbook.run.params import closest

    if name not in procedures.PROCEDURES:
        hint = closest(name, procedures.PROCEDURES)
        raise ValueError(f"{what}: unknown procedure {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))


def expected_list(spec: str) -> list[str]:
    """``"load, validate"`` -> ``["load", "validate"]``."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def lag_thresholds(spec: str) -> dict[str, float]:
    """``"default=25,load=26"`` -> ``{"default": 25.0, "load": 26.0}``; a bad entry is named."""
    found: dict[str, float] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, sep, hours = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"entry {entry!r}: expected procedure=hours, e.g. load=25")
        try:
            value = float(hours)
        except ValueError:
            raise ValueError(f"entry {entry!r}: {hours.strip()!r} is not a number of hours") from None
        if value <= 0:
            raise ValueError(f"entry {entry!r}: hours must be more than 0")
        if name != "default":
            _known_procedure(name, f"entry {entry!r}")
        found[name] = value
    return found


ProcedureList = Annotated[str, BeforeValidator(_join_list)]
ThresholdMap = Annotated[str, BeforeValidator(_join_mapping)]


class Params(ProcedureParams):
    """Parameters of ``health``."""

    expected: ProcedureList = Field(
        "load,aggregate,validate", description="scheduled procedures: each must have succeeded within its lag"
    )
    lag_hours: ThresholdMap = Field(
        "default=25", description="hours allowed since the last success: procedure=hours, default= for the rest"
    )
    max_failures_24h: int = Field(0, ge=0, description="failed runs allowed in the last 24 hours")
    trend_days: int = Field(7, ge=2, le=90, description="days of run history in the trend and the chart")
    max_drop: float = Field(0.5, gt=0, le=1, description="flag a last run writing this fraction fewer rows")
    stuck_after_minutes: int = Field(60, ge=0, description="a run still 'running' after this long is checked")
    mark_stuck: bool = Field(False, description="mark runs whose process is gone as failed, with a note")
    long_query_seconds: int = Field(300, ge=1, description="a statement or transaction open longer is reported")
    blocked_seconds: int = Field(60, ge=0, description="a session waiting on a lock longer is reported")
    max_connections_used: float = Field(0.8, gt=0, le=1, description="share of max_connections in use allowed")
    max_db_size_gb: float = Field(0.0, ge=0, description="database size allowed in GB (0: no limit)")
    pending_write_hours: float = Field(4.0, gt=0, description="dual-write batches pending longer are reported")
    incident: bool = Field(False, description="write the escalation zip under reports/incidents/")
    incident_hours: int = Field(24, ge=1, description="hours of run log in the escalation zip")

    @field_validator("expected")
    @classmethod
    def _expected_known(cls, value: str) -> str:
        names = expected_list(value)
        for name in names:
            _known_procedure(name, "expected")
        return ",".join(names)

    @field_validator("lag_hours")
    @classmethod
    def _thresholds(cls, value: str) -> str:
        return ",".join(f"{k}={v:g}" for k, v in lag_thresholds(value).items())


# --- findings --------------------------------------------------------------------------------


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
class RunningRun:
    """A run still 'running' past ``stuck_after_minutes``, and whether anything keeps it."""

    run_id: str
    procedure: str
    dataset: str | None
    host: str | None
    pid: int | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime | None
    minutes: float
    state: str  # alive | dead | unknown
    evidence: str
    marked: bool = False
    note: str | None = None

    @property
    def status(self) -> str:
        return {"dead": "fail", "alive": "warn", "unknown": "warn"}[self.state]


@dataclass
class Session:
    pid: int
    user: str | None
    application: str | None
    state: str | None
    seconds: float
    wait: str | None
    query: str


@dataclass
class Blocked:
    blocked_pid: int
    blocked_application: str | None
    blocked_query: str
    waited_s: float
    lock: str
    blocking_pid: int
    blocking_application: str | None
    blocking_state: str | None
    blocking_query: str


@dataclass
class Database:
    name: str
    size_bytes: int
    size: str
    connections: dict[str, int]
    max_connections: int
    pending: list[dict] | None  # None: opsbook.writes does not exist

    @property
    def used(self) -> int:
        return sum(self.connections.values())


@dataclass
class Bundle:
    path: Path
    files: list[str]
    bytes: int


@dataclass
class Result:
    params: Params
    run_id: str
    checked_at: dt.datetime
    host: str
    sync: list[SyncStatus]
    daily: list[dict]  # {"day", "status", "runs"} over the trend window
    running: list[RunningRun]
    long_queries: list[Session]
    blocked: list[Blocked]
    database: Database
    notes: list[str] = field(default_factory=list)
    bundle: Bundle | None = None

    @property
    def stuck(self) -> list[RunningRun]:
        return [r for r in self.running if r.state == "dead"]

    def breaches(self) -> list[str]:
        """Every threshold breached, one sentence each."""
        p = self.params
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
                f"(over {p.long_query_seconds} s): {_one_line(q.query, 80)}"
            )
        for b in self.blocked:
            if b.waited_s > p.blocked_seconds:
                found.append(
                    f"session {b.blocked_pid} has waited {b.waited_s:,.0f} s on {b.lock} held by session "
                    f"{b.blocking_pid} ({b.blocking_application or 'unnamed'}, {b.blocking_state})"
                )
        db = self.database
        if db.used > p.max_connections_used * db.max_connections:
            found.append(f"{db.used} of {db.max_connections} connections are in use, over {p.max_connections_used:.0%}")
        if p.max_db_size_gb and db.size_bytes > p.max_db_size_gb * 1024**3:
            found.append(f"database {db.name} is {db.size}, over {p.max_db_size_gb:g} GB")
        for w in db.pending or []:
            if w["older"]:
                found.append(
                    f"{w['older']} dual-write batch(es) of {w['dataset']} to {w['target']} have been pending "
                    f"over {p.pending_write_hours:g} h (oldest since {_ts(w['oldest'])})"
                )
        return found

    def figures(self) -> dict[str, Any]:
        return {
            "procedures": len(self.sync),
            "failures 24h": sum(s.failures_24h for s in self.sync),
            "stuck runs": len(self.stuck),
            "marked failed": sum(r.marked for r in self.running),
            "blocked sessions": len({b.blocked_pid for b in self.blocked}),
            "long queries": len(self.long_queries),
            "database size": self.database.size,
            "connections": f"{self.database.used}/{self.database.max_connections}",
        }

    def verdict(self) -> Verdict:
        breaches = self.breaches()
        figures = self.figures()
        if breaches:
            summary = f"{len(breaches)} threshold(s) breached: " + "; ".join(breaches)
            return Verdict.failed(summary, figures, _anchor_of(self), CheckFailed)
        monitored = [s for s in self.sync if s.monitored]
        alive = [r for r in self.running if r.state != "dead"]
        summary = (
            f"{len(monitored)} scheduled procedure(s) succeeded within their lag, no failed run in 24 h, "
            f"no stuck run, no blocked session or long query; database {self.database.size}, "
            f"{self.database.used}/{self.database.max_connections} connections"
        )
        if alive:
            listed = ", ".join(f"{r.run_id} ({r.state}: {r.evidence})" for r in alive)
            return Verdict("warn", f"{summary}; but {len(alive)} run(s) still going past the limit: {listed}", figures)
        return Verdict("pass", summary, figures)


def _anchor_of(result: Result) -> str:
    if any(s.breaches for s in result.sync):
        return "health-sync"
    if result.stuck:
        return "health-stuck"
    if result.long_queries or result.blocked:
        return "health-locks"
    return "health-database"


def _ts(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


def _one_line(text: str | None, limit: int = QUERY_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the work --------------------------------------------------------------------------------


def run(params: Params, run_id: str) -> Result:
    from opsbook import runlog
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"health {run_id}") as conn:
        runlog.ensure_schema(conn)
        now = conn.execute("SELECT now()").fetchone()[0]
        result = Result(
            params,
            run_id,
            now,
            socket.gethostname(),
            sync=sync_status(conn, params, now),
            daily=runs_per_day(conn, params.trend_days, run_id),
            running=running_runs(conn, params, run_id),
            long_queries=long_queries(conn, params.long_query_seconds),
            blocked=blocked_sessions(conn),
            database=database(conn, params.pending_write_hours),
        )
        if params.mark_stuck:
            mark_stuck(conn, result)
        if params.incident:
            result.bundle = write_bundle(conn, result)
    return result


def sync_status(conn, params: Params, now: dt.datetime) -> list[SyncStatus]:
    """Per procedure and dataset: last success, lag, failures in 24 h, rows per day, drop."""
    from opsbook.stores.postgres import dicts

    expected = expected_list(params.expected)
    thresholds = lag_thresholds(params.lag_hours)
    last = dicts(
        conn,
        """SELECT DISTINCT ON (procedure, dataset) procedure, dataset,
                  coalesce(finished_at, started_at) AS at
           FROM opsbook.runs WHERE status = ANY(%s) AND procedure <> %s
           ORDER BY procedure, dataset, coalesce(finished_at, started_at) DESC""",
        (list(SUCCESS), SELF),
    )
    keys = {(r["procedure"], r["dataset"]) for r in last}
    keys |= {
        tuple(r)
        for r in conn.execute(
            "SELECT DISTINCT procedure, dataset FROM opsbook.runs WHERE procedure <> %s", (SELF,)
        ).fetchall()
    }
    recent = dicts(
        conn,
        """SELECT procedure, dataset, "window", status, started_at, coalesce(finished_at, started_at) AS at,
                  rows_out, error
           FROM opsbook.runs
           WHERE procedure <> %s AND coalesce(finished_at, started_at) > %s - make_interval(days => %s)
           ORDER BY coalesce(finished_at, started_at)""",
        (SELF, now, params.trend_days),
    )
    days = [(now - dt.timedelta(days=n)).astimezone(dt.UTC).date().isoformat() for n in range(params.trend_days)][::-1]
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
        _judge(s, successes.get(key, []), params)
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


def _judge(s: SyncStatus, successes: list[dict], params: Params) -> None:
    """Fill the breaches of one procedure and dataset."""
    if s.monitored and s.last_success is None:
        s.breaches.append(f"{s.name} is expected but has never succeeded")
    elif s.monitored and s.threshold_h is not None and s.lag_h is not None and s.lag_h > s.threshold_h:
        s.breaches.append(
            f"{s.name} last succeeded {s.lag_h:,.1f} h ago ({_ts(s.last_success)}), over its {s.threshold_h:g} h limit"
        )
    if s.failures_24h > params.max_failures_24h:
        error = f"; last error: {_one_line(s.last_failure_error, 120)}" if s.last_failure_error else ""
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
    if s.monitored and s.baseline_rows > 0 and s.last_rows < (1 - params.max_drop) * s.baseline_rows:
        drop = 1 - s.last_rows / s.baseline_rows
        s.breaches.append(
            f"{s.name} wrote {s.last_rows:,} rows in its last run, {drop:.0%} fewer than the median "
            f"{s.baseline_rows:,.0f} of its {s.baseline_runs} earlier run(s) of window {s.window or '-'} "
            f"in {params.trend_days} days"
        )


def runs_per_day(conn, days: int, run_id: str) -> list[dict]:
    rows = conn.execute(
        """SELECT to_char(date_trunc('day', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day, status, count(*)
           FROM opsbook.runs
           WHERE started_at > now() - make_interval(days => %s) AND run_id <> %s
           GROUP BY 1, 2 ORDER BY 1, 2""",
        (days, run_id),
    ).fetchall()
    return [{"day": d, "status": s, "runs": int(n)} for d, s, n in rows]


def running_runs(conn, params: Params, run_id: str) -> list[RunningRun]:
    """Runs still 'running' past the limit, each judged alive, dead or unknown (see the module docs)."""
    from opsbook.stores.postgres import dicts

    rows = dicts(
        conn,
        """SELECT run_id, procedure, dataset, host, pid, started_at, heartbeat_at,
                  extract(epoch FROM now() - started_at) / 60 AS minutes
           FROM opsbook.runs
           WHERE status = 'running' AND run_id <> %s AND started_at < now() - make_interval(mins => %s)
           ORDER BY started_at""",
        (run_id, params.stuck_after_minutes),
    )
    here = socket.gethostname()
    found = []
    for r in rows:
        state, evidence = liveness(conn, r, here)
        found.append(
            RunningRun(
                r["run_id"],
                r["procedure"],
                r["dataset"],
                r["host"],
                r["pid"],
                r["started_at"],
                r["heartbeat_at"],
                float(r["minutes"]),
                state,
                evidence,
            )
        )
    return found


def liveness(conn, run: dict, here: str) -> tuple[str, str]:
    """``(alive | dead | unknown, why)`` for one run-log row."""
    session = conn.execute(
        """SELECT pid, application_name FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND strpos(application_name, %s) > 0 LIMIT 1""",
        (run["run_id"],),
    ).fetchone()
    if session:
        return "alive", f"its connection '{session[1]}' (backend {session[0]}) is open"
    lock = conn.execute(
        """SELECT k.key, l.pid FROM opsbook.locks k
           JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(k.key, 0)
           WHERE strpos(k.holder, %s) > 0 LIMIT 1""",
        (run["run_id"],),
    ).fetchone()
    if lock:
        return "alive", f"it holds the lock {lock[0]} (backend {lock[1]})"
    if run["host"] != here:
        return "unknown", f"it ran on {run['host']}, not here, and holds no connection or lock"
    if run["pid"] is None:
        return "unknown", "its row records no process id"
    import psutil

    try:
        started = dt.datetime.fromtimestamp(psutil.Process(run["pid"]).create_time(), dt.UTC)
    except psutil.NoSuchProcess:
        return "dead", f"no process {run['pid']} on {here}"
    except psutil.AccessDenied:
        return "alive", f"process {run['pid']} exists (owned by another user)"
    if started > run["started_at"] + dt.timedelta(seconds=PID_CLOCK_SLACK_S):
        return "dead", f"pid {run['pid']} now belongs to a process started {_ts(started)}, after the run"
    return "alive", f"process {run['pid']} on {here} is running"


def mark_stuck(conn, result: Result) -> None:
    """Mark failed each run judged dead, with a note; a run that finished meanwhile is left alone."""
    for r in result.stuck:
        last_seen = r.heartbeat_at or r.started_at
        note = f"marked failed by health run {result.run_id}: no process since {_ts(last_seen)} ({r.evidence})"
        row = conn.execute(
            """UPDATE opsbook.runs SET status = 'failed', finished_at = now(),
                   error = CASE WHEN error IS NULL THEN %s ELSE error || E'\\n' || %s END
               WHERE run_id = %s AND status = 'running' RETURNING run_id""",
            (note, note, r.run_id),
        ).fetchone()
        r.marked, r.note = bool(row), note if row else "finished on its own before it could be marked"


def long_queries(conn, seconds: int) -> list[Session]:
    rows = conn.execute(
        """SELECT * FROM (
               SELECT pid, usename, application_name, state,
                      extract(epoch FROM now() - CASE WHEN state = 'active' THEN query_start
                                                      ELSE coalesce(xact_start, state_change) END) AS seconds,
                      concat_ws(':', wait_event_type, wait_event) AS wait, query
               FROM pg_stat_activity
               WHERE datname = current_database() AND backend_type = 'client backend'
                 AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle') a
           WHERE seconds > %s ORDER BY seconds DESC""",
        (seconds,),
    ).fetchall()
    return [Session(p, u, a, s, float(sec), w or None, _one_line(q)) for p, u, a, s, sec, w, q in rows]


def blocked_sessions(conn) -> list[Blocked]:
    """Every (waiting, blocking) pair in this database (PostgreSQL's pg_blocking_pids)."""
    rows = conn.execute(
        """SELECT a.pid, a.application_name, a.query,
                  extract(epoch FROM now() - coalesce(w.waitstart, a.query_start)),
                  coalesce(w.mode || ' on ' || coalesce(w.relation::regclass::text, w.locktype), 'a lock'),
                  b.pid, b.application_name, b.state, b.query
           FROM pg_stat_activity a
           CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
           JOIN pg_stat_activity b ON b.pid = blocker.pid
           LEFT JOIN LATERAL (SELECT mode, relation, locktype, waitstart FROM pg_locks
                              WHERE pid = a.pid AND NOT granted LIMIT 1) w ON true
           WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
           ORDER BY 4 DESC"""
    ).fetchall()
    return [
        Blocked(p, app, _one_line(q), float(waited or 0), lock, bp, bapp, bstate, _one_line(bq))
        for p, app, q, waited, lock, bp, bapp, bstate, bq in rows
    ]


def database(conn, pending_write_hours: float) -> Database:
    name, size_bytes, size, max_connections = conn.execute(
        """SELECT current_database(), pg_database_size(current_database()),
                  pg_size_pretty(pg_database_size(current_database())), current_setting('max_connections')::int"""
    ).fetchone()
    # max_connections is for the whole server: count every database's client connections
    connections = dict(
        conn.execute(
            """SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity
               WHERE backend_type = 'client backend' GROUP BY 1 ORDER BY 2 DESC"""
        ).fetchall()
    )
    pending = None
    if conn.execute("SELECT to_regclass('opsbook.writes')").fetchone()[0]:
        from opsbook.stores.postgres import dicts

        pending = dicts(
            conn,
            """SELECT dataset, target, count(*) AS pending,
                      count(*) FILTER (WHERE created_at < now() - make_interval(secs => %s)) AS older,
                      min(created_at) AS oldest, max(attempts) AS attempts,
                      (array_agg(last_error ORDER BY updated_at DESC))[1] AS last_error
               FROM opsbook.writes WHERE status = 'pending' GROUP BY dataset, target ORDER BY dataset, target""",
            (pending_write_hours * 3600,),
        )
    return Database(name, int(size_bytes), size, {k: int(v) for k, v in connections.items()}, max_connections, pending)


# --- escalation bundle -----------------------------------------------------------------------

RUN_COLUMNS = (
    "run_id",
    "procedure",
    "dataset",
    "window",
    "status",
    "exit_code",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "rows_in",
    "rows_out",
    "rows_rejected",
    "host",
    "pid",
    "os_user",
    "interactive",
    "git_revision",
    "opsbook_version",
    "error",
    "report_path",
    "html_path",
    "params",
)


def write_bundle(conn, result: Result) -> Bundle:
    """``reports/incidents/<run id>.zip``: run log CSV, failed runs' reports and log tails, findings."""
    from psycopg import sql

    from opsbook import config
    from opsbook.run.redaction import Redactor
    from opsbook.stores.postgres import dicts

    redact = Redactor()
    rows = dicts(
        conn,
        sql.SQL(
            "SELECT {} FROM opsbook.runs WHERE started_at > now() - make_interval(hours => %s) "
            "OR status = 'running' ORDER BY started_at DESC"
        ).format(sql.SQL(", ").join(sql.Identifier(c) for c in RUN_COLUMNS)),
        (result.params.incident_hours,),
    )
    files: dict[str, str] = {}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RUN_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})
    files["runs.csv"] = text.getvalue()
    history = {r.get("run_id"): r for r in _runs_jsonl(config.reports_dir())}
    for row in rows:
        if row["status"] != "failed":
            continue
        html_path = row["html_path"] or (history.get(row["run_id"]) or {}).get("html")
        if html_path and Path(html_path).is_file():
            files[f"reports/{Path(html_path).name}"] = Path(html_path).read_text(encoding="utf-8", errors="replace")
        ipynb = row["report_path"] or (history.get(row["run_id"]) or {}).get("ipynb")
        files[f"logs/{row['run_id']}.log"] = log_tail(row, ipynb)
    files["findings.json"] = json.dumps(findings_of(result), indent=2, default=str, ensure_ascii=False)
    files["README.txt"] = _readme(result, sorted(files))

    folder = config.reports_dir() / "incidents"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.run_id}.zip"
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, redact(data, name))  # every file, whatever it quotes
    tmp.replace(path)
    return Bundle(path, list(files), path.stat().st_size)


def _runs_jsonl(reports: Path) -> list[dict]:
    from opsbook import artifacts

    try:
        return artifacts.read_runs(reports)
    except OSError:
        return []


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def log_tail(row: dict, ipynb: str | None) -> str:
    """The run-log error and the tail of the executed notebook's error and stderr output.

    Runs keep no separate log file: the runner's progress goes to its stderr, and what a
    notebook printed to stderr or raised is kept in the executed notebook.
    """
    lines = [f"run {row['run_id']} ({row['procedure']}) {row['status']}, exit code {row['exit_code']}"]
    if row["error"]:
        lines += ["", "run log error:", str(row["error"])]
    if not ipynb or not Path(ipynb).is_file():
        lines += ["", f"executed notebook: {ipynb or 'not recorded'} (not found)"]
        return "\n".join(lines) + "\n"
    nb = json.loads(Path(ipynb).read_text(encoding="utf-8"))
    output: list[str] = []
    for number, cell in enumerate(nb.get("cells", []), 1):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                output.append(f"--- cell {number}: {out.get('ename')}: {out.get('evalue')}")
                output.extend(_ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines())
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                output.append(f"--- cell {number}: stderr")
                output.extend(("".join(text) if isinstance(text, list) else text).splitlines())
    lines += ["", f"executed notebook: {ipynb}; last {LOG_TAIL_LINES} lines of its error and stderr output:"]
    lines += output[-LOG_TAIL_LINES:] or ["(none)"]
    return "\n".join(lines) + "\n"


def findings_of(result: Result) -> dict[str, Any]:
    """The findings as plain data (also the JSON in the escalation zip)."""
    return {
        "run_id": result.run_id,
        "checked_at": result.checked_at,
        "host": result.host,
        "params": result.params.notebook_parameters(),
        "breaches": result.breaches(),
        "sync": [{**asdict(s), "status": s.status} for s in result.sync],
        "running": [{**asdict(r), "status": r.status} for r in result.running],
        "long_queries": [asdict(q) for q in result.long_queries],
        "blocked": [asdict(b) for b in result.blocked],
        "database": {**asdict(result.database), "used": result.database.used},
        "notes": result.notes,
    }


def _readme(result: Result, names: list[str]) -> str:
    breaches = result.breaches()
    lines = [
        f"opsbook escalation bundle from health run {result.run_id} on {result.host} at {_ts(result.checked_at)}",
        "",
        f"{len(breaches)} threshold(s) breached:" if breaches else "No threshold breached.",
        *(f"- {b}" for b in breaches),
        "",
        "Contents:",
        f"- runs.csv: opsbook.runs rows started in the last {result.params.incident_hours} h, and any still running",
        "- reports/: the HTML report of each failed run among them",
        "- logs/: per failed run, its run-log error and the tail of its notebook's error and stderr output",
        "- findings.json: everything this health run found",
        "Secret values configured on the host are replaced with ***.",
        "",
        *names,
    ]
    return "\n".join(lines) + "\n"


# --- presentation ----------------------------------------------------------------------------


def _rows_trend(s: SyncStatus) -> str:
    def short(n: int | None) -> str:
        if n is None:
            return "·"
        for unit, size in (("M", 1e6), ("k", 1e3)):
            if n >= size:
                return f"{n / size:.3g}{unit}"
        return str(n)

    return " ".join(short(v) for v in s.daily_rows.values())


def show_sync(result: Result):
    from opsbook import report

    rows = [
        {
            "procedure": s.procedure,
            "dataset": s.dataset or "",
            "scheduled": s.monitored,
            "last success (UTC)": _ts(s.last_success) or "never",
            "hours since": round(s.lag_h, 1) if s.lag_h is not None else None,
            "limit (h)": s.threshold_h,
            "failures 24h": s.failures_24h,
            f"runs {result.params.trend_days}d": s.runs,
            f"rows per day, last {result.params.trend_days}d": _rows_trend(s),
            "last run rows": s.last_rows,
            "median before": round(s.baseline_rows) if s.baseline_rows is not None else None,
            "status": s.status,
            "why": "; ".join(s.breaches),
        }
        for s in result.sync
    ]
    return report.table(
        rows,
        caption=(
            f"Per procedure and dataset, from opsbook.runs at {_ts(result.checked_at)}; scheduled: "
            f"{result.params.expected} (limits {result.params.lag_hours}). Rows per day: the rows written by "
            "that day's last successful run, oldest day first (· no successful run)"
        ),
        status_column="status",
        element_id="health-sync",
    )


STATUS_ORDER = {"success": "#1a7f37", "warn": "#bf8700", "failed": "#cf222e", "running": "#0969da"}


def show_runs_chart(result: Result):
    import plotly.graph_objects as go

    from opsbook import report

    days = [
        (result.checked_at - dt.timedelta(days=n)).astimezone(dt.UTC).date().isoformat()
        for n in range(result.params.trend_days)
    ][::-1]
    counts = {(d["day"], d["status"]): d["runs"] for d in result.daily}
    fig = go.Figure()
    for status, colour in STATUS_ORDER.items():
        fig.add_trace(go.Bar(name=status, x=days, y=[counts.get((d, status), 0) for d in days], marker_color=colour))
    fig.update_layout(
        barmode="stack",
        title=f"Runs per day by status, last {result.params.trend_days} days (all procedures)",
        xaxis_title="day (UTC)",
        yaxis_title="runs",
        height=360,
        margin={"t": 50, "b": 40},
    )
    return report.chart(fig, element_id="health-runs-chart")


def show_running(result: Result):
    from opsbook import report

    p = result.params
    rows = [
        {
            "run id": r.run_id,
            "procedure": r.procedure,
            "dataset": r.dataset or "",
            "host / pid": f"{r.host} / {r.pid}",
            "started (UTC)": _ts(r.started_at),
            "minutes": round(r.minutes),
            "process": r.state,
            "evidence": r.evidence,
            "marked failed": r.marked,
            "status": r.status,
        }
        for r in result.running
    ]
    action = (
        "mark_stuck=true: runs whose process is gone were marked failed."
        if p.mark_stuck
        else "mark_stuck=false: nothing was changed; rerun with -p mark_stuck=true to mark the dead runs failed."
    )
    return report.stack(
        report.table(
            rows,
            caption=f"Runs still 'running' after {p.stuck_after_minutes} min (this health run left out)",
            status_column="status",
            element_id="health-stuck",
        ),
        report.note(
            "A run is alive when a connection of it is open, a lock it took is held, or, on this host "
            f"({result.host}), its runner or kernel process still exists. {action}"
        ),
    )


def show_locks(result: Result):
    from opsbook import report

    p = result.params
    waits = [
        {
            "waiting session": b.blocked_pid,
            "application": b.blocked_application or "",
            "waited (s)": round(b.waited_s, 1),
            "on": b.lock,
            "blocked by": b.blocking_pid,
            "blocker application": b.blocking_application or "",
            "blocker state": b.blocking_state or "",
            "blocker query": b.blocking_query,
            "waiting query": b.blocked_query,
            "status": "fail" if b.waited_s > p.blocked_seconds else "warn",
        }
        for b in result.blocked
    ]
    long = [
        {
            "session": q.pid,
            "user": q.user or "",
            "application": q.application or "",
            "state": q.state or "",
            "seconds": round(q.seconds),
            "waiting on": q.wait or "",
            "query": q.query,
            "status": "fail",
        }
        for q in result.long_queries
    ]
    return report.stack(
        report.table(
            waits,
            caption=f"Sessions waiting on a lock in {result.database.name} (fail past {p.blocked_seconds} s)",
            status_column="status",
            element_id="health-locks",
            raw_columns=("blocker query", "waiting query"),
        ),
        report.table(
            long,
            caption=f"Statements or transactions open longer than {p.long_query_seconds} s in {result.database.name}",
            status_column="status",
            element_id="health-long-queries",
            raw_columns=("query",),
        ),
    )


def show_database(result: Result):
    from opsbook import report

    p, db = result.params, result.database
    share = db.used / db.max_connections if db.max_connections else 0
    size_ok = not p.max_db_size_gb or db.size_bytes <= p.max_db_size_gb * 1024**3
    figures = [
        {
            "figure": "database size",
            "value": f"{db.size} ({db.size_bytes:,} bytes)",
            "limit": f"{p.max_db_size_gb:g} GB" if p.max_db_size_gb else "none",
            "status": "pass" if size_ok else "fail",
        },
        {
            "figure": "connections in use (whole server)",
            "value": f"{db.used} of {db.max_connections} ({share:.0%})",
            "limit": f"{p.max_connections_used:.0%}",
            "status": "pass" if share <= p.max_connections_used else "fail",
        },
    ]
    if db.pending is None:
        pending = report.note("opsbook.writes does not exist here: no dual-write has run against this database.")
    else:
        pending = report.table(
            [
                {
                    "dataset": w["dataset"],
                    "target": w["target"],
                    "pending": w["pending"],
                    f"over {p.pending_write_hours:g} h": w["older"],
                    "oldest (UTC)": _ts(w["oldest"]),
                    "attempts": w["attempts"],
                    "last error": _one_line(w["last_error"], 160),
                    "status": "fail" if w["older"] else "warn",
                }
                for w in db.pending
            ],
            caption="Dual-write batches pending in opsbook.writes",
            status_column="status",
            element_id="health-pending",
        )
    return report.stack(
        report.table(figures, caption=f"Database {db.name}", status_column="status", element_id="health-database"),
        report.table(
            [{"state": k, "connections": v} for k, v in db.connections.items()],
            caption="Client connections by state (all databases on the server)",
        ),
        pending,
    )


def show_bundle(result: Result):
    import html
    import os

    from opsbook import report

    if result.bundle is None:
        return report.note("incident=false: no escalation bundle written (rerun with -p incident=true to write one).")
    from opsbook.artifacts import ReportPaths

    here = ReportPaths.for_run(result.run_id).html.parent
    href = os.path.relpath(result.bundle.path, here)
    link = report.Html(
        f'<p>Escalation bundle: <a href="{html.escape(href)}">{html.escape(result.bundle.path.name)}</a> '
        f"({result.bundle.bytes:,} bytes) in {html.escape(str(result.bundle.path.parent))}</p>",
        f"Escalation bundle: {result.bundle.path} ({result.bundle.bytes:,} bytes)",
    )
    return report.stack(
        link,
        report.table(
            [{"file": name} for name in result.bundle.files],
            caption="Contents (every file redacted of the configured secrets)",
            element_id="health-bundle",
        ),
    )
