"""Hourly and daily rollups of the traffic-safety indices, with the peak hour of each day.

``safety_indices_hourly`` holds one row per intersection and hour that has readings: the
combined index (empirical-Bayes adjusted) average, minimum, maximum and spread, traffic volume,
the 15-minute intervals at high risk, and the share of the hour's four intervals present.
``safety_indices_daily`` holds one row per intersection and local day (``timezone``): the same
figures over the day, the intervals present against those the day should have (a daylight-
saving day has 23 or 25 hours), and the peak hour (the hour with the highest average index).

Missing intervals are expected (sensor outages, late batches): averages use what is there and
the coverage says how much that was. Volumes count every reading, also those whose index is
NULL. The window is rebuilt in one transaction (delete, then insert), so a rerun gives the
same tables and a reader never sees half a window. The result is then checked against the
readings with independent queries.
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo
from dataclasses import dataclass, field

from psycopg import sql
from pydantic import Field, field_validator

from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict

NOTEBOOK = "rollups.ipynb"
SUMMARY = "Build hourly and daily safety-index rollups with the peak hour per day, idempotent per window"
HOURLY = "safety_indices_hourly"
DAILY = "safety_indices_daily"

DDL = """
CREATE TABLE IF NOT EXISTS {hourly} (
    intersection_id integer NOT NULL,
    hour_timestamp timestamptz NOT NULL,
    intervals integer NOT NULL,
    avg_si double precision, min_si double precision, max_si double precision, std_si double precision,
    avg_vru double precision, avg_vehicle double precision,
    total_volume bigint, avg_volume double precision,
    high_risk_intervals integer NOT NULL,
    data_quality_score double precision NOT NULL,
    PRIMARY KEY (intersection_id, hour_timestamp));
CREATE TABLE IF NOT EXISTS {daily} (
    intersection_id integer NOT NULL,
    date date NOT NULL,
    timezone text NOT NULL,
    hours_with_data integer NOT NULL,
    intervals integer NOT NULL,
    expected_intervals integer NOT NULL,
    avg_si double precision, min_si double precision, max_si double precision,
    total_volume bigint,
    high_risk_intervals integer NOT NULL,
    data_quality_score double precision NOT NULL,
    peak_hour integer, peak_hour_timestamp timestamptz, peak_si double precision,
    PRIMARY KEY (intersection_id, date));
"""

# each reading's hour and local day; {source} is the readings table
READINGS = """
    SELECT intersection_id, "timestamp", combined_index_eb AS si, vru_index, vehicle_index, traffic_volume,
           date_trunc('hour', "timestamp", %(tz)s) AS hour_timestamp,
           ("timestamp" AT TIME ZONE %(tz)s)::date AS day
    FROM {source}
    WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s"""

BUILD_HOURLY = """
INSERT INTO {hourly}
SELECT intersection_id, hour_timestamp, count(*), avg(si), min(si), max(si), stddev_samp(si),
       avg(vru_index), avg(vehicle_index), sum(traffic_volume), avg(traffic_volume),
       count(*) FILTER (WHERE si > %(high_risk)s), count(*) / 4.0
FROM ({readings}) r
GROUP BY intersection_id, hour_timestamp"""

# the hours a local day has (23, 24 or 25), from the time zone's rules
BUILD_DAILY = """
INSERT INTO {daily}
WITH days AS (
    SELECT intersection_id, day, count(DISTINCT hour_timestamp) AS hours, count(*) AS intervals,
           avg(si) AS avg_si, min(si) AS min_si, max(si) AS max_si, sum(traffic_volume) AS total_volume,
           count(*) FILTER (WHERE si > %(high_risk)s) AS high_risk
    FROM ({readings}) r GROUP BY intersection_id, day),
peaks AS (
    SELECT DISTINCT ON (intersection_id, (hour_timestamp AT TIME ZONE %(tz)s)::date)
           intersection_id, (hour_timestamp AT TIME ZONE %(tz)s)::date AS day, hour_timestamp, avg_si
    FROM {hourly}
    WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s AND avg_si IS NOT NULL
    ORDER BY intersection_id, (hour_timestamp AT TIME ZONE %(tz)s)::date, avg_si DESC, hour_timestamp)
SELECT d.intersection_id, d.day, %(tz)s, d.hours, d.intervals,
       4 * (extract(epoch FROM ((d.day + 1)::timestamp AT TIME ZONE %(tz)s)
                              - (d.day::timestamp AT TIME ZONE %(tz)s)) / 3600)::int,
       d.avg_si, d.min_si, d.max_si, d.total_volume, d.high_risk, 0,
       extract(hour FROM p.hour_timestamp AT TIME ZONE %(tz)s)::int, p.hour_timestamp, p.avg_si
