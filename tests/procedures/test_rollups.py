"""rollups against a real PostgreSQL: hourly and daily tables from the 15-minute readings."""

import datetime as dt

import pandas as pd
import pytest
from helpers import call, run_cli

from opsbook import datasets
from opsbook.demo import safety as safetydata
from opsbook.errors import UsageError
from opsbook.procedures import rollups
from opsbook.run import context
from opsbook.trafficsafety import dualwrite

HOURLY, DAILY = "safety_indices_hourly", "safety_indices_daily"

pytestmark = pytest.mark.integration
TZ = "America/Toronto"
WINDOW = "2025-11-01..2025-11-07"  # 2025-11-02 is the 25-hour day: clocks went back at 02:00
TABLE_HASH = """SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} t"""


@pytest.fixture
def readings(db) -> pd.DataFrame:
    """Four intersections' readings from 2025-10-31 to 2025-11-08 (UTC), missing intervals included."""
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")
    spec = datasets.get("safety_indices")
    dualwrite.ensure_tables(db, spec)
    table, _ = safetydata.readings(dt.date(2025, 10, 31), 9, count=4)
    assert dualwrite.write_postgres(spec, table) == table.num_rows
    return table.to_pandas()


def build(window: str = WINDOW, **params) -> rollups.Result:
    return call("rollups", window=window, **params)


def daily_rows(db) -> pd.DataFrame:
    rows = db.execute(
        "SELECT intersection_id, date, hours_with_data, intervals, expected_intervals, total_volume, "
        "peak_hour, peak_si, data_quality_score FROM safety_indices_daily ORDER BY 1, 2"
    ).fetchall()
    columns = ["intersection_id", "date", "hours", "intervals", "expected", "volume", "peak_hour", "peak_si", "score"]
    return pd.DataFrame(rows, columns=columns).set_index(["intersection_id", "date"])


def expected_from_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """The daily rollup computed independently: local days, local hours, peak = the highest hourly mean."""
    # Toronto's offsets are whole hours: a local hour starts on a UTC hour
    frame = frame.assign(day=frame["timestamp"].dt.tz_convert(TZ).dt.date, hour=frame["timestamp"].dt.floor("h"))
    frame = frame[(frame.day >= dt.date(2025, 11, 1)) & (frame.day <= dt.date(2025, 11, 7))]
    hourly = frame.groupby(["intersection_id", "day", "hour"])["combined_index_eb"].mean().reset_index()
    peaks = hourly.sort_values(["combined_index_eb", "hour"], ascending=[False, True]).drop_duplicates(
        ["intersection_id", "day"]
    )
    peaks = peaks.assign(peak_hour=peaks.hour.dt.tz_convert(TZ).dt.hour).set_index(["intersection_id", "day"])
    days = frame.groupby(["intersection_id", "day"]).agg(
        intervals=("timestamp", "size"), volume=("traffic_volume", "sum"), hours=("hour", "nunique")
    )
    return days.join(peaks[["peak_hour", "combined_index_eb"]].rename(columns={"combined_index_eb": "peak_si"}))


def test_daily_rollup_and_peak_hours_match_an_independent_computation(readings, db):
    result = build()
    assert result.verdict().status == "pass", result.verdict().summary
    assert all(c.status == "pass" for c in result.checks) and len(result.checks) == 4
    got = daily_rows(db)
    want = expected_from_pandas(readings)
    want.index = want.index.set_names(["intersection_id", "date"])
    assert len(got) == len(want) == 4 * 7
    assert got["intervals"].tolist() == want["intervals"].tolist()
    assert got["volume"].tolist() == want["volume"].tolist()
    assert got["hours"].tolist() == want["hours"].tolist()
    assert got["peak_hour"].tolist() == want["peak_hour"].tolist()
    assert got["peak_si"].to_numpy() == pytest.approx(want["peak_si"].to_numpy(), rel=1e-9)
    # the day clocks went back has 25 hours and 100 intervals; the others 24 and 96
    expected = got["expected"].groupby(level="date").first()
    assert expected[dt.date(2025, 11, 2)] == 100
    assert set(expected.drop(dt.date(2025, 11, 2))) == {96}
    assert got.xs(dt.date(2025, 11, 2), level="date")["hours"].max() == 25
    assert (got["score"] == got["intervals"] / got["expected"]).all()
    # every reading of the window is in exactly one hourly row
    hourly = db.execute(
        "SELECT sum(intervals)::bigint, sum(total_volume)::bigint, count(*) FROM safety_indices_hourly"
    ).fetchone()
    assert hourly[:2] == (int(want["intervals"].sum()), int(want["volume"].sum()))
    assert result.readings == want["intervals"].sum() and result.hourly_rows == hourly[2]


