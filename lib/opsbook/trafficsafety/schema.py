"""The traffic-safety tables as the migration runbook lays them out (Tasks 1.2, 1.6, 5.1-5.3).

==========================  ===========================================================================
role (spec ``tables``)      table (default name)
==========================  ===========================================================================
(the spec's ``table``)      ``safety_indices_realtime``: every reading, partitioned by UTC day
                            (``<table>_pYYYYMMDD``), unique on (intersection_id, timestamp), kept 48 h
``hourly``                  ``safety_indices_hourly``: per intersection and hour (Task 5.1), kept 90 days
``daily``                   ``safety_indices_daily``: per intersection and local day, from the hourly
                            rows, with the peak hour (Task 5.2), kept for good
``intersections``           ``intersections``: with a PostGIS point ``geometry`` where PostGIS exists
``normalization_constants`` ``normalization_constants``: the index scaling per intersection
``quality_log``             ``data_quality_log``: every procedure's findings, one row per check
==========================  ===========================================================================

The runbook's columns come first, with its names; opsbook's own additions (the intervals a
rollup counted, the local time zone of a day) follow. A team whose tables have other names maps
them in the dataset spec. Everything here is idempotent: ``CREATE ... IF NOT EXISTS`` under an
advisory lock, so concurrent first runs do not race.

Realtime partitions are made ahead of the data (:func:`ensure_partitions`): the team's collector
inserts into the parent table, and a reading whose day has no partition is refused by
PostgreSQL, so ``health`` fails when tomorrow's is missing. There is no DEFAULT partition: a
day's rows always sit in that day's partition, which retention drops whole.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.stores import postgres
from opsbook.stores.postgres import ident

DEFAULTS = {
    "hourly": "safety_indices_hourly",
    "daily": "safety_indices_daily",
    "intersections": "intersections",
    "normalization_constants": "normalization_constants",
    "quality_log": "data_quality_log",
}
INTERVAL_MINUTES = 15  # the index files' time_15min: one reading per intersection and 15 minutes


@dataclass(frozen=True)
class Names:
    """The dataset's tables, by role."""

    realtime: str
    hourly: str
    daily: str
    intersections: str
    normalization_constants: str
    quality_log: str


def names(spec: DatasetSpec) -> Names:
    return Names(spec.table, **{role: spec.table_of(role, default) for role, default in DEFAULTS.items()})


REALTIME = """
CREATE TABLE IF NOT EXISTS {realtime} (
    id bigserial,
    {columns},
    PRIMARY KEY ({key})
) PARTITION BY RANGE ({partition_column})"""

ROLLUPS = """
CREATE TABLE IF NOT EXISTS {hourly} (
    intersection_id integer NOT NULL,
    hour_timestamp timestamptz NOT NULL,
    avg_si double precision, min_si double precision, max_si double precision, std_si double precision,
    total_volume bigint, avg_volume double precision,
    high_risk_minutes integer NOT NULL,
    data_quality_score double precision NOT NULL,
    intervals integer NOT NULL,
    si_intervals integer NOT NULL,
    avg_vru double precision, avg_vehicle double precision,
    PRIMARY KEY (intersection_id, hour_timestamp));
CREATE INDEX IF NOT EXISTS {hourly_time} ON {hourly} (hour_timestamp);
CREATE TABLE IF NOT EXISTS {daily} (
    intersection_id integer NOT NULL,
    date date NOT NULL,
    avg_si double precision, min_si double precision, max_si double precision,
    total_volume bigint,
    high_risk_minutes integer NOT NULL,
    data_quality_score double precision NOT NULL,
    peak_hour integer, peak_si double precision,
    timezone text NOT NULL,
    hours_with_data integer NOT NULL,
    intervals integer NOT NULL,
    expected_intervals integer NOT NULL,
    peak_hour_timestamp timestamptz,
    PRIMARY KEY (intersection_id, date));
CREATE INDEX IF NOT EXISTS {daily_date} ON {daily} (date);
CREATE TABLE IF NOT EXISTS {normalization_constants} (
    intersection_id integer NOT NULL,
    index_name text NOT NULL,
    mean double precision, std double precision,
    sample_size bigint,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (intersection_id, index_name));
CREATE TABLE IF NOT EXISTS {quality_log} (
    id bigserial PRIMARY KEY,
    logged_at timestamptz NOT NULL DEFAULT now(),
    run_id text,
    procedure text NOT NULL,
    dataset text,
    check_name text NOT NULL,
    status text NOT NULL,
    observed text,
    details jsonb NOT NULL DEFAULT '{{}}');
CREATE INDEX IF NOT EXISTS {quality_log_time} ON {quality_log} (logged_at DESC);
"""


