"""``opsbook.writes``: the dual-write ledger, one row per batch and target.

A row is 'pending' from the moment its batch is staged until a write to its target succeeds;
nothing is only logged. ``attempts`` counts the tries, ``last_error`` keeps the last failure
(redacted by the caller).
"""

from __future__ import annotations

import datetime as dt

import psycopg


def stage(
    conn: psycopg.Connection,
    dataset: str,
    batch_id: str,
    target: str,
    rows: int,
    first_day: dt.date | None,
    last_day: dt.date | None,
    staged_path: str,
) -> None:
    conn.execute(
        """INSERT INTO opsbook.writes (dataset, batch_id, target, status, rows, first_day, last_day, staged_path)
           VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s)
           ON CONFLICT (dataset, batch_id, target) DO UPDATE SET status = 'pending', rows = excluded.rows,
               first_day = excluded.first_day, last_day = excluded.last_day,
               staged_path = excluded.staged_path, updated_at = now()""",
        (dataset, batch_id, target, rows, first_day, last_day, staged_path),
    )


def record(
    conn: psycopg.Connection, dataset: str, batch_id: str, target: str, status: str, tried: bool, error: str | None
) -> int:
    """The outcome of one write (or of not trying it); returns the attempts so far. The error is
    redacted: it often quotes a URL of the store that failed."""
    from opsbook.run.redaction import redact

    error = redact(error) if error else error
    return conn.execute(
        """UPDATE opsbook.writes SET status = %s, attempts = attempts + %s, last_error = %s, updated_at = now()
           WHERE dataset = %s AND batch_id = %s AND target = %s RETURNING attempts""",
        (status, 1 if tried else 0, error, dataset, batch_id, target),
    ).fetchone()[0]


def pending_count(conn: psycopg.Connection, dataset: str, batch_id: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM opsbook.writes WHERE dataset = %s AND batch_id = %s AND status = 'pending'",
        (dataset, batch_id),
    ).fetchone()[0]


def succeeded(conn: psycopg.Connection, dataset: str, batch_ids: list[str]) -> dict[str, set[str]]:
    """Of ``batch_ids``, each one the ledger has written to some target: the targets written."""
    found: dict[str, set[str]] = {}
    for batch_id, target in conn.execute(
        "SELECT batch_id, target FROM opsbook.writes WHERE dataset = %s AND batch_id = ANY(%s) AND status = 'success'",
        (dataset, batch_ids),
    ).fetchall():
        found.setdefault(batch_id, set()).add(target)
    return found


def pending(conn: psycopg.Connection, dataset: str) -> list[dict]:
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        "SELECT batch_id, target, attempts, rows, first_day, last_day, last_error, updated_at FROM opsbook.writes "
        "WHERE dataset = %s AND status = 'pending' ORDER BY batch_id, target",
        (dataset,),
    )


def of_target(conn: psycopg.Connection, dataset: str, target: str, first: dt.date, last: dt.date) -> list[dict]:
    """The target's batches whose last day falls in ``first``..``last``: batch_id, status,
    attempts, last_error, last_day."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        "SELECT batch_id, status, attempts, last_error, last_day FROM opsbook.writes WHERE dataset = %s "
        "AND target = %s AND last_day BETWEEN %s AND %s ORDER BY batch_id",
        (dataset, target, first, last),
    )


def pending_summary(conn: psycopg.Connection, older_than_hours: float) -> list[dict]:
    """Pending writes per dataset and target: how many, how many older than the limit, the oldest,
    the most attempts and the latest error."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT dataset, target, count(*) AS pending,
                  count(*) FILTER (WHERE created_at < now() - make_interval(secs => %s)) AS older,
                  min(created_at) AS oldest, max(attempts) AS attempts,
                  (array_agg(last_error ORDER BY updated_at DESC))[1] AS last_error
           FROM opsbook.writes WHERE status = 'pending' GROUP BY dataset, target ORDER BY dataset, target""",
        (older_than_hours * 3600,),
    )