def test_a_rerun_gives_the_same_tables_and_leaves_other_days_alone(readings, db):
    build()
    before = {t: db.execute(TABLE_HASH.format(t)).fetchone()[0] for t in (HOURLY, DAILY)}
    build()
    assert {t: db.execute(TABLE_HASH.format(t)).fetchone()[0] for t in before} == before
    # a one-day rerun after a late correction changes that day only
    db.execute(
        "UPDATE safety_indices_realtime SET combined_index_eb = 1000 WHERE intersection_id = 1001 "
        "AND \"timestamp\" >= '2025-11-04 14:00+00' AND \"timestamp\" < '2025-11-04 15:00+00'"
    )
    others = "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM safety_indices_daily t WHERE date <> %s"
    untouched = db.execute(others, (dt.date(2025, 11, 4),)).fetchone()[0]
    result = build("2025-11-04")
    assert result.daily_rows == 4 and result.verdict().status == "pass"
    assert db.execute(others, (dt.date(2025, 11, 4),)).fetchone()[0] == untouched
    peak = db.execute(
        "SELECT peak_hour, peak_si FROM safety_indices_daily WHERE intersection_id = 1001 AND date = '2025-11-04'"
    ).fetchone()
    assert peak == (9, 1000)  # 14:00 UTC is 09:00 in Toronto


def test_missing_intervals_are_tolerated_and_low_coverage_is_a_warning(readings, db):
    # 2025-11-05 (local) keeps a handful of readings; 2025-11-06 none at all
    db.execute(
        "DELETE FROM safety_indices_realtime WHERE (\"timestamp\" AT TIME ZONE %s)::date = '2025-11-05' "
        'AND extract(hour FROM "timestamp" AT TIME ZONE %s) NOT IN (7, 8)',
        (TZ, TZ),
    )
    db.execute("DELETE FROM safety_indices_realtime WHERE (\"timestamp\" AT TIME ZONE %s)::date = '2025-11-06'", (TZ,))
    result = build()
    verdict = result.verdict()
    assert verdict.status == "warn"
    assert "2025-11-05" in verdict.summary and "2025-11-06" in verdict.summary
    days = {d["day"]: d for d in result.days}
    assert days[dt.date(2025, 11, 6)]["intersections"] == 0 and days[dt.date(2025, 11, 6)]["status"] == "warn"
    thin = days[dt.date(2025, 11, 5)]
    assert thin["status"] == "warn" and thin["intervals"] <= 4 * 8 and thin["coverage"] < 0.1
    assert days[dt.date(2025, 11, 4)]["status"] == "pass"
    assert all(c.status == "pass" for c in result.checks)
    peaks = db.execute("SELECT DISTINCT peak_hour FROM safety_indices_daily WHERE date = '2025-11-05'").fetchall()
    assert {h for (h,) in peaks} <= {7, 8}


def test_cli_pass_no_readings_and_lock(readings, db):
    done = run_cli("rollups", "-f", "params/demo/trafficsafety/rollups.yaml", "--json")
    assert done.code == 0, done.stderr
    assert done.json()["status"] == "pass"
    assert db.execute("SELECT count(*) FROM safety_indices_daily").fetchone()[0] == 28

    empty = run_cli("rollups", "-p", "window=2030-01-01..2030-01-02", "--json")
    assert empty.code == 1, empty.stderr
    assert "no safety_indices readings in 2030-01-01..2030-01-02" in empty.json()["summary"]

    key = rollups.locks(rollups.Params())[0]
    assert key == "opsbook.rollups:safety_indices"
    db.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
    try:
        held = run_cli("rollups", "--json")
        assert held.code == 4, held.stderr
        assert key in held.json()["error"]
    finally:
        db.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def test_the_window_is_required_and_typed():
    with pytest.raises(UsageError, match="give the days to build"):
        context.make("rollups", window="")
    with pytest.raises(UsageError, match="not a day window"):
        context.make("rollups", window="2025-11-31")
    with pytest.raises(UsageError, match="not a time zone"):
        context.make("rollups", timezone="Mars/Olympus")
    ctx = context.make("rollups", window="2025-11-03")
    assert (ctx.params.window.first, ctx.params.window.last) == (dt.date(2025, 11, 3),) * 2


