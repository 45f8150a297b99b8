"""Advisory locks, and ``opsbook.locks``: who took each one, for the message a waiting run prints.

The lock itself is PostgreSQL's (``pg_try_advisory_lock`` on a hash of its key), released when
the session ends however it ends (kill -9 included). Keys are built by :func:`key` only, so
every procedure names its locks alike: ``opsbook.<what>:<dataset>[:<partition>]``.
"""

from __future__ import annotations

import os

import psycopg


def key(what: str, *scope: str) -> str:
    """The key of a lock: ``key("load", "toronto_parking_tickets", "2016")`` ->
    ``"opsbook.load:toronto_parking_tickets:2016"``."""
    return ":".join([f"opsbook.{what}", *(str(s) for s in scope)])


def partition_lock(step: str, dataset: str, partition: str) -> str:
    """The lock a step holds on one partition while it works on it."""
    return key(step, dataset, partition)


# the session holding an advisory lock, in pg_locks (the 64-bit key split into classid, objid)
_HELD = """l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)"""


def try_lock(conn: psycopg.Connection, lock: str, holder: str) -> None:
    """Take the session advisory lock ``lock`` on ``conn``, or raise LockHeld naming its holder."""
    from opsbook.errors import LockHeld
    from opsbook.history.runs import origin

    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock,)).fetchone()[0]
    if not got:
        raise LockHeld(f"{lock} is held by {holder_of(conn, lock)}")
    where = origin()
    conn.execute(
        """INSERT INTO opsbook.locks (key, holder, host, pid, backend_pid, acquired_at)
           VALUES (%s, %s, %s, %s, pg_backend_pid(), now())
           ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, host = excluded.host,
               pid = excluded.pid, backend_pid = excluded.backend_pid, acquired_at = excluded.acquired_at""",
        (lock, holder, where.host, os.getpid()),
    )


def holder_of(conn: psycopg.Connection, lock: str) -> str:
    """Who holds ``lock``: the run recorded in opsbook.locks (run, host, pid, time) when the
    session holding it in pg_locks is the one that recorded it, else that session itself (a
    holder that has just taken the lock may not have recorded itself yet: pg_locks is the truth)."""
    session = conn.execute(
        f"""SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)
            WHERE {_HELD} LIMIT 1""",
        (lock,),
    ).fetchone()
    row = conn.execute(
        "SELECT holder, host, pid, acquired_at, backend_pid FROM opsbook.locks WHERE key = %s", (lock,)
    ).fetchone()
    recorded = f"{row[0]} on {row[1]} (pid {row[2]}) since {row[3]:%Y-%m-%d %H:%M:%S %Z}" if row else None
    if session is None or (row and row[4] == session[1]):
        return recorded or "a session"
    name = f"'{session[0]}'" if session[0] else "without a name"
    return f"a session {name} (PostgreSQL pid {session[1]}, connected {session[2]:%Y-%m-%d %H:%M:%S %Z})"


def lock_is_free(conn: psycopg.Connection, lock: str) -> bool:
    """Whether no session holds ``lock``, read from pg_locks and never by taking it: two runs
    probing at once would each see the other's probe as the holder and both be refused."""
    return conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM pg_locks l WHERE {_HELD})", (lock,)).fetchone()[0]


def unlock(conn: psycopg.Connection, lock: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock,))


def held_by_run(conn: psycopg.Connection, run_id: str) -> tuple[str, int] | None:
    """A lock recorded for ``run_id`` that a session still holds: ``(key, backend pid)``, or None."""
    return conn.execute(
        """SELECT k.key, l.pid FROM opsbook.locks k
           JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(k.key, 0)
           WHERE strpos(k.holder, %s) > 0 LIMIT 1""",
        (run_id,),
    ).fetchone()
