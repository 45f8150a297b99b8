"""Hourly and daily rollups of the traffic-safety indices, with the peak hour of each day.

``safety_indices_hourly`` holds one row per intersection and hour that has readings: the
combined index (empirical-Bayes adjusted) average, minimum, maximum and spread, traffic volume,
the 15-minute intervals at high risk, and the share of the hour's four intervals present.
``safety_indices_daily`` holds one row per intersection and local day (``timezone``), built
from the hourly rows: the same figures over the day, the intervals present against those the
day should have (a daylight-saving day has 23 or 25 hours), and the peak hour (the hour with
the highest average index).

Missing intervals are expected (sensor outages, late batches): averages use what is there and
the coverage says how much that was. Volumes count every reading, also those whose index is
NULL. The window is rebuilt in one transaction, so a rerun gives the same tables and a reader
never sees half a window.

A rollup is never replaced with nothing, nor with less: only the hours that have readings are
rebuilt, and only the days that have readings (from all their hourly rows). Hours whose
readings are gone (purged by retention after 48 hours, or never arrived) keep their hourly
rows, days without readings keep their daily rows, and the days are built from the hourly
table, so the daily rows survive the realtime purge; the days left as they were are reported.

The result is then checked with independent queries (:data:`CHECKS`, each the rows that
disagree: hours against their readings, days against their hours), which the check engine
runs and judges. One build of a dataset runs at a time (the lock :func:`lock_key`).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg import sql

from opsbook.checks import CheckResult, Target, run_suite
from opsbook.datasets import DatasetSpec
from opsbook.history import locks
from opsbook.history import schema as history
from opsbook.stores import postgres
from opsbook.trafficsafety import schema
from opsbook.windows import Days

if TYPE_CHECKING:
    from opsbook.checks.spec import Suite

# each reading's hour and local day; {source} is the readings table
READINGS = """
    SELECT intersection_id, "timestamp", combined_index_eb AS si, vru_index_eb AS vru, vehicle_index_eb AS vehicle,
           traffic_volume,
           date_trunc('hour', "timestamp", %(tz)s) AS hour_timestamp,
           ("timestamp" AT TIME ZONE %(tz)s)::date AS day
    FROM {source}
    WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s"""

# the hours of the window that have readings: only those are rebuilt
CLEAR_HOURS = """
DELETE FROM {hourly} WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s
  AND hour_timestamp IN (SELECT DISTINCT hour_timestamp FROM ({readings}) r)"""

BUILD_HOURLY = """
INSERT INTO {hourly} (intersection_id, hour_timestamp, avg_si, min_si, max_si, std_si, total_volume, avg_volume,
                      high_risk_minutes, data_quality_score, intervals, si_intervals, avg_vru, avg_vehicle)
SELECT intersection_id, hour_timestamp, avg(si ORDER BY "timestamp"), min(si), max(si),
       stddev_samp(si ORDER BY "timestamp"), sum(traffic_volume), avg(traffic_volume),
       %(interval_minutes)s * count(*) FILTER (WHERE si > %(high_risk)s), count(*) / (60.0 / %(interval_minutes)s),
       count(*), count(si), avg(vru ORDER BY "timestamp"), avg(vehicle ORDER BY "timestamp")
FROM ({readings}) r
GROUP BY intersection_id, hour_timestamp"""

# the window's hourly rows with their local day (what the days are built from)
HOURS = """
    SELECT *, (hour_timestamp AT TIME ZONE %(tz)s)::date AS day FROM {hourly}
    WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s"""

# the days of the window that have readings: only those are rebuilt (from all their hourly
# rows); a day without readings keeps its row, even when some of its hours are still there
CLEAR_DAYS = """
DELETE FROM {daily} WHERE date BETWEEN %(first)s AND %(last)s
  AND date IN (SELECT DISTINCT day FROM ({readings}) r)"""

# the intervals a local day has (23, 24 or 25 hours), from the time zone's rules; an hour's
# index average weighs by its readings that have an index (si_intervals). Floating-point sums
# run in a fixed order (ORDER BY), so a rebuild from the same rows gives the same bits whatever
# order the scan returns them in
BUILD_DAILY = """
INSERT INTO {daily} (intersection_id, date, avg_si, min_si, max_si, total_volume, high_risk_minutes,
                     data_quality_score, peak_hour, peak_si, timezone, hours_with_data, intervals,
                     expected_intervals, peak_hour_timestamp)
