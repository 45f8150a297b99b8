"""Run history in the ``opsbook`` schema of the target database.

``opsbook.runs``        one row per run: what ran, with which parameters, how it ended.
``opsbook.partitions``  the partition ledger: per dataset, partition and step, what was
                        loaded from which inputs, with which result.

Rows never hold a secret: parameters are redacted before they are written.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg

from opsbook import __version__, config
from opsbook.errors import LockHeld

SCHEMA_VERSION = 3

DDL = """
CREATE SCHEMA IF NOT EXISTS opsbook;
CREATE TABLE IF NOT EXISTS opsbook.runs (
    run_id          text PRIMARY KEY,
    procedure       text NOT NULL,
    dataset         text,
    "window"        text,
    params          jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL CHECK (status IN ('running', 'success', 'warn', 'failed')),
    exit_code       integer,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    heartbeat_at    timestamptz,
    rows_in         bigint,
    rows_out        bigint,
    rows_rejected   bigint,
    error           text,
    report_path     text,
    html_path       text,
    host            text,
    os_user         text,
    git_revision    text,
    opsbook_version text,
    interactive     boolean NOT NULL DEFAULT false
);
-- the process that keeps the row: the runner (headless) or the kernel (interactive); with host,
-- it tells a run still going from one whose process died (see opsbook.procedures.health)
ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS pid integer;
CREATE INDEX IF NOT EXISTS runs_started_idx ON opsbook.runs (started_at DESC);
CREATE INDEX IF NOT EXISTS runs_procedure_idx ON opsbook.runs (procedure, dataset, started_at DESC);
CREATE TABLE IF NOT EXISTS opsbook.partitions (
    dataset           text NOT NULL,
    partition         text NOT NULL,
    step              text NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'success', 'failed', 'interrupted')),
    params_hash       text,
    input_fingerprint jsonb,
    rows              bigint,
    rejected          bigint,
    checksum          text,
    table_oid         bigint,
    run_id            text,
    started_at        timestamptz,
    finished_at       timestamptz,
    heartbeat_at      timestamptz,
    error             text,
    PRIMARY KEY (dataset, partition, step)
);
CREATE TABLE IF NOT EXISTS opsbook.locks (
    key         text PRIMARY KEY,
    holder      text NOT NULL,
    host        text,
    pid         integer,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
-- the PostgreSQL session that took the lock: tells the recorded holder from a newer one
ALTER TABLE opsbook.locks ADD COLUMN IF NOT EXISTS backend_pid integer;
CREATE TABLE IF NOT EXISTS opsbook.meta (key text PRIMARY KEY, value text NOT NULL);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the opsbook schema and tables once per database (idempotent, race-safe)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.schema'))")
        exists = conn.execute("SELECT to_regclass('opsbook.meta')").fetchone()[0]
        if exists:
            row = conn.execute("SELECT value FROM opsbook.meta WHERE key = 'schema_version'").fetchone()
            if row and int(row[0]) >= SCHEMA_VERSION:
                return
        conn.execute(DDL)
        conn.execute(
            "INSERT INTO opsbook.meta VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )


# --- where a run happens --------------------------------------------------------------------


@cache
def git_revision() -> str:
    """The project's git revision, with ``+dirty`` when the work tree has changes."""
    root = config.project_root()
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class Origin:
    host: str
    os_user: str
    git_revision: str
    opsbook_version: str


def origin() -> Origin:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Origin(socket.gethostname(), user, git_revision(), __version__)


# --- runs ------------------------------------------------------------------------------------


def start_run(
    conn: psycopg.Connection,
    run_id: str,
    procedure: str,
    dataset: str | None,
    window: str | None,
    params: dict[str, Any],
    interactive: bool = False,
) -> None:
    where = origin()
    conn.execute(
        """INSERT INTO opsbook.runs (run_id, procedure, dataset, "window", params, status, started_at,
               heartbeat_at, host, pid, os_user, git_revision, opsbook_version, interactive)
           VALUES (%s, %s, %s, %s, %s, 'running', now(), now(), %s, %s, %s, %s, %s, %s)
           ON CONFLICT (run_id) DO NOTHING""",
        (
            run_id,
            procedure,
            dataset,
            window,
            json.dumps(params),
            where.host,
            os.getpid(),
            where.os_user,
            where.git_revision,
            where.opsbook_version,
            interactive,
        ),
    )


def finish_run(
    conn: psycopg.Connection,
    run_id: str,
    status: str,
    exit_code: int | None,
    rows_in: int | None = None,
    rows_out: int | None = None,
    rows_rejected: int | None = None,
    error: str | None = None,
    report_path: str | None = None,
    html_path: str | None = None,
) -> None:
    conn.execute(
        """UPDATE opsbook.runs SET status = %s, exit_code = %s, finished_at = now(),
               rows_in = coalesce(%s, rows_in), rows_out = coalesce(%s, rows_out),
               rows_rejected = coalesce(%s, rows_rejected), error = %s,
               report_path = coalesce(%s, report_path), html_path = coalesce(%s, html_path)
           WHERE run_id = %s""",
        (status, exit_code, rows_in, rows_out, rows_rejected, error, report_path, html_path, run_id),
    )


def get_run(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    from opsbook.stores.postgres import dicts

    rows = dicts(conn, "SELECT * FROM opsbook.runs WHERE run_id = %s", (run_id,))
    return rows[0] if rows else None


# --- partition ledger -----------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    dataset: str
    partition: str
    step: str
    status: str
    params_hash: str | None
    input_fingerprint: Any
    rows: int | None
    rejected: int | None
    checksum: str | None
    table_oid: int | None
    run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


def ledger_get(conn: psycopg.Connection, dataset: str, partition: str, step: str) -> LedgerEntry | None:
    row = conn.execute(
        """SELECT dataset, partition, step, status, params_hash, input_fingerprint, rows, rejected,
                  checksum, table_oid, run_id, started_at, finished_at, error
           FROM opsbook.partitions WHERE dataset = %s AND partition = %s AND step = %s""",
        (dataset, partition, step),
    ).fetchone()
    return LedgerEntry(*row) if row else None


def ledger_running(
    conn: psycopg.Connection, dataset: str, partition: str, step: str, run_id: str, params_hash: str, fingerprint: Any
) -> None:
    conn.execute(
        """INSERT INTO opsbook.partitions (dataset, partition, step, status, params_hash,
               input_fingerprint, run_id, started_at, heartbeat_at, finished_at, error)
           VALUES (%s, %s, %s, 'running', %s, %s, %s, now(), now(), NULL, NULL)
           ON CONFLICT (dataset, partition, step) DO UPDATE SET status = 'running',
               run_id = excluded.run_id, started_at = now(), heartbeat_at = now(),
               finished_at = NULL, error = NULL""",
        (dataset, partition, step, params_hash, json.dumps(fingerprint), run_id),
    )


def ledger_success(
    conn: psycopg.Connection,
    dataset: str,
    partition: str,
    step: str,
    run_id: str,
    params_hash: str,
    fingerprint: Any,
    rows: int,
    rejected: int,
    checksum: str | None,
    table_oid: int | None,
) -> None:
    conn.execute(
        """INSERT INTO opsbook.partitions (dataset, partition, step, status, params_hash,
               input_fingerprint, rows, rejected, checksum, table_oid, run_id, started_at,
               finished_at, heartbeat_at, error)
           VALUES (%s, %s, %s, 'success', %s, %s, %s, %s, %s, %s, %s, now(), now(), now(), NULL)
           ON CONFLICT (dataset, partition, step) DO UPDATE SET status = 'success',
               params_hash = excluded.params_hash, input_fingerprint = excluded.input_fingerprint,
               rows = excluded.rows, rejected = excluded.rejected, checksum = excluded.checksum,
               table_oid = excluded.table_oid, run_id = excluded.run_id,
               finished_at = now(), heartbeat_at = now(), error = NULL""",
        (dataset, partition, step, params_hash, json.dumps(fingerprint), rows, rejected, checksum, table_oid, run_id),
    )


def ledger_failed(conn: psycopg.Connection, dataset: str, partition: str, step: str, run_id: str, error: str) -> None:
    conn.execute(
        """UPDATE opsbook.partitions SET status = 'failed', error = %s, finished_at = now()
           WHERE dataset = %s AND partition = %s AND step = %s AND run_id = %s""",
        (error, dataset, partition, step, run_id),
    )


def running_entries(conn: psycopg.Connection, dataset: str) -> list[LedgerEntry]:
    rows = conn.execute(
        """SELECT dataset, partition, step, status, params_hash, input_fingerprint, rows, rejected,
                  checksum, table_oid, run_id, started_at, finished_at, error
           FROM opsbook.partitions WHERE dataset = %s AND status = 'running' ORDER BY partition, step""",
        (dataset,),
    ).fetchall()
    return [LedgerEntry(*row) for row in rows]


def mark_interrupted(conn: psycopg.Connection, entry: LedgerEntry, note: str) -> None:
    conn.execute(
        """UPDATE opsbook.partitions SET status = 'interrupted', finished_at = now(), error = %s
           WHERE dataset = %s AND partition = %s AND step = %s AND status = 'running' AND run_id = %s""",
        (note, entry.dataset, entry.partition, entry.step, entry.run_id),
    )


def recover_interrupted(conn: psycopg.Connection, dataset: str) -> list[LedgerEntry]:
    """Mark 'interrupted' every 'running' entry of ``dataset`` whose worker is gone.

    A partition step holds its advisory lock for as long as it runs, and PostgreSQL drops the
    lock with the session, however the process ended (kill -9 included): an entry still
    'running' whose lock is free has no one behind it.
    """
    found = []
    for entry in running_entries(conn, dataset):
        if lock_is_free(conn, partition_lock(entry.step, entry.dataset, entry.partition)):
            last = conn.execute(
                "SELECT heartbeat_at FROM opsbook.partitions WHERE dataset = %s AND partition = %s AND step = %s",
                (entry.dataset, entry.partition, entry.step),
            ).fetchone()[0]
            mark_interrupted(
                conn,
                entry,
                f"run {entry.run_id} stopped without finishing (last heartbeat {last:%Y-%m-%d %H:%M:%S %Z})",
            )
            found.append(entry)
    return found


HEARTBEAT_SECONDS = 10
_coordinator_pid: int | None = None


def watch_coordinator(pid: int) -> None:
    """In a pool worker: die with the process that started it, and never commit for a dead one."""
    global _coordinator_pid
    _coordinator_pid = pid
    die_with_parent()


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG).

    A headless run's kernel calls it, so that killing the runner (cron's timeout, kill -9)
    stops the work at once instead of letting it run on unseen. Elsewhere it does nothing.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class Heartbeat:
    """Marks a ledger entry alive every HEARTBEAT_SECONDS while its partition step works."""

    def __init__(self, conn: psycopg.Connection, dataset: str, partition: str, step: str):
        self.conn, self.key = conn, (dataset, partition, step)
        self.last = time.monotonic()

    def __call__(self) -> None:
        if _coordinator_pid is not None and os.getppid() != _coordinator_pid:
            from opsbook.errors import Interrupted

            raise Interrupted("the process that started this partition is gone; stopping without committing")
        if time.monotonic() - self.last < HEARTBEAT_SECONDS:
            return
        self.conn.execute(
            "UPDATE opsbook.partitions SET heartbeat_at = now() WHERE dataset = %s AND partition = %s AND step = %s",
            self.key,
        )
        self.last = time.monotonic()


# --- locks -----------------------------------------------------------------------------------


def try_lock(conn: psycopg.Connection, key: str, holder: str) -> None:
    """Take the session advisory lock ``key`` on ``conn``, or raise LockHeld naming its holder.

    The lock itself is PostgreSQL's (released when the session ends, however it ends);
    ``opsbook.locks`` only remembers who took it last, for the message a waiting run prints.
    """
    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]
    if not got:
        raise LockHeld(f"{key} is held by {holder_of(conn, key)}")
    where = origin()
    conn.execute(
        """INSERT INTO opsbook.locks (key, holder, host, pid, backend_pid, acquired_at)
           VALUES (%s, %s, %s, %s, pg_backend_pid(), now())
           ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, host = excluded.host,
               pid = excluded.pid, backend_pid = excluded.backend_pid, acquired_at = excluded.acquired_at""",
        (key, holder, where.host, os.getpid()),
    )