def test_a_rollup_that_disagrees_with_the_readings_fails_its_checks(readings, db):
    from opsbook.stores import postgres
    from opsbook.trafficsafety import rollups as building
    from opsbook.windows import Days

    assert build().verdict().status == "pass"
    # what a broken build would leave: one hour's volume off, one day's peak off
    db.execute(
        "UPDATE safety_indices_hourly SET total_volume = total_volume + 1 WHERE intersection_id = 1001 "
        "AND hour_timestamp = '2025-11-03 15:00+00'"
    )
    db.execute("UPDATE safety_indices_daily SET peak_si = peak_si - 1 WHERE intersection_id = 1002")
    window = Days.parse(WINDOW)
    with postgres.connection(autocommit=True) as conn:
        found = building.check(conn, datasets.get("safety_indices"), window, building.window_values(window, TZ, 75))
    status = {c.name: c for c in found}
    assert {n: c.status for n, c in status.items()} == {
        "hourly_rows_match_readings": "fail",
        "daily_rows_match_readings": "pass",
        "daily_volume_is_sum_of_hours": "fail",
        "peak_hour_has_highest_index": "fail",
    }
    hourly = status["hourly_rows_match_readings"]
    assert hourly.failing_count == 1 and hourly.failing[0]["intersection_id"] == 1001
    assert hourly.failing[0]["total_volume"] == hourly.failing[0]["readings_volume"] + 1
    assert status["peak_hour_has_highest_index"].failing_count == 7  # each day of intersection 1002
    assert {r["intersection_id"] for r in status["peak_hour_has_highest_index"].failing} == {1002}
    result = rollups.Result(rollups.Params(), readings=1, checks=found)
    verdict = result.verdict()
    assert verdict.status == "fail" and "hourly_rows_match_readings: 1 row(s) disagree" in verdict.summary


def table_hash(db, table: str, where: str = "true") -> str:
    return db.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t WHERE {where}").fetchone()[
        0
    ]


def test_a_day_whose_readings_are_gone_keeps_its_rollups_and_warns(readings, db):
    """Retention purges the readings after 48 hours; rebuilding an older day must not replace
    its hourly and daily rows with nothing."""
    assert build().verdict().status == "pass"
    hourly, daily = table_hash(db, HOURLY), table_hash(db, DAILY)
    db.execute("DELETE FROM safety_indices_realtime WHERE \"timestamp\" < '2025-11-06 05:00+00'")  # what retention does

    purged = build("2025-11-03")
    verdict = purged.verdict()
    assert verdict.status == "warn" and verdict.exit_code == 0
    assert verdict.summary.startswith("nothing rebuilt: 1 day(s) without readings kept their rollups as they were")
    assert "2025-11-03: purged by retention, or never arrived" in verdict.summary
    assert (table_hash(db, HOURLY), table_hash(db, DAILY)) == (hourly, daily)

    # the whole window: the days that still have readings are rebuilt (to the same rows), the
    # others are kept; every row reads as before
    again = build()
    assert again.verdict().status == "warn" and again.kept_days == [dt.date(2025, 11, d) for d in range(1, 6)]
    assert {c.name: c.status for c in again.checks} == dict.fromkeys(building_checks(), "pass")
    assert (table_hash(db, HOURLY), table_hash(db, DAILY)) == (hourly, daily)


def test_a_day_partly_purged_is_rebuilt_from_its_hours(readings, db):
    """The purge cutoff falls inside a local day: the day's early hours keep their hourly rows,
    the rest are rebuilt, and the day (built from the hourly table) reads as before."""
    assert build().verdict().status == "pass"
    daily = table_hash(db, DAILY)
    db.execute("DELETE FROM safety_indices_realtime WHERE \"timestamp\" < '2025-11-04 17:00+00'")  # mid-day in Toronto
    result = build("2025-11-04")
    assert result.verdict().status == "pass", result.verdict().summary
    assert table_hash(db, DAILY) == daily


def building_checks() -> list[str]:
    from opsbook.trafficsafety.rollups import CHECKS

    return list(CHECKS)


def test_a_day_whose_hours_are_partly_purged_keeps_its_daily_row(readings, db):
    """Hourly retention cuts at midnight UTC, inside a Toronto day: with its readings gone too,
    rebuilding that day must not replace its whole-day row with one from the hours left."""
    assert build().verdict().status == "pass"
    daily = table_hash(db, DAILY)
    db.execute("DELETE FROM safety_indices_realtime WHERE \"timestamp\" < '2025-11-06 05:00+00'")
    db.execute("DELETE FROM safety_indices_hourly WHERE hour_timestamp < '2025-11-04 00:00+00'")
    result = build()
    assert result.verdict().status == "warn", result.verdict().summary
    assert all(c.status == "pass" for c in result.checks), [(c.name, c.message) for c in result.checks]
    assert table_hash(db, DAILY) == daily