WITH h AS ({hours} AND (hour_timestamp AT TIME ZONE %(tz)s)::date IN (SELECT DISTINCT day FROM ({readings}) r)),
days AS (
    SELECT intersection_id, day, count(*) AS hours, sum(intervals) AS intervals,
           sum(avg_si * si_intervals ORDER BY hour_timestamp) FILTER (WHERE avg_si IS NOT NULL)
             / nullif(sum(si_intervals) FILTER (WHERE avg_si IS NOT NULL), 0) AS avg_si,
           min(min_si) AS min_si, max(max_si) AS max_si, sum(total_volume) AS total_volume,
           sum(high_risk_minutes) AS high_risk
    FROM h GROUP BY intersection_id, day),
peaks AS (
    SELECT DISTINCT ON (intersection_id, day) intersection_id, day, hour_timestamp, avg_si
    FROM h WHERE avg_si IS NOT NULL
    ORDER BY intersection_id, day, avg_si DESC, hour_timestamp)
SELECT d.intersection_id, d.day, d.avg_si, d.min_si, d.max_si, d.total_volume, d.high_risk, 0,
       extract(hour FROM p.hour_timestamp AT TIME ZONE %(tz)s)::int, p.avg_si, %(tz)s, d.hours, d.intervals,
       (extract(epoch FROM ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
                         - (d.day::timestamp AT TIME ZONE %(tz)s)) / 60 / %(interval_minutes)s)::int,
       p.hour_timestamp
FROM days d LEFT JOIN peaks p USING (intersection_id, day)"""

# the checks of a built window, computed apart from the build: a shared WITH prefix, then one
# query per check returning the rows that disagree (none: it passes). Hours are checked against
# their readings where they were rebuilt, the days rebuilt (those with readings) against their
# hours; the hours and days kept because their readings are gone are not compared
CHECKS_WITH = """
WITH r AS ({readings}),
raw_hours AS (SELECT intersection_id, hour_timestamp, count(*) n, sum(traffic_volume) v FROM r GROUP BY 1, 2),
raw_days AS (SELECT intersection_id, day, count(*) n, sum(traffic_volume) v, max(si) mx FROM r GROUP BY 1, 2),
hourly AS (SELECT * FROM {hourly} WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s),
rebuilt AS (SELECT * FROM hourly WHERE hour_timestamp IN (SELECT hour_timestamp FROM raw_hours)),
kept_days AS (SELECT DISTINCT (hour_timestamp AT TIME ZONE %(tz)s)::date AS day FROM hourly
              WHERE hour_timestamp NOT IN (SELECT hour_timestamp FROM raw_hours)),
daily AS (SELECT * FROM {daily} WHERE date BETWEEN %(first)s AND %(last)s),
hourly_days AS (SELECT intersection_id, (hour_timestamp AT TIME ZONE %(tz)s)::date AS day,
                       sum(total_volume) v, max(avg_si) peak FROM hourly GROUP BY 1, 2)
