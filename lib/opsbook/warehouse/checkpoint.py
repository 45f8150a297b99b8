"""Step 3, the data-quality checkpoint: what core must meet over the window before the marts
may change (the runbook's "Data Quality Checkpoint Failures").

Temperature in [-50, 60] °C, humidity in [0, 100] %, keys set and unique, every location in
``core.location``, and 24 observations per location and day (a share of short days may be
tolerated). Every check reads one snapshot, which also records the version of core it saw.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import psycopg

from opsbook.warehouse import schema
from opsbook.windows import Days

TEMPERATURE_RANGE = (-50, 60)  # °C, the runbook's expectation
HUMIDITY_RANGE = (0, 100)  # %
HOURS_PER_DAY = 24
SAMPLE_ROWS = 5


@dataclass
class CheckResult:
    name: str
    rule: str
    checked: int
    failing: int
    status: str  # pass, warn (failing within tolerance) or fail
    samples: list[dict] = field(default_factory=list)


@dataclass
class Checkpoint:
    days: Days
    checks: list[CheckResult] = field(default_factory=list)
    coverage: list[dict] = field(default_factory=list)  # observations per location and date
    core_version: str | None = None  # the change of core the checks saw
    repeated: bool = False  # run again before the refresh: core had changed since

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]


def checkpoint(conn: psycopg.Connection, days: Days, max_incomplete_days: float) -> Checkpoint:
    """The expectations over ``days`` (none for an empty window), read in one read-only
    snapshot; ``conn`` is in autocommit."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        result = Checkpoint(days, core_version=schema.core_version(conn))
        if days:
            _checks(conn, result, max_incomplete_days)
    return result


def _checks(conn: psycopg.Connection, result: Checkpoint, max_incomplete_days: float) -> None:
    from opsbook.stores.postgres import dicts

    start, end = result.days.bounds()
    window = {"start": start, "end": end}
    shown = (
        "l.location_name AS location, w.location_id, w.observed_at, w.temperature_celsius, w.humidity, w.source_file"
    )
    low, high = TEMPERATURE_RANGE
    h_low, h_high = HUMIDITY_RANGE
    result.checks += [
        _row_check(
            conn,
            "temperature range",
            f"temperature_celsius between {low} and {high} °C",
            "w.temperature_celsius NOT BETWEEN %(low)s AND %(high)s",
            shown,
            {**window, "low": low, "high": high},
        ),
        _row_check(
            conn,
            "humidity range",
            f"humidity between {h_low} and {h_high} %",
            "w.humidity NOT BETWEEN %(h_low)s AND %(h_high)s",
            shown,
            {**window, "h_low": h_low, "h_high": h_high},
        ),
        _row_check(
            conn,
            "key fields not null",
            "location_id and observed_at are set",
            "w.location_id IS NULL OR w.observed_at IS NULL",
            shown,
            window,
        ),
        _row_check(
            conn,
            "referential integrity",
            "every location_id is in core.location",
            "NOT EXISTS (SELECT 1 FROM core.location c WHERE c.location_id = w.location_id)",
            shown,
            window,
        ),
    ]
    duplicates = dicts(
        conn,
        """SELECT location_id, observed_at, count(*) AS copies FROM core.weather
           WHERE observed_at >= %(start)s AND observed_at < %(end)s
           GROUP BY location_id, observed_at HAVING count(*) > 1 ORDER BY observed_at""",
        window,
    )
    result.checks.append(
        CheckResult(
            "unique keys",
            "one row per (location_id, observed_at)",
            result.checks[0].checked,
            len(duplicates),
            "fail" if duplicates else "pass",
            duplicates[:SAMPLE_ROWS],
        )
    )
    # every location seen in the window, on every date of the window, has 24 hourly observations
    result.coverage = dicts(
        conn,
        """WITH days AS (SELECT d::date AS observation_date FROM generate_series(%(first)s::date, %(last)s::date,
                                                                                   interval '1 day') d),
                places AS (SELECT DISTINCT w.location_id, l.location_name FROM core.weather w
                           LEFT JOIN core.location l USING (location_id)
                           WHERE w.observed_at >= %(start)s AND w.observed_at < %(end)s),
                counts AS (SELECT location_id, (observed_at AT TIME ZONE 'UTC')::date AS observation_date,
                                  count(*) AS observations
                           FROM core.weather WHERE observed_at >= %(start)s AND observed_at < %(end)s
                           GROUP BY 1, 2)
           SELECT p.location_name AS location, p.location_id, d.observation_date AS date,
                  coalesce(c.observations, 0) AS observations
           FROM places p CROSS JOIN days d
           LEFT JOIN counts c USING (location_id, observation_date)
           ORDER BY p.location_name, d.observation_date""",
        {**window, "first": result.days.first, "last": result.days.last},
    )
    incomplete = [c for c in result.coverage if c["observations"] != HOURS_PER_DAY]
    cells = len(result.coverage)
    share = len(incomplete) / cells if cells else 0.0
    status = "pass" if not incomplete else ("warn" if share <= max_incomplete_days else "fail")
    result.checks.append(
        CheckResult(
            "observations per location per day",
            f"{HOURS_PER_DAY} per location and date; at most {max_incomplete_days:.0%} of location-days short",
            cells,
            len(incomplete),
            status,
            incomplete[:SAMPLE_ROWS],
        )
    )


def _row_check(conn, name: str, rule: str, bad: str, columns: str, values: dict) -> CheckResult:
    """A check that each observation of the window meets ``rule`` (``bad`` selects those that don't)."""
    from opsbook.stores.postgres import dicts

    scope = "w.observed_at >= %(start)s AND w.observed_at < %(end)s"
    checked, failing = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {bad}) FROM core.weather w WHERE {scope}", values
    ).fetchone()
    samples = []
    if failing:
        samples = dicts(
            conn,
            f"""SELECT {columns} FROM core.weather w LEFT JOIN core.location l USING (location_id)
                WHERE {scope} AND ({bad}) ORDER BY w.observed_at, w.location_id LIMIT {SAMPLE_ROWS}""",
            values,
        )
    return CheckResult(name, rule, checked, failing, "fail" if failing else "pass", samples)


def plain(value):
    """A sample's value as the report shows it."""
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value
