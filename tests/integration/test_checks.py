"""Each check type against a real PostgreSQL (and Redis): a passing and a failing case."""

import gzip
import json

import pytest
from helpers import postgis as require_postgis

from opsbook import checks
from opsbook.checks import spec as s
from opsbook.checks.context import Context
from opsbook.checks.geometry import run_geometry
from opsbook.datasets import Column, DatasetSpec, Partition
from opsbook.windows import Years

pytestmark = pytest.mark.integration

SPEC = DatasetSpec(
    name="ck",
    table="ck_events",
    rejected_table="ck_events_rejected",
    partition=Partition(column="day"),
    columns=[
        Column(name="id", type="integer"),
        Column(name="day", type="date"),
        Column(name="amount", type="numeric", precision=10, scale=2),
    ],
)


@pytest.fixture(scope="module")
def events(database_url):
    from opsbook.stores import postgres

    with postgres.connection(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ck_events, ck_parent, ck_child, ck_geo CASCADE")
        conn.execute(
            "CREATE TABLE ck_events (id int, day date, amount numeric(10,2), kind text, note text, seen timestamptz)"
        )
        # Jan and Mar 2016, 10 rows a day; February is missing; one NULL, one odd kind, one negative
        conn.execute("""INSERT INTO ck_events
            SELECT row_number() OVER (), d::date, 10.00, 'ok', NULL, now() - interval '2 hours'
            FROM generate_series('2016-01-01'::date, '2016-03-31', '1 day') d, generate_series(1, 10) n
            WHERE extract(month FROM d) <> 2""")
        conn.execute("UPDATE ck_events SET amount = NULL WHERE id = 5")
        conn.execute("UPDATE ck_events SET kind = 'odd' WHERE id = 7")
        conn.execute("UPDATE ck_events SET amount = -3 WHERE id = 9")
        conn.execute("INSERT INTO ck_events VALUES (7, '2016-01-05', 10, 'ok', NULL, now())")  # id 7 twice
        conn.execute("CREATE TABLE ck_parent (id int)")
        conn.execute("INSERT INTO ck_parent SELECT generate_series(1, 3)")
        conn.execute("CREATE TABLE ck_child (parent_id int)")
        conn.execute("INSERT INTO ck_child VALUES (1), (2), (NULL), (4)")
        yield conn


def run(conn, *items, years=(2016,), reference=None, references=None):
    suite = s.Suite(
        dataset="ck", checks=list(items), references=references or {}, sample_columns=["id", "day", "amount"]
    )
    return {r.name: r for r in checks.run_suite(conn, SPEC, suite, Years(tuple(years)), reference).results}


def test_coverage_lists_the_missing_months(events):
    r = run(events, s.Coverage(name="months", type="coverage", grain="month"))["months"]
    assert r.status == "fail"
    assert "2016-02" in r.message
    assert [f["missing partition"] for f in r.failing][:1] == ["2016-02"]
    # April onwards is missing too (the window is the whole of 2016)
    assert r.failing_count == 10
    ok = run(events, s.Coverage(name="y", type="coverage", grain="year"))["y"]
    assert ok.status == "pass"


def test_row_count_per_month(events):
    result = run(events, s.RowCount(name="n", type="row_count", per="month", min=300, max=320), years=[2016])["n"]
    assert result.status == "fail"
    months = {f["partition"]: f["rows"] for f in result.failing}
    assert months["2016-02"] == 0 and "2016-01" not in months and "2016-03" not in months
    whole = run(events, s.RowCount(name="n", type="row_count", min=1, max=1000))["n"]
    assert whole.status == "pass" and whole.observed == "621 rows"


def test_expected_totals_name_the_partition_and_the_exact_difference(events, tmp_path):
    # January: 31 days x 10 rows + the duplicate = 311 rows; 311 x 10.00 less the NULL (10.00) and
    # the -3 that was 10.00 (13.00) = 3087.00. March: 310 rows, 3100.00; the reference says 3090.00.
    reference = tmp_path / "ref.csv"
    reference.write_text("year,month,rows,amount\n2016,1,311,3087.00\n2016,3,310,3090.00\n")
    check = s.ExpectedTotals(
        name="totals",
        type="expected_totals",
        grain="month",
        measures=[
            s.Measure(measure="count", reference_column="rows"),
            s.Measure(measure="sum", column="amount", reference_column="amount"),
        ],
    )
    r = run(events, check, reference="file", references={"file": s.Reference(csv=str(reference))})["totals"]
    assert r.status == "fail"
    assert [(f["partition"], f["measure"], f["difference"]) for f in r.failing] == [
        ("2016-03", "sum of amount", "+10.00")
    ]
    assert r.message == "2016-03 sum of amount: 3,100.00, expected 3,090.00 (off by +10.00)"
    assert r.observed == "3 of 4 totals match"


def test_expected_totals_tolerance(events, tmp_path):
    reference = tmp_path / "ref.csv"
    reference.write_text("year,rows\n2016,600\n")  # 621 rows in 2016
    check = s.ExpectedTotals(
        name="t", type="expected_totals", grain="year", measures=[s.Measure(measure="count", reference_column="rows")]
    )
    off = run(events, check, reference="r", references={"r": s.Reference(csv=str(reference))})["t"]
    assert off.status == "fail" and "2016 rows: 621, expected 600 (off by +21)" in off.message
    loose = s.Reference(csv=str(reference), tolerance=s.Tolerance(abs=21))
    assert run(events, check, reference="r", references={"r": loose})["t"].status == "pass"
    relative = s.Reference(csv=str(reference), tolerance=s.Tolerance(rel=0.03))  # 3 % of 600 = 18 < 21
    assert run(events, check, reference="r", references={"r": relative})["t"].status == "fail"
    assert (
        run(
            events,
            check,
            reference="r",
            references={"r": s.Reference(csv=str(reference), tolerance=s.Tolerance(rel=0.04))},
        )["t"].status
        == "pass"
    )


def test_not_null_range_accepted_values_and_row_condition(events):
    r = run(
        events,
        s.NotNull(name="nn", type="not_null", columns=["day", "amount"]),
        s.Range(name="rng", type="range", column="amount", min=0, max=100),
        s.AcceptedValues(name="kinds", type="accepted_values", column="kind", values=["ok"]),
        s.RowCondition(name="cond", type="row_condition", condition="amount >= 0", severity="warn"),
    )
    assert r["nn"].status == "fail" and r["nn"].failing_count == 1 and r["nn"].failing[0]["id"] == 5
    assert r["rng"].status == "fail" and r["rng"].failing_count == 1 and r["rng"].failing[0]["id"] == 9
    assert r["kinds"].status == "fail" and r["kinds"].failing[0]["id"] == 7
    # NULL fails a row condition; the severity makes it a warning
    assert r["cond"].status == "warn" and r["cond"].failing_count == 2
    assert {row["id"] for row in r["cond"].failing} == {5, 9}


def test_unique_is_null_safe(events):
    r = run(events, s.Unique(name="u", type="unique", columns=["id"]))["u"]
    assert r.status == "fail" and r.failing == [{"id": 7, "rows": 2}]
    nulls = run(events, s.Unique(name="u", type="unique", columns=["note"]))["u"]
    assert nulls.status == "fail"  # every note is NULL: NULLs compare equal here
    assert nulls.failing[0]["note"] is None and nulls.failing[0]["rows"] == 621


def test_referential(events):
    check = s.Referential(
        name="fk",
        type="referential",
        table="ck_child",
        columns=["parent_id"],
        parent="ck_parent",
        parent_columns=["id"],
    )
    r = run(events, check)["fk"]
    assert r.status == "fail" and r.failing_count == 1 and r.failing == [{"parent_id": 4}]


def test_freshness_and_database_size(events):
    r = run(
        events,
        s.Freshness(name="fresh", type="freshness", column="seen", max_age_hours=24),
        s.Freshness(
            name="stale", type="freshness", column="seen", max_age_hours=1, severity="warn", where="day <> '2016-01-05'"
        ),  # leaves out the row seen just now
        s.DatabaseSize(name="size", type="database_size", max_gb=100),
        s.DatabaseSize(name="tiny", type="database_size", max_gb=0.000001),
    )
    assert r["fresh"].status == "pass"
    assert r["stale"].status == "warn" and "hours old" in r["stale"].message
    assert r["size"].status == "pass" and r["tiny"].status == "fail"


def test_a_check_that_cannot_run_is_an_error_and_the_others_still_run(events):
    r = run(
        events,
        s.NotNull(name="gone", type="not_null", columns=["x"], table="no_such_table"),
        s.Coverage(name="months", type="coverage", grain="year"),
        s.RowCondition(name="bad_sql", type="row_condition", condition="no_such_column > 0"),
    )
    assert r["gone"].status == "error" and "no_such_table" in r["gone"].message
    assert r["bad_sql"].status == "error" and "no_such_column" in r["bad_sql"].message
    assert r["months"].status == "pass"


def test_redis_key(events, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    payload = {"features": [{"id": 1, "count": 5}], "total": 5}
    client.set("opsbook:test:payload", gzip.compress(json.dumps(payload).encode()), ex=3600)
    client.set("opsbook:test:bad", json.dumps({"features": "nope"}))
    schema = {
        "type": "object",
        "required": ["features", "total"],
        "properties": {"features": {"type": "array"}, "total": {"type": "integer"}},
    }
    r = run(
        events,
        s.RedisKey(
            name="good",
            type="redis_key",
            key="opsbook:test:payload",
            json_schema=schema,
            require_ttl=True,
            max_bytes=10_000,
        ),
        s.RedisKey(name="bad", type="redis_key", key="opsbook:test:bad", json_schema=schema, require_ttl=True),
        s.RedisKey(name="gone", type="redis_key", key="opsbook:test:missing"),
    )
    assert r["good"].status == "pass", r["good"].message
    assert r["bad"].status == "fail"
    assert "no TTL set" in r["bad"].message and "schema violation" in r["bad"].message
    assert {f["path"] for f in r["bad"].failing} == {"(root)", "features"}
    assert r["gone"].status == "fail" and "no key" in r["gone"].message
    client.delete("opsbook:test:payload", "opsbook:test:bad")


def test_geometry_postgis_and_shapely_agree(events):
    require_postgis(events)  # skips (outside CI) when the server has no PostGIS
    events.execute("DROP TABLE IF EXISTS ck_geo")
    events.execute("CREATE TABLE ck_geo (id int, geom geometry, lat float8, lon float8)")
    events.execute("""INSERT INTO ck_geo VALUES
        (1, ST_SetSRID(ST_MakePoint(-79.38, 43.65), 4326), 43.65, -79.38),
        (2, ST_GeomFromText('POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))', 4326), 43.7, -79.4),
        (3, ST_SetSRID(ST_MakePoint(-79.38, 43.65), 3857), 95, -79.4),
        (4, NULL, NULL, -79.4)""")
    check = s.Geometry(name="geo", type="geometry", table="ck_geo", column="geom", srid=4326)
    ctx = Context(events, SPEC, s.Suite(dataset="ck", checks=[]), Years(), None)
    postgis = run_geometry(ctx, check, engine="postgis")
    shapely = run_geometry(ctx, check, engine="shapely")
    assert (postgis.engine, shapely.engine) == ("PostGIS", "shapely")
    assert postgis.failing_count == shapely.failing_count == 3
    assert postgis.status == shapely.status == "fail"
    points = run_geometry(ctx, s.Geometry(name="pts", type="geometry", table="ck_geo", lat="lat", lon="lon"))
    assert points.failing_count == 2
    events.execute("DROP TABLE ck_geo")


def test_window_prunes_to_the_years_asked(events):
    r = run(events, s.RowCount(name="n", type="row_count", min=1), years=[2017])["n"]
    assert r.status == "fail" and r.observed == "0 rows"
    assert run(events, s.RowCount(name="n", type="row_count", min=1), years=[2015, 2016])["n"].observed == "621 rows"


def test_geometry_without_postgis_reads_wkb_with_shapely(events):
    """The path a server without PostGIS takes: WKB in a bytea column, checked by shapely."""
    import shapely

    points = [
        shapely.Point(-79.38, 43.65),
        shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]),  # a bow tie: invalid
        shapely.set_srid(shapely.Point(-79.38, 43.65), 3857),
    ]
    events.execute("DROP TABLE IF EXISTS ck_wkb")
    events.execute("CREATE TABLE ck_wkb (id int, geom bytea)")
    with events.cursor() as cur:
        cur.executemany(
            "INSERT INTO ck_wkb VALUES (%s, %s)",
            [
                (i, shapely.to_wkb(shapely.set_srid(g, shapely.get_srid(g) or 4326), include_srid=True))
                for i, g in enumerate(points)
            ]
            + [(9, None)],
        )
    ctx = Context(events, SPEC, s.Suite(dataset="ck", checks=[]), Years(), None)
    result = run_geometry(ctx, s.Geometry(name="geo", type="geometry", table="ck_wkb", column="geom"), engine="shapely")
    assert result.engine == "shapely" and result.failing_count == 3 and result.status == "fail"
    assert {f["problem"].split("[")[0].strip() for f in result.failing} >= {"NULL geometry", "SRID 3857"}
    events.execute("DROP TABLE ck_wkb")