"""
CHECKS = {
    "hourly_rows_match_readings": (
        "hourly rows match the readings per hour",
        """SELECT intersection_id, hour_timestamp, x.n AS readings, h.intervals, x.v AS readings_volume,
                  h.total_volume
           FROM raw_hours x FULL JOIN rebuilt h USING (intersection_id, hour_timestamp)
           WHERE x.n IS DISTINCT FROM h.intervals OR x.v IS DISTINCT FROM h.total_volume""",
    ),
    "daily_rows_match_readings": (
        "daily rows match the readings per day (days whose every hour has its readings)",
        """SELECT coalesce(x.intersection_id, d.intersection_id) AS intersection_id, coalesce(x.day, d.date) AS date,
                  x.n AS readings, d.intervals, x.v AS readings_volume, d.total_volume, x.mx AS readings_max_si,
                  d.max_si
           FROM (SELECT * FROM raw_days WHERE day NOT IN (SELECT day FROM kept_days)) x
           FULL JOIN (SELECT * FROM daily WHERE date IN (SELECT day FROM raw_days)
                                          AND date NOT IN (SELECT day FROM kept_days)) d
             ON d.intersection_id = x.intersection_id AND d.date = x.day
           WHERE x.n IS DISTINCT FROM d.intervals OR x.v IS DISTINCT FROM d.total_volume
              OR x.mx IS DISTINCT FROM d.max_si""",
    ),
    "daily_volume_is_sum_of_hours": (
        "daily volume is the sum of its hours",
        """SELECT d.intersection_id, d.date, d.total_volume, h.v AS hours_volume
           FROM daily d LEFT JOIN hourly_days h ON h.intersection_id = d.intersection_id AND h.day = d.date
           WHERE d.date IN (SELECT day FROM raw_days) AND d.total_volume IS DISTINCT FROM h.v""",
    ),
    "peak_hour_has_highest_index": (
        "the peak hour has the highest hourly index",
        """SELECT d.intersection_id, d.date, d.peak_hour, d.peak_si, h.peak AS highest_hourly_si
           FROM daily d LEFT JOIN hourly_days h ON h.intersection_id = d.intersection_id AND h.day = d.date
           WHERE d.date IN (SELECT day FROM raw_days) AND d.peak_si IS DISTINCT FROM h.peak""",
    ),
}


def window_values(window: Days, timezone: str, high_risk: float) -> dict:
    """What the build's and the checks' queries bind: the window's local days and their bounds."""
    start, end = window.bounds(zoneinfo.ZoneInfo(timezone))
    return {
        "tz": timezone,
        "start": start,
        "end": end,
        "first": window.first,
        "last": window.last,
        "high_risk": high_risk,
        "interval_minutes": schema.INTERVAL_MINUTES,
    }


def check(conn, spec: DatasetSpec, window: Days, values: dict) -> list[CheckResult]:
    """The built window against the readings, judged by the check engine (``values``: see
    :func:`window_values`)."""
    daily = schema.names(spec).daily
    return run_suite(conn, Target(daily, "date"), checks_suite(conn, spec), window, params=values).results


def checks_suite(conn, spec: DatasetSpec) -> Suite:
    """The checks of the rollups against ``spec``'s readings, as ``empty_query`` checks of the
    engine; they bind the window's values (tz, start, end, first, last) by name."""
    from opsbook.checks import spec as s

    tables = schema.names(spec)
    prefix = (
        sql.SQL(CHECKS_WITH)
        .format(
            readings=sql.SQL(READINGS).format(source=sql.Identifier(spec.table)),
            hourly=sql.Identifier(tables.hourly),
            daily=sql.Identifier(tables.daily),
        )
        .as_string(conn)
    )
    return s.Suite(
        dataset=spec.name,
        description="the rollups against the readings",
        checks=[
            s.EmptyQuery(name=name, type="empty_query", description=description, query=prefix + query)
            for name, (description, query) in CHECKS.items()
        ],
    )


@dataclass
class Built:
    """What a build made, read back for the report."""

    readings: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    daily: list[dict] = field(default_factory=list)  # the daily rows built
    hourly: list[dict] = field(default_factory=list)  # intersection, local hour, avg_si (for a chart)
    checks: list[CheckResult] = field(default_factory=list)  # the rollups against the readings
    kept_days: list[dt.date] = field(default_factory=list)  # days without readings whose rollups were kept
    partitions_created: list[dt.date] = field(default_factory=list)  # realtime partitions made ahead
    partitions_ahead: list[dt.date] = field(default_factory=list)  # realtime partitions from today on
    logged: int = 0  # findings written to the quality log


def lock_key(dataset: str) -> str:
    """The lock one build of ``dataset`` holds: ``opsbook.rollups:<dataset>``."""
    return locks.key("rollups", dataset)


