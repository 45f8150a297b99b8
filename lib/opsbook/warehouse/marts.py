"""Step 4, the marts: refresh the materialized views, only after a passing checkpoint of the
core they read (the runbook's "Rehydrate a Mart by Refreshing Materialized Views").

Under the warehouse lock, the refresh first compares the version of core with the one the
checkpoint saw; when another run changed core in between, the checkpoint is run again over the
same window, and a failure leaves the marts as they were. Views are refreshed CONCURRENTLY, so
readers are never blocked; a view never populated gets a plain REFRESH, which PostgreSQL
requires the first time (https://www.postgresql.org/docs/15/sql-refreshmaterializedview.html).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from opsbook.warehouse import checkpoint as checks
from opsbook.warehouse import schema

# materialized view -> its date column, for the before/after figures
MARTS = {"mart.daily_weather_aggregates": "observation_date"}


@dataclass(frozen=True)
class MartState:
    populated: bool
    rows: int | None = None
    first: dt.date | None = None
    last: dt.date | None = None


@dataclass(frozen=True)
class MartRefresh:
    view: str
    before: MartState
    after: MartState | None = None  # None: not refreshed
    mode: str = ""  # "concurrently", "first population" or "" when not refreshed
    seconds: float = 0.0


def _view(name: str) -> sql.Identifier:
    schema_name, view = name.split(".")
    return sql.Identifier(schema_name, view)


def mart_state(conn: psycopg.Connection, name: str) -> MartState:
    schema_name, view = name.split(".")
    row = conn.execute(
        "SELECT ispopulated FROM pg_matviews WHERE schemaname = %s AND matviewname = %s", (schema_name, view)
    ).fetchone()
    if not row or not row[0]:
        return MartState(False)
    rows, first, last = conn.execute(
        sql.SQL("SELECT count(*), min({d}), max({d}) FROM {v}").format(d=sql.Identifier(MARTS[name]), v=_view(name))
    ).fetchone()
    return MartState(True, rows, first, last)


def left_alone(conn: psycopg.Connection) -> list[MartRefresh]:
    """Every view as it stands, not refreshed."""
    return [MartRefresh(name, mart_state(conn, name)) for name in MARTS]


def refresh(conn: psycopg.Connection, name: str) -> MartRefresh:
    """Refresh one view; ``conn`` must be in autocommit (CONCURRENTLY cannot run in a transaction)."""
    before = mart_state(conn, name)
    concurrently = sql.SQL("CONCURRENTLY ") if before.populated else sql.SQL("")
    started = time.monotonic()
    conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(concurrently, _view(name)))
    mode = "concurrently" if before.populated else "first population"
    return MartRefresh(name, before, mart_state(conn, name), mode, time.monotonic() - started)


def refresh_checked(
    conn: psycopg.Connection, checked: checks.Checkpoint, max_incomplete_days: float, progress=lambda *a, **k: None
) -> tuple[checks.Checkpoint, list[MartRefresh]]:
    """Refresh every view when ``checked`` passed and still describes core (else check again);
    returns the checkpoint the decision rests on and the views. Hold the warehouse lock."""
    if schema.core_version(conn) != checked.core_version:
        progress("core changed since the checkpoint: checking again")
        checked = checks.checkpoint(conn, checked.days, max_incomplete_days)
        checked.repeated = True
    if not checked.passed:
        return checked, left_alone(conn)
    done = []
    for name in MARTS:
        done.append(refresh(conn, name))
        last = done[-1]
        progress(f"refreshed {name} ({last.mode}): {last.after.rows:,} rows in {last.seconds:.2f} s")
    return checked, done


def daily_rows(conn: psycopg.Connection, first: dt.date, last: dt.date) -> list[dict]:
    """The daily aggregates of the window, for the report's chart."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT location_name AS location, observation_date AS date, min_temperature_celsius,
                  max_temperature_celsius, avg_temperature_celsius::float8 AS avg_temperature_celsius,
                  total_precipitation_mm::float8 AS total_precipitation_mm, observation_count
           FROM mart.daily_weather_aggregates WHERE observation_date BETWEEN %s AND %s
           ORDER BY location_name, observation_date""",
        (first, last),
    )