FROM days d LEFT JOIN peaks p USING (intersection_id, day)"""

# independent checks of the built window against the readings; each row is (check, disagreeing rows)
CHECKS = """
WITH r AS ({readings}),
raw_hours AS (SELECT intersection_id, hour_timestamp, count(*) n, sum(traffic_volume) v FROM r GROUP BY 1, 2),
raw_days AS (SELECT intersection_id, day, count(*) n, sum(traffic_volume) v, max(si) mx FROM r GROUP BY 1, 2),
hourly AS (SELECT * FROM {hourly} WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s),
daily AS (SELECT * FROM {daily} WHERE date BETWEEN %(first)s AND %(last)s),
hourly_days AS (SELECT intersection_id, (hour_timestamp AT TIME ZONE %(tz)s)::date AS day,
                       sum(total_volume) v, max(avg_si) peak FROM hourly GROUP BY 1, 2)
SELECT 'hourly rows match the readings per hour',
       count(*) FROM raw_hours x FULL JOIN hourly h USING (intersection_id, hour_timestamp)
       WHERE x.n IS DISTINCT FROM h.intervals OR x.v IS DISTINCT FROM h.total_volume
UNION ALL
SELECT 'daily rows match the readings per day',
       count(*) FROM raw_days x FULL JOIN daily d ON d.intersection_id = x.intersection_id AND d.date = x.day
       WHERE x.n IS DISTINCT FROM d.intervals OR x.v IS DISTINCT FROM d.total_volume OR x.mx IS DISTINCT FROM d.max_si
UNION ALL
SELECT 'daily volume is the sum of its hours',
       count(*) FROM daily d LEFT JOIN hourly_days h ON h.intersection_id = d.intersection_id AND h.day = d.date
       WHERE d.total_volume IS DISTINCT FROM h.v
UNION ALL
SELECT 'the peak hour has the highest hourly index',
       count(*) FROM daily d LEFT JOIN hourly_days h ON h.intersection_id = d.intersection_id AND h.day = d.date
       WHERE d.peak_si IS DISTINCT FROM h.peak"""


class Params(ProcedureParams):
    """Parameters of ``rollups``."""

    dataset: DatasetName = Field("safety_indices", description="the 15-minute readings rolled up")
    window: str = Field("2025-11-01..2025-11-07", description="local days to (re)build: 2025-11-01..2025-11-07")
    timezone: str = Field("America/Toronto", description="time zone of the days and of the peak hour")
    high_risk: float = Field(75.0, description="an interval is high risk above this combined index")
    min_coverage: float = Field(0.5, ge=0, le=1, description="WARN for a day with less of its intervals present")

    @field_validator("window")
    @classmethod
    def _day_window(cls, value: str) -> str:
        from opsbook.trafficsafety import reconcile

        reconcile.parse_window(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (e.g. America/Toronto, UTC)") from None
        return value


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel: one rollup of a dataset at a time."""
    return [lock_key(params.dataset)]


def lock_key(dataset: str) -> str:
    return f"opsbook.rollups:{dataset}"


@dataclass
class Result:
    params: Params
    readings: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    days: list[dict] = field(default_factory=list)  # coverage per local day
    daily: list[dict] = field(default_factory=list)  # the daily rows built
    hourly: list[dict] = field(default_factory=list)  # intersection, hour, avg_si (for the chart)
    checks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def verdict(self) -> Verdict:
        figures = {"readings": self.readings, "hourly rows": self.hourly_rows, "daily rows": self.daily_rows}
        counts = {"rows_in": self.readings, "rows_out": self.hourly_rows + self.daily_rows}
        wrong = [c for c in self.checks if c["status"] == "fail"]
        if wrong:
            detail = "; ".join(f"{c['check']}: {c['disagreeing rows']} row(s) disagree" for c in wrong)
            return Verdict.failed(f"the rollups disagree with the readings: {detail}", figures, "checks", CheckFailed)
        if not self.readings:
            return Verdict.failed(
                f"no {self.params.dataset} readings in {self.params.window} ({self.params.timezone}): "
                "run dual_write for those days first",
                figures,
                "coverage",
                CheckFailed,
            )
        low = [d for d in self.days if d["status"] == "warn"]
        built = (
            f"built {self.hourly_rows:,} hourly and {self.daily_rows:,} daily rows from {self.readings:,} readings "
            f"over {self.params.window} ({self.params.timezone})"
        )
        if low:
            names = ", ".join(f"{d['day']} ({d['coverage']:.0%})" for d in low)
            return Verdict("warn", f"{built}; low coverage on {names}", figures, anchor="coverage", **counts)
        return Verdict("pass", f"{built}; every check against the readings passes", figures, **counts)


