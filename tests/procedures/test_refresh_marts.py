"""refresh_marts against a real PostgreSQL: landing, quarantine, checkpoint, window rerun, marts."""

import datetime as dt
import json
import shutil

import pytest
from helpers import call, run_cli

from opsbook.demo import weather as weatherdata
from opsbook.errors import CheckFailed, LockHeld, UsageError
from opsbook.procedures import refresh_marts
from opsbook.run import context
from opsbook.run.verdict import Verdict
from opsbook.windows import Days

pytestmark = pytest.mark.notebook

CITIES = weatherdata.CITIES[:3]  # Toronto, Montreal, Vancouver
DAYS = 6  # 2024-11-01 .. 2024-11-06
MART_COLUMNS = (
    "location_id, location_name, observation_date, min_temperature_celsius, max_temperature_celsius, "
    "avg_temperature_celsius, total_precipitation_mm, avg_humidity, max_wind_speed_kmh, observation_count"
)


@pytest.fixture
def fresh(db):
    """An empty warehouse: the raw, core and mart schemas dropped."""
    db.execute("DROP SCHEMA IF EXISTS mart, core, raw CASCADE")
    return db


@pytest.fixture
def source(tmp_path):
    """A small clean source folder: 3 cities x 6 days, nothing malformed."""
    folder = tmp_path / "weather"
    weatherdata.build(folder, cities=CITIES, days=DAYS, malformed={})
    return folder


def run(folder, **values) -> refresh_marts.Result:
    return call("refresh_marts", source=str(folder), **values)


