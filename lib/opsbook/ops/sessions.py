"""What PostgreSQL shows about the runs and the database: runs left 'running', sessions
waiting on locks, long queries, size and connections (the DW runbook's "Database Lock
Contention", breezeway_etl.md's "ETL Stuck in 'running' Status").

A run is alive when any of these holds: a connection of it is open (its run id is in the
connection's ``application_name``), an advisory lock it took is held, or, on this host, its
recorded process (``opsbook.runs.pid``: the runner, or the kernel of an interactive run) exists
and started before the run did (so a recycled pid does not count). A run on another host with
no connection and no lock cannot be judged from here: it is reported, never marked.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass

import psycopg

from opsbook.history import locks, runs, writes

QUERY_CHARS = 300
# a process that started this much after its run's row was written is another process with a recycled pid
PID_CLOCK_SLACK_S = 120


def ts(value: dt.datetime | None) -> str:
    """A time as the findings quote it: ``2026-01-08 06:45 UTC``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else ""


def one_line(text: str | None, limit: int = QUERY_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- runs left 'running' -------------------------------------------------------------------


@dataclass
class RunningRun:
    """A run still 'running' past the limit, and whether anything keeps it."""

    run_id: str
    procedure: str
    dataset: str | None
    host: str | None
    pid: int | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime | None
    minutes: float
    state: str  # alive | dead | unknown | abandoned (an interactive run whose kernel is gone)
    evidence: str
    marked: bool = False
    note: str | None = None
    interactive: bool = False
    window: str | None = None

    @property
    def status(self) -> str:
        return {"dead": "fail", "alive": "warn", "unknown": "warn", "abandoned": "pass"}[self.state]


def running_runs(conn: psycopg.Connection, minutes: int, run_id: str) -> list[RunningRun]:
    """Runs (but ``run_id``) still 'running' after ``minutes``, each judged alive, dead or unknown;
    an interactive run (any age) whose kernel is gone, or silent for longer than its heartbeat
    allows, is abandoned."""
    from opsbook.run.interactive import STALE_AFTER_S

    here = socket.gethostname()
    found = []
    for r in runs.running_longer_than(conn, minutes, run_id):
        state, evidence = liveness(conn, r, here)
        if r["interactive"]:
            if state == "dead" or (state == "unknown" and float(r["silent_s"]) > STALE_AFTER_S):
                state = "abandoned"
                evidence = (
                    f"its kernel is gone: {evidence}"
                    if r["host"] == here
                    else (
                        f"no heartbeat from its kernel on {r['host']} since {ts(r['heartbeat_at'] or r['started_at'])}"
                    )
                )
            elif float(r["minutes"]) < minutes:
                continue  # a notebook still open, within the limit
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
                interactive=bool(r["interactive"]),
                window=r["window"],
            )
        )
    return found


def liveness(conn: psycopg.Connection, run: dict, here: str) -> tuple[str, str]:
    """``(alive | dead | unknown, why)`` for one run-log row (see the module docstring)."""
    session = conn.execute(
        """SELECT pid, application_name FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND strpos(application_name, %s) > 0 LIMIT 1""",
        (run["run_id"],),
    ).fetchone()
    if session:
        return "alive", f"its connection '{session[1]}' (backend {session[0]}) is open"
    lock = locks.held_by_run(conn, run["run_id"])
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
        return "dead", f"pid {run['pid']} now belongs to a process started {ts(started)}, after the run"
    return "alive", f"process {run['pid']} on {here} is running"


def mark_stuck(conn: psycopg.Connection, dead: list[RunningRun], run_id: str) -> None:
    """Mark failed each run judged dead, with a note naming the health run ``run_id``; a run
    that finished meanwhile is left alone."""
    for r in dead:
        last_seen = r.heartbeat_at or r.started_at
        note = f"marked failed by health run {run_id}: no process since {ts(last_seen)} ({r.evidence})"
        r.marked = runs.mark_failed(conn, r.run_id, note)
        r.note = note if r.marked else "finished on its own before it could be marked"


def mark_abandoned(conn: psycopg.Connection, gone: list[RunningRun], run_id: str) -> None:
    """Mark abandoned each interactive run whose kernel is gone, and list it in runs.jsonl and
    the index as such (not a failure: nothing it did is left half-made)."""
    from opsbook.run.publish import append_abandoned

    for r in gone:
        note = f"abandoned: {r.evidence} (found by health run {run_id}); it never reached its verdict"
        row = runs.mark_abandoned(conn, r.run_id, note)
        r.marked = row is not None
        r.note = note if r.marked else "finished on its own before it could be marked"
        if row is not None:
            append_abandoned(row, note)


# --- sessions --------------------------------------------------------------------------------


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


def long_queries(conn: psycopg.Connection, seconds: int) -> list[Session]:
    """Statements (or transactions left open) running longer than ``seconds`` in this database."""
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
    return [Session(p, u, a, s, float(sec), w or None, one_line(q)) for p, u, a, s, sec, w, q in rows]


def blocked_sessions(conn: psycopg.Connection) -> list[Blocked]:
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
        Blocked(p, app, one_line(q), float(waited or 0), lock, bp, bapp, bstate, one_line(bq))
        for p, app, q, waited, lock, bp, bapp, bstate, bq in rows
    ]


# --- the database ----------------------------------------------------------------------------


@dataclass
class Database:
    name: str
    size_bytes: int
    size: str
    connections: dict[str, int]  # client connections by state, whole server
    max_connections: int
    pending: list[dict]  # dual-write batches pending, per dataset and target

    @property
    def used(self) -> int:
        return sum(self.connections.values())


def database(conn: psycopg.Connection, pending_write_hours: float) -> Database:
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
    pending = writes.pending_summary(conn, pending_write_hours)
    return Database(name, int(size_bytes), size, {k: int(v) for k, v in connections.items()}, max_connections, pending)
