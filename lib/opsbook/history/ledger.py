"""``opsbook.partitions``: the partition ledger.

Per dataset, partition and step: the parameters hash and input fingerprint of the last attempt,
its status (running, success, failed, interrupted), rows, run id, times and heartbeat. A step
holds the partition's advisory lock while it works, so an entry left 'running' whose lock is
free has no one behind it (:func:`recover_interrupted`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from opsbook.history import locks

HEARTBEAT_SECONDS = 10

_COLUMNS = """dataset, partition, step, status, params_hash, input_fingerprint, rows, rejected,
              checksum, table_oid, run_id, started_at, finished_at, error, source"""


@dataclass(frozen=True)
class Entry:
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
    source: str | None = None


def get(conn: psycopg.Connection, dataset: str, partition: str, step: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM opsbook.partitions WHERE dataset = %s AND partition = %s AND step = %s",
        (dataset, partition, step),
    ).fetchone()
    return Entry(*row) if row else None


def entries(conn: psycopg.Connection, dataset: str, step: str | None = None, status: str | None = None) -> list[Entry]:
    """The dataset's entries (of one step, of one status), by partition."""
    rows = conn.execute(
        f"""SELECT {_COLUMNS} FROM opsbook.partitions
            WHERE dataset = %s AND (%s::text IS NULL OR step = %s) AND (%s::text IS NULL OR status = %s)
            ORDER BY partition, step""",
        (dataset, step, step, status, status),
    ).fetchall()
    return [Entry(*row) for row in rows]


def running(
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


def success(
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
    source: str | None = None,
) -> None:
    conn.execute(
        """INSERT INTO opsbook.partitions (dataset, partition, step, status, params_hash,
               input_fingerprint, rows, rejected, checksum, table_oid, run_id, started_at,
               finished_at, heartbeat_at, error, source)
           VALUES (%s, %s, %s, 'success', %s, %s, %s, %s, %s, %s, %s, now(), now(), now(), NULL, %s)
           ON CONFLICT (dataset, partition, step) DO UPDATE SET status = 'success',
               params_hash = excluded.params_hash, input_fingerprint = excluded.input_fingerprint,
               rows = excluded.rows, rejected = excluded.rejected, checksum = excluded.checksum,
               table_oid = excluded.table_oid, run_id = excluded.run_id,
               finished_at = now(), heartbeat_at = now(), error = NULL, source = excluded.source""",
        (
            dataset,
            partition,
            step,
            params_hash,
            json.dumps(fingerprint),
            rows,
            rejected,
            checksum,
            table_oid,
            run_id,
            source,
        ),
    )


def failed(conn: psycopg.Connection, dataset: str, partition: str, step: str, run_id: str, error: str) -> None:
    from opsbook.run.redaction import redact

    conn.execute(
        """UPDATE opsbook.partitions SET status = 'failed', error = %s, finished_at = now()
           WHERE dataset = %s AND partition = %s AND step = %s AND run_id = %s""",
        (redact(error), dataset, partition, step, run_id),
    )


def mark_interrupted(conn: psycopg.Connection, entry: Entry, note: str) -> None:
    conn.execute(
        """UPDATE opsbook.partitions SET status = 'interrupted', finished_at = now(), error = %s
           WHERE dataset = %s AND partition = %s AND step = %s AND status = 'running' AND run_id = %s""",
        (note, entry.dataset, entry.partition, entry.step, entry.run_id),
    )


def interrupt_run(conn: psycopg.Connection, run_id: str, note: str) -> int:
    """Mark 'interrupted' every entry of ``run_id`` still 'running'; returns how many."""
    return conn.execute(
        """UPDATE opsbook.partitions SET status = 'interrupted', finished_at = now(), error = %s
           WHERE run_id = %s AND status = 'running'""",
        (note, run_id),
    ).rowcount


def recover_interrupted(conn: psycopg.Connection, dataset: str) -> list[Entry]:
    """Mark 'interrupted' every 'running' entry of ``dataset`` whose worker is gone.

    A partition step holds its advisory lock for as long as it runs, and PostgreSQL drops the
    lock with the session, however the process ended (kill -9 included): an entry still
    'running' whose lock is free has no one behind it.
    """
    found = []
    for entry in entries(conn, dataset, status="running"):
        if locks.lock_is_free(conn, locks.partition_lock(entry.step, entry.dataset, entry.partition)):
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


def forget_table(conn: psycopg.Connection, table_oid: int) -> list[tuple[str, str, str]]:
    """Delete the entries of a partition table that is being dropped (in the caller's
    transaction), so a later load of that partition loads it again; returns what was forgotten."""
    return [
        tuple(r)
        for r in conn.execute(
            "DELETE FROM opsbook.partitions WHERE table_oid = %s RETURNING dataset, partition, step", (table_oid,)
        ).fetchall()
    ]


def entries_of_table(conn: psycopg.Connection, table_oid: int) -> list[tuple[str, str, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT dataset, partition, step FROM opsbook.partitions WHERE table_oid = %s ORDER BY step", (table_oid,)
        ).fetchall()
    ]


class Heartbeat:
    """Marks a ledger entry alive every HEARTBEAT_SECONDS while its partition step works; in a
    pool worker, stops the work (Interrupted) once the process that started it is gone."""

    def __init__(self, conn: psycopg.Connection, dataset: str, partition: str, step: str):
        self.conn, self.key = conn, (dataset, partition, step)
        self.last = time.monotonic()

    def __call__(self) -> None:
        from opsbook.run import process

        process.stop_if_orphaned()
        if time.monotonic() - self.last < HEARTBEAT_SECONDS:
            return
        self.conn.execute(
            "UPDATE opsbook.partitions SET heartbeat_at = now() WHERE dataset = %s AND partition = %s AND step = %s",
            self.key,
        )
        self.last = time.monotonic()