def test_an_empty_window_checks_every_year_the_table_holds(events):
    suite = s.Suite(dataset="ck", checks=[s.Coverage(name="y", type="coverage", grain="year")])
    events.execute("INSERT INTO ck_events VALUES (1000, '2014-06-01', 1, 'ok', NULL, now())")
    try:
        result = checks.run_suite(events, SPEC, suite, Years(), None)
        assert result.window == "every partition the table holds: 2014-2016"
        (years,) = result.results
        assert years.status == "fail" and years.message == "missing years: 2015"
    finally:
        events.execute("DELETE FROM ck_events WHERE id = 1000")


def test_a_day_window(events):
    from opsbook.windows import Days

    suite = s.Suite(
        dataset="ck",
        checks=[
            s.Coverage(name="days", type="coverage", grain="day"),
            s.RowCount(name="n", type="row_count", per="day", min=10, max=10),
        ],
    )
    result = checks.run_suite(events, SPEC, suite, Days.parse("2016-01-30..2016-02-02"), None)
    found = {r.name: r for r in result.results}
    assert found["days"].message == "missing days: 2016-02-01, 2016-02-02"
    assert {f["partition"] for f in found["n"].failing} == {"2016-02-01", "2016-02-02"}
    assert result.window == "2016-01-30..2016-02-02"


