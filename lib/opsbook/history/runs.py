"""``opsbook.runs``: one row per run (headless or interactive), and where it ran.

Written by the runner for headless runs and by the kernel for runs started in JupyterLab; read
by ``health`` (lag, failures, stuck runs) and its escalation bundle.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import subprocess
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from opsbook import __version__, config

# what the escalation bundle's runs.csv holds, in this order
COLUMNS = (
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
        # the notebooks' nbstripout filter would start a Python per notebook git re-reads (a
        # fresh checkout's are all re-read until its index is rewritten): compared as they are,
        # a notebook saved with outputs counts as a change, which it is
        dirty = subprocess.run(
            ["git", "-c", "filter.nbstripout.clean=cat", "status", "--porcelain", "--untracked-files=no"],
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


def start(
    conn: psycopg.Connection,
    run_id: str,
    procedure: str,
    dataset: str | None,
    window: str | None,
    params: dict[str, Any],
    interactive: bool = False,
) -> None:
    """The run's row, status 'running' (a second start of the same run id changes nothing)."""
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


def finish(
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
    only_running: bool = False,
) -> None:
    """The run's end; with ``only_running``, only if nothing (health) has ended its row first."""
    from opsbook.run.redaction import redact

    error = redact(error) if error else error
    conn.execute(
        """UPDATE opsbook.runs SET status = %s, exit_code = %s, finished_at = now(),
               rows_in = coalesce(%s, rows_in), rows_out = coalesce(%s, rows_out),
               rows_rejected = coalesce(%s, rows_rejected), error = %s,
               report_path = coalesce(%s, report_path), html_path = coalesce(%s, html_path)
           WHERE run_id = %s AND (NOT %s OR status = 'running')""",
        (status, exit_code, rows_in, rows_out, rows_rejected, error, report_path, html_path, run_id, only_running),
    )


def get(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    from opsbook.stores.postgres import dicts

    rows = dicts(conn, "SELECT * FROM opsbook.runs WHERE run_id = %s", (run_id,))
    return rows[0] if rows else None


# --- what health reads -------------------------------------------------------------------------


def last_completed(conn: psycopg.Connection, statuses: list[str], exclude: str) -> list[dict]:
    """The newest run of each procedure and dataset whose status is in ``statuses``."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT DISTINCT ON (procedure, dataset) procedure, dataset, coalesce(finished_at, started_at) AS at
           FROM opsbook.runs WHERE status = ANY(%s) AND procedure <> %s
           ORDER BY procedure, dataset, coalesce(finished_at, started_at) DESC""",
        (statuses, exclude),
    )


def procedures_seen(conn: psycopg.Connection, exclude: str) -> set[tuple[str, str | None]]:
    return {
        tuple(r)
        for r in conn.execute(
            "SELECT DISTINCT procedure, dataset FROM opsbook.runs WHERE procedure <> %s", (exclude,)
        ).fetchall()
    }


def ended_since(conn: psycopg.Connection, exclude: str, now: dt.datetime, days: int) -> list[dict]:
    """Runs (but ``exclude``'s) that ended, or started, in the ``days`` before ``now``, oldest first."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT procedure, dataset, "window", status, started_at, coalesce(finished_at, started_at) AS at,
                  rows_out, error
           FROM opsbook.runs
           WHERE procedure <> %s AND coalesce(finished_at, started_at) > %s - make_interval(days => %s)
           ORDER BY coalesce(finished_at, started_at)""",
        (exclude, now, days),
    )


def per_day(conn: psycopg.Connection, days: int, exclude_run: str) -> list[dict]:
    """Runs started per UTC day and status over the last ``days`` days."""
    rows = conn.execute(
        """SELECT to_char(date_trunc('day', started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD') AS day, status, count(*)
           FROM opsbook.runs
           WHERE started_at > now() - make_interval(days => %s) AND run_id <> %s
           GROUP BY 1, 2 ORDER BY 1, 2""",
        (days, exclude_run),
    ).fetchall()
    return [{"day": d, "status": s, "runs": int(n)} for d, s, n in rows]


def running_longer_than(conn: psycopg.Connection, minutes: int, exclude_run: str) -> list[dict]:
    """Runs 'running' for over ``minutes``, and every interactive run still 'running' (one whose
    kernel is gone is abandoned at any age)."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT run_id, procedure, dataset, "window", host, pid, started_at, heartbeat_at, interactive,
                  extract(epoch FROM now() - started_at) / 60 AS minutes,
                  extract(epoch FROM now() - coalesce(heartbeat_at, started_at)) AS silent_s
           FROM opsbook.runs
           WHERE status = 'running' AND run_id <> %s AND (started_at < now() - make_interval(mins => %s) OR interactive)
           ORDER BY started_at""",
        (exclude_run, minutes),
    )


def mark_failed(conn: psycopg.Connection, run_id: str, note: str) -> bool:
    """Mark a run still 'running' failed, appending ``note`` to its error; False when it had
    finished meanwhile (then it is left alone)."""
    from opsbook.run.redaction import redact

    note = redact(note)
    row = conn.execute(
        """UPDATE opsbook.runs SET status = 'failed', finished_at = now(),
               error = CASE WHEN error IS NULL THEN %s ELSE error || E'\\n' || %s END
           WHERE run_id = %s AND status = 'running' RETURNING run_id""",
        (note, note, run_id),
    ).fetchone()
    return bool(row)


def heartbeat(conn: psycopg.Connection, run_id: str) -> None:
    """The run is alive (an interactive run's kernel beats while it is open)."""
    conn.execute("UPDATE opsbook.runs SET heartbeat_at = now() WHERE run_id = %s AND status = 'running'", (run_id,))


def mark_abandoned(conn: psycopg.Connection, run_id: str, note: str) -> dict | None:
    """Mark an interactive run still 'running' abandoned (its kernel is gone); returns its row,
    or None when it had finished meanwhile."""
    from opsbook.run.redaction import redact
    from opsbook.stores.postgres import dicts

    rows = dicts(
        conn,
        """UPDATE opsbook.runs SET status = 'abandoned', finished_at = now(), error = %s
           WHERE run_id = %s AND status = 'running' AND interactive RETURNING *""",
        (redact(note), run_id),
    )
    return rows[0] if rows else None


def sign_off(conn: psycopg.Connection, run_id: str, by: str, at: str, comment: str, sha256: str) -> bool:
    """A lead's sign-off of the run's report; False when the log has no such run."""
    row = conn.execute(
        """UPDATE opsbook.runs SET signed_off_by = %s, signed_off_at = %s, signoff_comment = %s,
               signoff_sha256 = %s WHERE run_id = %s RETURNING run_id""",
        (by, at, comment, sha256, run_id),
    ).fetchone()
    return row is not None


def recent(conn: psycopg.Connection, hours: int) -> list[dict]:
    """Every column of the runs started in the last ``hours`` hours, and of any still running."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        sql.SQL(
            "SELECT {} FROM opsbook.runs WHERE started_at > now() - make_interval(hours => %s) "
            "OR status = 'running' ORDER BY started_at DESC"
        ).format(sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)),
        (hours,),
    )