def ensure(conn, spec: DatasetSpec) -> Names:
    """Every table of the dataset (idempotent), the intersections with their PostGIS point where
    the database has PostGIS. ``conn`` is in autocommit mode."""
    from opsbook import datasets

    n = names(spec)
    intersections = datasets.get("intersections").model_copy(update={"table": n.intersections})
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"opsbook.ddl.{spec.name}",))
        conn.execute(
            sql.SQL(REALTIME).format(
                realtime=ident(n.realtime),
                columns=postgres.column_definitions(spec),
                key=sql.SQL(", ").join(ident(k) for k in spec.key),
                partition_column=ident(spec.partition.column),
            )
        )
        conn.execute(
            sql.SQL(ROLLUPS).format(
                **{role: ident(getattr(n, role)) for role in DEFAULTS if role != "intersections"},
                hourly_time=ident(f"{n.hourly}_time_idx"[:63]),
                daily_date=ident(f"{n.daily}_date_idx"[:63]),
                quality_log_time=ident(f"{n.quality_log}_time_idx"[:63]),
            )
        )
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                ident(n.intersections),
                postgres.column_definitions(intersections),
                sql.SQL(", ").join(ident(k) for k in intersections.key),
            )
        )
        if postgres.has_postgis(conn):
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS geometry geometry(Point, 4326)").format(
                    ident(n.intersections)
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist (geometry)").format(
                    ident(f"{n.intersections}_geometry_idx"[:63]), ident(n.intersections)
                )
            )
    return n


# --- realtime partitions ---------------------------------------------------------------------


def partition_name(spec: DatasetSpec, day: dt.date) -> str:
    return f"{spec.table[:52]}_p{day:%Y%m%d}"


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return start, start + dt.timedelta(days=1)


def day_check(spec: DatasetSpec, day: dt.date) -> sql.Composed:
    """The CHECK that lets ATTACH PARTITION skip its validation scan."""
    column = ident(spec.partition.column)
    start, end = day_bounds(day)
    return sql.SQL("{} IS NOT NULL AND {} >= {} AND {} < {}").format(
        column, column, sql.Literal(start), column, sql.Literal(end)
    )


def attach(cur, spec: DatasetSpec, table: str, day: dt.date) -> None:
    """Attach ``table`` (made with :func:`day_check`) as the day's partition, in the caller's
    transaction. ATTACH takes a SHARE UPDATE EXCLUSIVE lock: readers and writers of the other
    days go on."""
    start, end = day_bounds(day)
    cur.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            ident(spec.table), ident(table), sql.Literal(start), sql.Literal(end)
        )
    )


def partitions(conn, spec: DatasetSpec) -> dict[dt.date, str]:
    """The realtime table's partitions by the UTC day they hold."""
    return postgres.day_partitions(conn, spec.table)


def ensure_partitions(conn, spec: DatasetSpec, days) -> list[dt.date]:
    """Create the partitions of ``days`` that are missing; returns the days created. ``conn``
    is in autocommit mode; each partition is made in its own short transaction."""
    created = []
    wanted = sorted(set(days))
    if not wanted:
        return created
    have = partitions(conn, spec)
    for day in wanted:
        if day in have:
            continue
        name = partition_name(spec, day)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"opsbook.partition.{name}",))
            if cur.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None:
                continue  # made meanwhile by another session
            cur.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS, CHECK ({}))").format(
                    ident(name), ident(spec.table), day_check(spec, day)
                )
            )
            with postgres.lock_wait(conn, spec.table, f"creating the partition {name}"):
                attach(cur, spec, name, day)
        created.append(day)
    return created


def days_ahead(today: dt.date, count: int) -> list[dt.date]:
    """Today and the ``count`` days after it."""
    return [today + dt.timedelta(days=i) for i in range(count + 1)]


# --- data_quality_log ------------------------------------------------------------------------


def log_findings(conn, spec: DatasetSpec, run_id: str, procedure: str, findings: list[dict]) -> int:
    """Write a procedure's findings (``check_name``, ``status``, ``observed``, ``details``) to the
    quality log, in one statement; returns the rows written."""
    if not findings:
        return 0
    from opsbook.run.redaction import redact

    table = ident(names(spec).quality_log)
    rows = [
        (
            run_id,
            procedure,
            spec.name,
            f["check_name"],
            f["status"],
            redact(str(f.get("observed", ""))),
            redact(json.dumps(f.get("details") or {}, default=str)),
        )
        for f in findings
    ]
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (run_id, procedure, dataset, check_name, status, observed, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)"
            ).format(table),
            rows,
        )
    return len(rows)


def findings_of(results) -> list[dict]:
    """Check results (:class:`opsbook.checks.CheckResult`) as quality-log findings."""
    return [
        {
            "check_name": r.name,
            "status": r.status,
            "observed": r.observed,
            "details": {"expected": r.expected, "message": r.message, "failing_count": r.failing_count},
        }
        for r in results
    ]