def test_a_partition_without_reference_figures_warns(events, tmp_path):
    reference = tmp_path / "ref.csv"
    reference.write_text("year,month,rows\n2016,1,311\n")  # March has no figure
    check = s.ExpectedTotals(
        name="t", type="expected_totals", grain="month", measures=[s.Measure(measure="count", reference_column="rows")]
    )
    r = run(events, check, reference="r", references={"r": s.Reference(csv=str(reference))})["t"]
    assert r.status == "warn" and "no reference for 2016-03" in r.message
    reference.write_text("year,month,rows\n2016,1,300\n")  # and January is wrong: that fails
    r = run(events, check, reference="r2", references={"r2": s.Reference(csv=str(reference))})["t"]
    assert (
        r.status == "fail"
        and "2016-01 rows: 311, expected 300" in r.message
        and "no reference for 2016-03" in r.message
    )


def test_empty_query_passes_when_no_row_breaks_the_rule(events):
    r = run(
        events,
        s.EmptyQuery(name="neg", type="empty_query", query="SELECT id, amount FROM ck_events WHERE amount < 0"),
        s.EmptyQuery(
            name="big", type="empty_query", query="SELECT id FROM ck_events WHERE amount > %(limit)s", description="x"
        ),
    )
    assert r["neg"].status == "fail" and r["neg"].failing == [{"id": 9, "amount": -3}] and r["neg"].failing_count == 1
    suite = s.Suite(
        dataset="ck",
        checks=[
            s.EmptyQuery(name="big", type="empty_query", query="SELECT id FROM ck_events WHERE amount > %(limit)s")
        ],
    )
    (big,) = checks.run_suite(events, SPEC, suite, Years((2016,)), None, params={"limit": 100}).results
    assert big.status == "pass"