def bounds(window, tz: str) -> tuple[dt.datetime, dt.datetime]:
    """The window's local days as UTC instants: [first day 00:00, day after the last 00:00)."""
    zone = zoneinfo.ZoneInfo(tz)
    start = dt.datetime.combine(window.first, dt.time(), zone)
    end = dt.datetime.combine(window.last + dt.timedelta(days=1), dt.time(), zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def ensure_tables(conn) -> None:
    conn.execute(sql.SQL(DDL).format(hourly=sql.Identifier(HOURLY), daily=sql.Identifier(DAILY)))


def run(params: Params, run_id: str) -> Result:
    from opsbook import datasets, runlog
    from opsbook.trafficsafety import reconcile
    from opsbook.stores import postgres

    t0 = time.monotonic()
    spec = datasets.get(params.dataset)
    window = reconcile.parse_window(params.window)
    start, end = bounds(window, params.timezone)
    args = {
        "tz": params.timezone,
        "start": start,
        "end": end,
        "first": window.first,
        "last": window.last,
        "high_risk": params.high_risk,
    }
    names = {"hourly": sql.Identifier(HOURLY), "daily": sql.Identifier(DAILY)}
    readings = sql.SQL(READINGS).format(source=sql.Identifier(spec.table))
    result = Result(params)
    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as conn:
        runlog.ensure_schema(conn)
        runlog.try_lock(conn, lock_key(params.dataset), run_id)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.rollups'))")
            ensure_tables(conn)
        with conn.transaction():  # the whole window or nothing
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s").format(
                    names["hourly"]
                ),
                args,
            )
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE date BETWEEN %(first)s AND %(last)s").format(names["daily"]), args
            )
            result.hourly_rows = conn.execute(sql.SQL(BUILD_HOURLY).format(readings=readings, **names), args).rowcount
            result.daily_rows = conn.execute(sql.SQL(BUILD_DAILY).format(readings=readings, **names), args).rowcount
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET data_quality_score = intervals::float / expected_intervals "
                    "WHERE date BETWEEN %(first)s AND %(last)s"
                ).format(names["daily"]),
                args,
            )
        result.readings = conn.execute(sql.SQL("SELECT count(*) FROM ({}) r").format(readings), args).fetchone()[0]
        result.checks = [
            {"check": name, "disagreeing rows": bad, "status": "pass" if bad == 0 else "fail"}
            for name, bad in conn.execute(sql.SQL(CHECKS).format(readings=readings, **names), args).fetchall()
        ]
        result.daily = postgres.dicts(
            conn,
            sql.SQL(
                "SELECT intersection_id, date, hours_with_data, intervals, expected_intervals, "
                "round(data_quality_score::numeric, 3) AS coverage, round(avg_si::numeric, 2) AS avg_si, "
                "round(max_si::numeric, 2) AS max_si, total_volume, high_risk_intervals, peak_hour, "
                "round(peak_si::numeric, 2) AS peak_si FROM {} WHERE date BETWEEN %(first)s AND %(last)s "
                "ORDER BY date, intersection_id"
            ).format(names["daily"]),
            args,
        )
        result.hourly = postgres.dicts(
            conn,
            sql.SQL(
                "SELECT intersection_id, hour_timestamp AT TIME ZONE %(tz)s AS local_hour, avg_si FROM {} "
                "WHERE hour_timestamp >= %(start)s AND hour_timestamp < %(end)s ORDER BY 1, 2"
            ).format(names["hourly"]),
            args,
        )
        runlog.unlock(conn, lock_key(params.dataset))
    result.days = coverage(result.daily, window, params.min_coverage)
    result.seconds = time.monotonic() - t0
    return result


def coverage(daily: list[dict], window, min_coverage: float) -> list[dict]:
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


# --- presentation ----------------------------------------------------------------------------


def show_coverage(result: Result):
    from opsbook import report

    rows = [{**d, "coverage": f"{d['coverage']:.1%}"} for d in result.days]
    return report.table(
        rows,
        caption=f"Intervals present per local day ({result.params.timezone}); WARN below "
        f"{result.params.min_coverage:.0%} of the day's intervals",
        status_column="status",
        element_id="coverage",
    )


def show_daily(result: Result):
    from opsbook import report

    return report.table(
        result.daily,
        caption=f"{DAILY}: one row per intersection and local day; peak hour in {result.params.timezone} time",
        element_id="daily",
    )


def show_checks(result: Result):
    from opsbook import report

    return report.table(
        result.checks, caption="The rollups checked against the readings", status_column="status", element_id="checks"
    )


def hourly_chart(result: Result):
    """Hourly average index per intersection, with each day's peak hour marked."""
    import plotly.graph_objects as go

    from opsbook import report

    fig = go.Figure()
    for ident in sorted({r["intersection_id"] for r in result.hourly}):
        rows = [r for r in result.hourly if r["intersection_id"] == ident]
        fig.add_trace(
            go.Scatter(
                x=[r["local_hour"] for r in rows],
                y=[r["avg_si"] for r in rows],
                mode="lines",
                name=str(ident),
                line={"width": 1},
            )
        )
    zone = zoneinfo.ZoneInfo(result.params.timezone)
    peaks = [d for d in result.daily if d["peak_hour"] is not None]
    fig.add_trace(
        go.Scatter(
            x=[dt.datetime.combine(d["date"], dt.time(d["peak_hour"]), zone).replace(tzinfo=None) for d in peaks],
            y=[d["peak_si"] for d in peaks],
            mode="markers",
            name="daily peak",
            marker={"symbol": "triangle-up", "size": 8, "color": "#222"},
        )
    )
    fig.update_layout(
        title="Hourly average combined index (EB) per intersection",
        xaxis_title=f"hour ({result.params.timezone})",
        yaxis_title="avg_si",
        height=420,
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
    )
    return report.chart(fig, "hourly-chart")
