"""Step 3, the data-quality checkpoint: what core must meet over the window before the marts
may change (the runbook's "Data Quality Checkpoint Failures").

Temperature in [-50, 60] °C, humidity in [0, 100] %, keys set and unique, every location in
``core.location``, and 24 observations per location and day (a share of short days may be
tolerated). They are a suite of the check engine (:mod:`opsbook.checks`, which judges), over
``core.weather`` filtered by ``observed_at`` (UTC days); every check reads one snapshot, which
also records the version of core it saw and the observations per location and day the report
charts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from opsbook.checks import CheckResult, SuiteResult, Target, run_suite
from opsbook.checks import spec as s
from opsbook.warehouse import schema
from opsbook.windows import Days

TEMPERATURE_RANGE = (-50, 60)  # °C, the runbook's expectation
HUMIDITY_RANGE = (0, 100)  # %
HOURS_PER_DAY = 24
TARGET = Target("core.weather", "observed_at")
SAMPLE_COLUMNS = ["location_id", "observed_at", "temperature_celsius", "humidity", "source_file"]


def expectations(max_incomplete_days: float) -> s.Suite:
    """The runbook's expectations on ``core.weather`` as checks of the engine."""
    low, high = TEMPERATURE_RANGE
    h_low, h_high = HUMIDITY_RANGE
    return s.Suite(
        dataset="weather",
        description="the DW runbook's data-quality checkpoint on core",
        sample_columns=SAMPLE_COLUMNS,
        checks=[
            s.Range(name="temperature_range", type="range", column="temperature_celsius", min=low, max=high),
            s.Range(name="humidity_range", type="range", column="humidity", min=h_low, max=h_high),
            s.NotNull(name="key_fields_not_null", type="not_null", columns=["location_id", "observed_at"]),
            s.Unique(name="unique_keys", type="unique", columns=["location_id", "observed_at"]),
            s.Referential(
                name="referential_integrity",
                type="referential",
                columns=["location_id"],
                parent="core.location",
                parent_columns=["location_id"],
            ),
            s.RowsPerGroup(
                name="observations_per_location_day",
                type="rows_per_group",
                group_by=["location_id"],
                per="day",
                expected=HOURS_PER_DAY,
                max_share_off=max_incomplete_days,
            ),
        ],
    )


def _no_checks(days: Days) -> SuiteResult:
    return SuiteResult([], [], None, 0.0, str(days))


@dataclass
class Checkpoint:
    days: Days
    suite: SuiteResult | None = None  # what the engine found (no check for an empty window)
    coverage: list[dict] = field(default_factory=list)  # observations per location and date, for the chart
    core_version: str | None = None  # the change of core the checks saw
    repeated: bool = False  # run again before the refresh: core had changed since

    def __post_init__(self) -> None:
        if self.suite is None:
            self.suite = _no_checks(self.days)

    @property
    def checks(self) -> list[CheckResult]:
        return self.suite.results

    @property
    def passed(self) -> bool:
        """No check of severity error failed or broke (a tolerated share of short days warns)."""
        return not self.suite.errors

    @property
    def failed(self) -> list[CheckResult]:
        return self.suite.errors

    @property
    def warnings(self) -> list[CheckResult]:
        return self.suite.warnings

    def locations(self) -> dict:
        """location_id -> name, of the locations seen in the window."""
        return {c["location_id"]: c["location"] for c in self.coverage}


def checkpoint(conn: psycopg.Connection, days: Days, max_incomplete_days: float) -> Checkpoint:
    """The expectations over ``days`` (none for an empty window), read in one read-only
    snapshot; ``conn`` is in autocommit."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        result = Checkpoint(days, core_version=schema.core_version(conn))
        if days:
            result.suite = run_suite(conn, TARGET, expectations(max_incomplete_days), days)
            result.coverage = coverage(conn, days)
    return result


def coverage(conn: psycopg.Connection, days: Days) -> list[dict]:
    """Observations per location seen in the window and UTC date of the window (0 for a date
    without any), for the chart; the check ``observations_per_location_day`` judges them."""
    from opsbook.stores.postgres import dicts

    start, end = days.bounds()
    return dicts(
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
        {"start": start, "end": end, "first": days.first, "last": days.last},
    )