def test_free_disk_says_what_it_measured(events):
    r = run(
        events,
        s.FreeDisk(name="roomy", type="free_disk", min_gb=0.001),
        s.FreeDisk(name="greedy", type="free_disk", min_gb=10**9, severity="warn"),
    )
    assert r["roomy"].status == "pass" and "lake:" in r["roomy"].observed and "GB free" in r["roomy"].observed
    assert r["greedy"].status == "warn" and "free" in r["greedy"].message


def test_redis_totals_compare_a_payload_with_postgresql(events, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    query = "SELECT extract(month FROM day)::text AS key, count(*) AS rows FROM ck_events GROUP BY 1"
    client.set("opsbook:test:summary", json.dumps({"months": {"1": {"rows": 311}, "3": {"rows": 310}}}))
    client.set("opsbook:test:stale", gzip.compress(json.dumps({"months": {"1": {"rows": 300}}}).encode()))
    r = run(
        events,
        s.RedisTotals(
            name="ok",
            type="redis_totals",
            key="opsbook:test:summary",
            per="months",
            totals={"rows": "rows"},
            query=query,
        ),
        s.RedisTotals(
            name="stale",
            type="redis_totals",
            key="opsbook:test:stale",
            per="months",
            totals={"rows": "rows"},
            query=query,
        ),
        s.RedisTotals(name="gone", type="redis_totals", key="opsbook:test:none", totals={"rows": "rows"}, query=query),
    )
    assert r["ok"].status == "pass" and r["ok"].observed == "2 of 2 totals match"
    assert r["stale"].status == "fail"
    assert (
        "1 rows: 300 in Redis, 311 in PostgreSQL" in r["stale"].message
        and "3 rows: None in Redis" in r["stale"].message
    )
    assert r["gone"].status == "fail" and "no key" in r["gone"].message
    client.delete("opsbook:test:summary", "opsbook:test:stale")


def test_every_check_type_of_the_suite_models_is_registered():
    from typing import get_args

    union = get_args(get_args(s.Check)[0])
    modelled = {get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert modelled == set(checks.registered())


# --- a table that is no dataset's: a Target ---------------------------------------------------


@pytest.fixture
def hourly(events):
    """Hourly readings of two sites, 2024-11-01..03 (UTC): site 2 is an hour short on the 2nd,
    site 1 silent on the 3rd; one reading on each side of the window, and an unknown site."""
    events.execute("DROP TABLE IF EXISTS ck_hourly, ck_site")
    events.execute("CREATE TABLE ck_site (site int PRIMARY KEY)")
    events.execute("INSERT INTO ck_site VALUES (1), (2)")
    events.execute("CREATE TABLE ck_hourly (site int, at timestamptz, value float8)")
    events.execute("""INSERT INTO ck_hourly
        SELECT s, h, 20 FROM generate_series(1, 2) s,
               generate_series('2024-11-01 00:00+00'::timestamptz, '2024-11-03 23:00+00', '1 hour') h
        WHERE NOT (s = 2 AND h = '2024-11-02 05:00+00') AND NOT (s = 1 AND h >= '2024-11-03 00:00+00')""")
    events.execute("INSERT INTO ck_hourly VALUES (1, '2024-10-31 23:30+00', 99), (1, '2024-11-04 00:30+00', 99)")
    yield events
    events.execute("DROP TABLE ck_hourly, ck_site")


def run_target(conn, *items, window="2024-11-01..2024-11-03"):
    from opsbook.windows import Days

    suite = s.Suite(dataset="hourly", checks=list(items))
    target = checks.Target("ck_hourly", "at")
    return {r.name: r for r in checks.run_suite(conn, target, suite, Days.parse(window)).results}


def per_site_day(max_share_off=0.0, severity="error"):
    return s.RowsPerGroup(
        name="hours",
        type="rows_per_group",
        group_by=["site"],
        per="day",
        expected=24,
        max_share_off=max_share_off,
        severity=severity,
    )


def test_rows_per_group_lists_the_cells_off(hourly):
    r = run_target(hourly, per_site_day())["hours"]
    # 2 sites x 3 days; site 2 has 23 hours on the 2nd, site 1 none on the 3rd (a cell of 0)
    assert r.status == "fail" and r.failing_count == 2
    assert [(f["site"], str(f["day"]), f["rows"]) for f in r.failing] == [(1, "2024-11-03", 0), (2, "2024-11-02", 23)]
    assert r.observed == "2 of 6 (site, day) cells off (33.3%)"
    assert "over the 0% tolerated" in r.message
    complete = run_target(hourly, per_site_day(), window="2024-11-01")["hours"]
    assert complete.status == "pass" and complete.failing == [] and complete.observed.startswith("0 of 2 ")


def test_rows_per_group_tolerates_a_share_of_cells_off(hourly):
    assert run_target(hourly, per_site_day(max_share_off=0.5))["hours"].status == "warn"  # 33 % within 50 %
    beyond = run_target(hourly, per_site_day(max_share_off=0.2))["hours"]
    assert beyond.status == "fail" and "33.3%; over the 20% tolerated" in beyond.message
    assert run_target(hourly, per_site_day(max_share_off=0.2, severity="warn"))["hours"].status == "warn"
    gone = s.RowsPerGroup(name="gone", type="rows_per_group", group_by=["site"], expected=24, table="no_such")
    assert run_target(hourly, gone)["gone"].status == "error"


def test_a_target_filters_its_window_column_by_utc_days(hourly):
    # the session's zone is not UTC: the window still means UTC days (as the scan groups them)
    hourly.execute("SET TIME ZONE 'America/Toronto'")
    try:
        r = run_target(
            hourly,
            s.RowCount(name="n", type="row_count"),
            s.Range(name="value", type="range", column="value", min=0, max=50),
            s.Referential(name="fk", type="referential", columns=["site"], parent="ck_site", parent_columns=["site"]),
        )
    finally:
        hourly.execute("SET TIME ZONE 'UTC'")
    assert r["n"].observed == f"{2 * 72 - 1 - 24:,} rows"  # the readings on either side are outside
    assert r["value"].status == "pass"  # the two 99s are outside the window
    assert r["fk"].status == "pass"
    hourly.execute("INSERT INTO ck_hourly VALUES (3, '2024-11-02 12:00+00', 20)")
    orphan = run_target(
        hourly,
        s.Referential(name="fk", type="referential", columns=["site"], parent="ck_site", parent_columns=["site"]),
    )["fk"]
    assert orphan.status == "fail" and orphan.failing_count == 1 and orphan.failing[0]["site"] == 3


def test_inside_a_snapshot_a_broken_check_leaves_the_others_theirs(hourly):
    from opsbook.windows import Days

    suite = s.Suite(
        dataset="hourly",
        checks=[
            s.RowCondition(name="bad_sql", type="row_condition", condition="no_such_column > 0"),
            s.NotNull(name="nn", type="not_null", columns=["site"]),
            s.EmptyQuery(name="bad_query", type="empty_query", query="SELECT * FROM no_such_table"),
            s.Unique(name="uq", type="unique", columns=["site", "at"]),
            per_site_day(),
        ],
    )
    with hourly.transaction():
        hourly.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        found = checks.run_suite(hourly, checks.Target("ck_hourly", "at"), suite, Days.parse("2024-11-01..2024-11-03"))
    status = {r.name: r.status for r in found.results}
    assert status == {"bad_sql": "error", "nn": "pass", "bad_query": "error", "uq": "pass", "hours": "fail"}
    assert found.window == "2024-11-01..2024-11-03"


def test_a_target_names_a_table_and_a_column():
    with pytest.raises(ValueError, match="column"):
        checks.Target("core.weather", 'observed_at"; --')
    with pytest.raises(ValueError, match="table"):
        checks.Target("a.b.c", "observed_at")


# --- read-backs -------------------------------------------------------------------------------


def test_read_back_compares_what_was_read_with_the_source():
    from opsbook.windows import Days

    def read_back(name, observed, expected, **more):
        return s.ReadBack(
            name=name,
            type="read_back",
            artifact=f"gs://bucket/{name}.geojson",
            source="PostgreSQL",
            observed=observed,
            expected=expected,
            **more,
        )

    suite = s.Suite(
        dataset="files",
        checks=[
            read_back("same", {"features": 80, "tickets": 4_000}, {"features": 80, "tickets": 4_000}),
            read_back("short", {"features": 79, "tickets": 3_950}, {"features": 80, "tickets": 4_000}),
            read_back("unread", {"features": None}, {"features": 80, "tickets": 4_000}, severity="warn"),
            read_back("close", {"revenue": 100.004}, {"revenue": 100.0}, tolerance=s.Tolerance(abs=0.005)),
        ],
    )
    r = {c.name: c for c in checks.run_suite(None, None, suite, Days()).results}  # reads no table
    assert r["same"].status == "pass" and r["same"].observed == "2 of 2 totals match"
    assert r["short"].status == "fail" and r["short"].failing_count == 2
    assert r["short"].message == (
        "gs://bucket/short.geojson: features: 79 read back, 80 in PostgreSQL (off by -1); "
        "tickets: 3,950 read back, 4,000 in PostgreSQL (off by -50)"
    )
    assert r["unread"].status == "warn" and "features: nothing read back" in r["unread"].message
    assert "tickets: nothing read back, 4,000 in PostgreSQL" in r["unread"].message
    assert r["close"].status == "pass"


def test_redis_totals_per_item_of_a_list(events, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    query = "SELECT kind AS key, count(*) AS rows FROM ck_events WHERE day < %(before)s GROUP BY kind"
    client.set("opsbook:test:items", json.dumps({"items": [{"id": "ok", "rows": 310}, {"id": "odd", "rows": 1}]}))
    client.set("opsbook:test:short", json.dumps({"items": [{"id": "ok", "rows": 310}]}))
    suite = s.Suite(
        dataset="ck",
        checks=[
            s.RedisTotals(
                name=name,
                type="redis_totals",
                key=f"opsbook:test:{name}",
                per="items",
                per_key="id",
                totals={"rows": "rows"},
                query=query,
            )
            for name in ("items", "short")
        ],
    )
    try:
        found = checks.run_suite(events, SPEC, suite, Years((2016,)), params={"before": "2016-02-01"}).results
    finally:
        client.delete("opsbook:test:items", "opsbook:test:short")
    r = {c.name: c for c in found}
    assert r["items"].status == "pass" and r["items"].observed == "2 of 2 totals match"
    assert r["short"].status == "fail" and r["short"].failing == [
        {"group": "odd", "total": "rows", "in Redis": None, "in PostgreSQL": 1}
    ]
    assert r["short"].message.startswith("opsbook:test:short: 1 of 2 totals differ: odd rows: None in Redis")
    with pytest.raises(ValueError, match="per_key"):
        s.RedisTotals(name="x", type="redis_totals", key="k", per_key="id", totals={"a": "a"}, query="SELECT 1")