def core_rows(db, where: str = "true") -> dict:
    rows = db.execute(
        "SELECT location_id, observed_at, temperature_celsius, humidity, precipitation_mm, wind_speed_kmh, "
        f"xmin::text FROM core.weather WHERE {where}"
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def mart_rows(db) -> list[tuple]:
    return db.execute(f"SELECT {MART_COLUMNS} FROM mart.daily_weather_aggregates ORDER BY 1, 3").fetchall()


def test_landing_twice_adds_nothing_and_rewrites_no_row(fresh, source):
    first = run(source)
    assert first.verdict().status == "pass", first.verdict().summary
    files = len(CITIES) * DAYS
    assert (first.landed.new, first.transformed.inserted) == (files, files * 24)
    assert first.marts[0].mode == "first population" and first.marts[0].after.rows == files
    before = core_rows(fresh)

    again = run(source)
    assert (again.landed.new, again.landed.already) == (0, files)
    assert (again.transformed.inserted, again.transformed.updated, again.transformed.unchanged) == (0, 0, files * 24)
    # what the run log records (and health's trend compares): the rows core holds, not only those rewritten
    assert again.verdict().rows_out == first.verdict().rows_out == files * 24
    assert fresh.execute(
        "SELECT count(*), count(DISTINCT payload_sha256) FROM raw.weather_observations"
    ).fetchone() == (
        files,
        files,
    )
    assert core_rows(fresh) == before  # same values and the same xmin: no row was rewritten
    assert again.marts[0].mode == "concurrently"

    # one changed value rewrites that row only; the changed file lands as a new raw version
    path = weatherdata.file_path(source, "Toronto", dt.date(2024, 11, 2))
    doc = json.loads(path.read_text())
    doc["hourly"]["temperature_2m"][5] = 1.5
    path.write_text(json.dumps(doc))
    third = run(source)
    assert (third.landed.new, third.transformed.updated, third.transformed.inserted) == (1, 1, 0)
    after = core_rows(fresh)
    changed = {k for k in before if before[k] != after[k]}
    assert len(changed) == 1 and after[changed.pop()][0] == 1.5


def test_malformed_files_are_kept_raw_and_quarantined_with_the_file_and_field(fresh, source):
    truncated = weatherdata.file_path(source, "Toronto", dt.date(2024, 11, 3))
    truncated.write_text(truncated.read_text()[:500])
    missing = weatherdata.file_path(source, "Montreal", dt.date(2024, 11, 4))
    doc = json.loads(missing.read_text())
    del doc["hourly"]["wind_speed_10m"]
    missing.write_text(json.dumps(doc))
    wrong_type = weatherdata.file_path(source, "Vancouver", dt.date(2024, 11, 5))
    doc = json.loads(wrong_type.read_text())
    doc["hourly"]["relative_humidity_2m"][7] = {"value": 80}
    wrong_type.write_text(json.dumps(doc))

    result = run(source, max_rejected_ratio=0.2, max_incomplete_days=0.2)
    assert result.verdict().status == "pass", result.verdict().summary
    rejected = fresh.execute(
        "SELECT source_file, field, position, reason FROM raw.weather_rejected ORDER BY source_file"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rejected] == [
        ("Montreal/2024-11-04.json", "hourly.wind_speed_10m", None),
        ("Toronto/2024-11-03.json", "payload", None),
        ("Vancouver/2024-11-05.json", "hourly.relative_humidity_2m", 7),
    ]
    assert all(r[3].startswith(r[0] + ": ") for r in rejected)
    assert "not valid JSON" in rejected[1][3] and "missing" in rejected[0][3]
    # raw keeps the malformed payload exactly as it came
    stored = fresh.execute(
        "SELECT payload FROM raw.weather_observations WHERE source_file = 'Toronto/2024-11-03.json'"
    ).fetchone()[0]
    assert stored == truncated.read_text()
    # nothing else was dropped: every other hour is in core
    assert fresh.execute("SELECT count(*) FROM core.weather").fetchone()[0] == (len(CITIES) * DAYS - 2) * 24 - 1
    assert result.transformed.files_rejected == 3 and result.transformed.hours_rejected == 1

    # landing again keeps one quarantine row per problem (replaced, not added)
    run(source, max_rejected_ratio=0.2, max_incomplete_days=0.2)
    assert fresh.execute("SELECT count(*) FROM raw.weather_rejected").fetchone()[0] == 3

    # over the threshold: the run fails and writes nothing
    fresh.execute("DROP SCHEMA mart, core, raw CASCADE")
    over = run(source, max_rejected_ratio=0.1)
    verdict = over.verdict()
    assert verdict.status == "fail" and verdict.error is CheckFailed
    assert "3 of 18 files" in verdict.summary
    assert fresh.execute("SELECT count(*) FROM raw.weather_observations").fetchone()[0] == 0
    assert fresh.execute("SELECT count(*) FROM core.weather").fetchone()[0] == 0
    assert {r["file"] for r in over.transformed.rejects} == {r[0] for r in rejected}


def test_window_rerun_rebuilds_the_window_and_touches_no_other_day(fresh, source):
    run(source)
    outside = "observed_at < '2024-11-03' OR observed_at >= '2024-11-05'"
    inside = "observed_at >= '2024-11-03' AND observed_at < '2024-11-05'"
    before_out, before_in = core_rows(fresh, outside), core_rows(fresh, inside)
    raw_out = fresh.execute(
        "SELECT id, payload_sha256 FROM raw.weather_observations WHERE file_date NOT BETWEEN '2024-11-03' AND "
        "'2024-11-04' ORDER BY id"
    ).fetchall()
    # the source changes on a day outside the window and on one inside it
    for day in (dt.date(2024, 11, 1), dt.date(2024, 11, 4)):
        path = weatherdata.file_path(source, "Toronto", day)
        doc = json.loads(path.read_text())
        doc["hourly"]["temperature_2m"][0] = -3.25
        path.write_text(json.dumps(doc))

    result = run(source, window="2024-11-03..2024-11-04")
    assert result.verdict().status == "pass", result.verdict().summary
    assert result.rerun and result.landed.files == len(CITIES) * 2
    assert result.transformed.core_deleted == len(CITIES) * 2 * 24
    after_out, after_in = core_rows(fresh, outside), core_rows(fresh, inside)
    assert after_out == before_out  # not even rewritten (same xmin): 2024-11-01 keeps its old value
    assert (
        fresh.execute(
            "SELECT id, payload_sha256 FROM raw.weather_observations WHERE file_date NOT BETWEEN '2024-11-03' AND "
            "'2024-11-04' ORDER BY id"
        ).fetchall()
        == raw_out
    )
    # inside: rebuilt from the source, identical but for the one changed value
    changed = {k for k in before_in if before_in[k][:4] != after_in[k][:4]}
    assert set(before_in) == set(after_in) and len(changed) == 1
    assert after_in[changed.pop()][0] == -3.25
    assert (
        fresh.execute(
            "SELECT count(*) FROM raw.weather_observations WHERE file_date BETWEEN '2024-11-03' AND '2024-11-04'"
        ).fetchone()[0]
        == len(CITIES) * 2
    )

    # the window again, the source unchanged: rebuilt identically
    again = run(source, window="2024-11-03..2024-11-04")
    assert {k: v[:4] for k, v in core_rows(fresh, inside).items()} == {k: v[:4] for k, v in after_in.items()}
    assert core_rows(fresh, outside) == before_out
    assert again.marts[0].after.rows == len(CITIES) * DAYS


def test_bad_window_is_refused(tmp_path):
    from opsbook.run.params import validate

    with pytest.raises(UsageError, match="not a day window"):
        validate(refresh_marts.Params, {"window": "2024-11-01..soon"})
    with pytest.raises(UsageError, match="ends before it starts"):
        validate(refresh_marts.Params, {"window": "2024-11-07..2024-11-01"})
    window = validate(refresh_marts.Params, {"source": str(tmp_path), "window": "2024-11-03"}).window
    assert (window.first, window.last) == (dt.date(2024, 11, 3), dt.date(2024, 11, 3))


def test_checkpoint_failure_blocks_the_refresh_and_exits_1(fresh, source, tmp_path):
    assert run(source).verdict().status == "pass"
    marts_before = mart_rows(fresh)
    planted = tmp_path / "planted"
    shutil.copytree(source, planted)
    path = weatherdata.file_path(planted, "Vancouver", dt.date(2024, 11, 6))
    doc = json.loads(path.read_text())
    doc["hourly"]["temperature_2m"][12] = 99.0
    path.write_text(json.dumps(doc))

    done = run_cli("refresh_marts", "-p", f"source={planted}", "--json")
    assert done.code == 1, done.stderr
    out = done.json()
    assert out["status"] == "fail" and out["reports"]["html"]
    assert "temperature_range" in out["summary"] and "NOT refreshed" in out["summary"]
    # core holds the bad value (for the analyst to see); the marts do not
    assert fresh.execute("SELECT count(*) FROM core.weather WHERE temperature_celsius = 99").fetchone()[0] == 1
    assert mart_rows(fresh) == marts_before
    assert fresh.execute("SELECT max(max_temperature_celsius) FROM mart.daily_weather_aggregates").fetchone()[0] < 60

    # the same failure, read from the result: the failing row is sampled
    result = run(planted)
    check = next(c for c in result.checkpoint.checks if c.name == "temperature_range")
    assert check.status == "fail" and check.failing[0]["temperature_celsius"] == 99.0
    assert result.marts[0].after is None and result.stopped == "checkpoint"


def test_cli_on_the_demo_passes_and_the_mart_matches_core(fresh, reports_dir):
    # the demo source against the test database: allowed explicitly
    done = run_cli("refresh_marts", "-f", "params/demo/warehouse/refresh_marts.yaml", "-p", "allow_demo=true", "--json")
    assert done.code == 0, done.stderr
    demo = weatherdata.ensure_demo()
    files = len(list(demo.rglob("*.json")))
    assert fresh.execute("SELECT count(*) FROM raw.weather_observations").fetchone()[0] == files
    # the planted malformed files are quarantined, and the run still passes
    quarantined = {r[0] for r in fresh.execute("SELECT source_file FROM raw.weather_rejected").fetchall()}
    assert quarantined == {
        f"{city}/{weatherdata.FIRST_DAY + dt.timedelta(days=d)}.json" for city, d in weatherdata.MALFORMED
    }
    direct = fresh.execute(
        """SELECT w.location_id, l.location_name, (w.observed_at AT TIME ZONE 'UTC')::date,
                  min(temperature_celsius), max(temperature_celsius), round(avg(temperature_celsius)::numeric, 2),
                  round(sum(precipitation_mm)::numeric, 2), round(avg(humidity)::numeric, 1), max(wind_speed_kmh),
                  count(*)
           FROM core.weather w JOIN core.location l USING (location_id) GROUP BY 1, 2, 3 ORDER BY 1, 3"""
    ).fetchall()
    assert mart_rows(fresh) == direct and len(direct) > 40
    assert fresh.execute(
        "SELECT status FROM opsbook.runs WHERE procedure = 'refresh_marts' ORDER BY started_at DESC LIMIT 1"
    ).fetchone() == ("success",)
    assert list(reports_dir.rglob("*refresh_marts*.html"))


def test_verdict_names_the_marts_left_as_they_were(tmp_path):
    from opsbook.checks import CheckResult, SuiteResult
    from opsbook.warehouse.checkpoint import Checkpoint
    from opsbook.warehouse.land import Found, Landed
    from opsbook.warehouse.marts import MartRefresh, MartState
    from opsbook.warehouse.transform import Transformed

    days = Days(dt.date(2024, 11, 1), dt.date(2024, 11, 2))
    plan = refresh_marts.Plan(refresh_marts.Params(source=str(tmp_path)), str(tmp_path), Found([], days, 0))
    result = refresh_marts.Result(
        plan,
        landed=Landed(files=2, bytes=100, new=2, already=0),
        transformed=Transformed(files=2, hours=48),
        checkpoint=Checkpoint(
            days,
            SuiteResult(
                [
                    CheckResult(
                        "humidity_range",
                        "range",
                        "error",
                        "fail",
                        "2 of 48 rows out of range (min 12.00, max 140.00)",
                        "humidity between 0 and 100",
                        "2 of 48 rows violate humidity between 0 and 100",
                    )
                ],
                [],
                None,
                0.0,
                str(days),
            ),
        ),
        marts=(MartRefresh("mart.daily_weather_aggregates", MartState(True, 10, days.first, days.last)),),
    )
    assert result.stopped == "checkpoint"
    verdict: Verdict = result.verdict()
    assert verdict.status == "fail" and verdict.anchor == "checkpoint"
    assert "humidity_range: 2 of 48" in verdict.summary and "10 rows, 2024-11-01..2024-11-02" in verdict.summary


def test_the_steps_one_by_one_as_the_notebook_runs_them(fresh, source, tmp_path):
    """Landing stages only; the transform writes raw and core; a change of core by another run
    between the checkpoint and the refresh is checked again before the marts change."""
    ctx = context.make("refresh_marts", source=str(source))
    plan = refresh_marts.plan(ctx)
    assert len(plan.found.files) == len(CITIES) * DAYS and str(plan.found.days) == "2024-11-01..2024-11-06"

    landed = refresh_marts.land(ctx, plan)
    assert landed.landed.new == len(CITIES) * DAYS
    assert fresh.execute("SELECT count(*) FROM raw.weather_observations").fetchone()[0] == 0
    again = refresh_marts.land(ctx, plan)  # safe to run again: the run's staged files are replaced
    assert fresh.execute("SELECT count(*) FROM raw.weather_landing").fetchone()[0] == len(CITIES) * DAYS

    transformed = refresh_marts.transform(ctx, again)
    assert transformed.transformed.inserted == len(CITIES) * DAYS * 24
    checked = refresh_marts.checkpoint(ctx, transformed)
    assert checked.checkpoint.passed and not checked.marts

    # another run lands a bad value before this one refreshes: the refresh checks core again
    planted = tmp_path / "planted"
    shutil.copytree(source, planted)
    path = weatherdata.file_path(planted, "Toronto", dt.date(2024, 11, 2))
    doc = json.loads(path.read_text())
    doc["hourly"]["temperature_2m"][3] = 99.0
    path.write_text(json.dumps(doc))
    other = context.make("refresh_marts", source=str(planted))
    other_plan = refresh_marts.plan(other)
    refresh_marts.transform(other, refresh_marts.land(other, other_plan))

    result = refresh_marts.refresh(ctx, checked)
    assert result.checkpoint.repeated and result.stopped == "checkpoint"
    assert result.marts[0].after is None and not result.marts[0].before.populated
    assert result.verdict().error is CheckFailed
    assert fresh.execute("SELECT count(*) FROM raw.weather_landing WHERE run_id = %s", (ctx.run_id,)).fetchone()[0] == 0


def test_a_step_waits_for_no_one_another_run_holds_the_warehouse(fresh, source, db):
    from opsbook.warehouse import schema

    ctx = context.make("refresh_marts", source=str(source))
    plan = refresh_marts.plan(ctx)
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (schema.LOCK,))
    try:
        with pytest.raises(LockHeld, match="refresh_marts:weather"):
            refresh_marts.land(ctx, plan)
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (schema.LOCK,))
    assert refresh_marts.run(ctx, plan).verdict().status == "pass"