def holder_of(conn: psycopg.Connection, key: str) -> str:
    """Who holds the lock ``key``: the run recorded in opsbook.locks (run, host, pid, time) when
    the session holding it in pg_locks is the one that recorded it, else that session itself (a
    holder that has just taken the lock may not have recorded itself yet: pg_locks is the truth)."""
    session = conn.execute(
        """SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)
           LIMIT 1""",
        (key,),
    ).fetchone()
    row = conn.execute(
        "SELECT holder, host, pid, acquired_at, backend_pid FROM opsbook.locks WHERE key = %s", (key,)
    ).fetchone()
    recorded = f"{row[0]} on {row[1]} (pid {row[2]}) since {row[3]:%Y-%m-%d %H:%M:%S %Z}" if row else None
    if session is None or (row and row[4] == session[1]):
        return recorded or "a session"
    name = f"'{session[0]}'" if session[0] else "without a name"
    return f"a session {name} (PostgreSQL pid {session[1]}, connected {session[2]:%Y-%m-%d %H:%M:%S %Z})"


def partition_lock(step: str, dataset: str, partition: str) -> str:
    """The advisory lock a step holds on one partition while it works on it."""
    return f"opsbook.{step}:{dataset}:{partition}"


def lock_is_free(conn: psycopg.Connection, key: str) -> bool:
    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()[0]
    if got:
        unlock(conn, key)
    return bool(got)


def unlock(conn: psycopg.Connection, key: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