def build(
    spec: DatasetSpec,
    window: Days,
    timezone: str,
    high_risk: float,
    run_id: str,
    partitions_ahead: int = 7,
    today: dt.date | None = None,
    rows: bool = True,
) -> Built:
    """Rebuild the window's local days of both tables in one transaction, then check them and
    log the checks in the quality log; first make the realtime partitions of ``today`` (UTC) and
    the ``partitions_ahead`` days after it that are missing. With ``rows``, the built daily rows
    and hourly averages are read back for the report.

    Raises
    ------
    LockHeld
        Another build of the dataset holds its lock.
    """
    args = window_values(window, timezone, high_risk)
    today = today or dt.datetime.now(dt.UTC).date()
    tables = schema.names(spec)
    names = {"hourly": sql.Identifier(tables.hourly), "daily": sql.Identifier(tables.daily)}
    readings = sql.SQL(READINGS).format(source=sql.Identifier(spec.table))
    built = Built()
    key = lock_key(spec.name)
    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as conn:
        history.ensure_schema(conn)
        locks.try_lock(conn, key, run_id)
        schema.ensure(conn, spec)  # its DDL lock is taken right after the dataset's (a test holds it to pause a build)
        built.partitions_created = schema.ensure_partitions(conn, spec, schema.days_ahead(today, partitions_ahead))
        built.partitions_ahead = sorted(d for d in schema.partitions(conn, spec) if d >= today)
        hours = sql.SQL(HOURS).format(**names)
        with conn.transaction():  # the whole window or nothing
            # hours with readings, then days with hourly rows: the rest is kept as it is
            conn.execute(sql.SQL(CLEAR_HOURS).format(readings=readings, **names), args)
            built.hourly_rows = conn.execute(sql.SQL(BUILD_HOURLY).format(readings=readings, **names), args).rowcount
            conn.execute(sql.SQL(CLEAR_DAYS).format(readings=readings, **names), args)
            built.daily_rows = conn.execute(
                sql.SQL(BUILD_DAILY).format(hours=hours, readings=readings, **names), args
            ).rowcount
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET data_quality_score = intervals::float / expected_intervals "
                    "WHERE date BETWEEN %(first)s AND %(last)s"
                ).format(names["daily"]),
                args,
            )
        built.readings = conn.execute(sql.SQL("SELECT count(*) FROM ({}) r").format(readings), args).fetchone()[0]
        with_readings = {
            row[0] for row in conn.execute(sql.SQL("SELECT DISTINCT day FROM ({}) r").format(readings), args)
        }
        held = conn.execute(
            sql.SQL("SELECT date, count(*) FROM {} WHERE date BETWEEN %(first)s AND %(last)s GROUP BY 1").format(
                names["daily"]
            ),
            args,
        ).fetchall()
        built.kept_days = sorted(day for day, _ in held if day not in with_readings)
        built.checks = check(conn, spec, window, args)
        built.logged = schema.log_findings(conn, spec, run_id, "rollups", schema.findings_of(built.checks))
        if not rows:  # the caller reports counts only (a backfill of hundreds of intersections)
            locks.unlock(conn, key)
            return built
        built.daily = postgres.dicts(
            conn,
            sql.SQL(
                "SELECT intersection_id, date, hours_with_data, intervals, expected_intervals, "
                "round(data_quality_score::numeric, 3) AS coverage, round(avg_si::numeric, 2) AS avg_si, "
                "round(max_si::numeric, 2) AS max_si, total_volume, high_risk_minutes, peak_hour, "
                "round(peak_si::numeric, 2) AS peak_si FROM {} WHERE date BETWEEN %(first)s AND %(last)s "
                "ORDER BY date, intersection_id"
            ).format(names["daily"]),
            args,
        )
        built.hourly = postgres.dicts(
            conn,
            sql.SQL(
                "SELECT intersection_id, hour_timestamp AT TIME ZONE %(tz)s AS local_hour, avg_si FROM {} "
                "WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s ORDER BY 1, 2"
            ).format(names["hourly"]),
            args,
        )
        locks.unlock(conn, key)
    return built


def coverage(daily: list[dict], window: Days, min_coverage: float) -> list[dict]:
    """Per local day of the window: intersections, intervals present against expected, status."""
    days = []
    for day in window.days:
        rows = [r for r in daily if r["date"] == day]
        present = sum(r["intervals"] for r in rows)
        expected = sum(r["expected_intervals"] for r in rows)
        share = present / expected if expected else 0.0
        days.append(
            {
                "day": day,
                "intersections": len(rows),
                "hours in the day": rows[0]["expected_intervals"] // 4 if rows else None,
                "intervals": present,
                "expected": expected,
                "coverage": share,
                "status": "pass" if rows and share >= min_coverage else "warn",
            }
        )
    return days


def peak_moments(daily: list[dict], timezone: str) -> list[tuple[dt.datetime, float]]:
    """Each day's peak hour as a local wall-clock time, with its index (for a chart)."""
    zone = zoneinfo.ZoneInfo(timezone)
    return [
        (dt.datetime.combine(d["date"], dt.time(d["peak_hour"]), zone).replace(tzinfo=None), d["peak_si"])
        for d in daily
        if d["peak_hour"] is not None
    ]
