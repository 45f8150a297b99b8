"""aggregate against a real PostgreSQL: the yearly tables, skips, force, camera files, failures, locks."""

import shutil
from decimal import Decimal

import pandas as pd
import pytest
from helpers import call, run_cli

from opsbook import config
from opsbook.demo import cameras as democameras
from opsbook.errors import ProcedureFailed
from opsbook.history import ledger, locks, schema
from opsbook.procedures import aggregate
from opsbook.run import context

pytestmark = pytest.mark.integration
DATASET = "toronto_parking_tickets"
YEARLY = "parking_ticket_yearly_locations"
CAMERA_YEARLY = {"red_light": "red_light_yearly_locations", "ase": "ase_yearly_locations"}
TABLES = (YEARLY, *CAMERA_YEARLY.values())


@pytest.fixture
def clean(db):
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected CASCADE")
    db.execute(
        "DROP TABLE IF EXISTS parking_ticket_yearly_locations, red_light_yearly_locations, ase_yearly_locations, "
        "red_light_camera_charges, ase_camera_charges, toronto_address_points CASCADE"
    )
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    return db


@pytest.fixture
def loaded(clean, demo_dir):
    call("load", source=str(demo_dir), years="2016-2017")
    return clean


def run_aggregate(years, cameras="demo", **extra):
    return call("aggregate", years=years, cameras=cameras, allow_demo=True, **extra)


def digest(db, table, year=None):
    """Row count and an order-independent hash of the rows (of one year)."""
    where = f"WHERE year = {int(year)}" if year else ""
    return db.execute(
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {table} t {where}"
    ).fetchone()


def statuses(result) -> dict[int, str]:
    return {y.year: y.status for y in result.years}


def expected_parking_year(db, year: int) -> dict[str, dict]:
    """The yearly row of each location, computed in pandas from the raw tickets and the shipped
    address points (not with the SQL aggregate builds)."""
    rows = db.execute(
        "SELECT location2, set_fine_amount, infraction_description, date_of_infraction FROM parking_tickets "
        "WHERE date_of_infraction BETWEEN %s AND %s",
        (f"{year}-01-01", f"{year}-12-31"),
    ).fetchall()
    tickets = pd.DataFrame(rows, columns=["location", "fine", "infraction", "date"])
    tickets["location"] = tickets["location"].fillna("(no address)")
    points = pd.read_csv(config.package_data("toronto", "addresses_geocoded.csv")).set_index("address")
    expected = {}
    for location, group in tickets.groupby("location"):
        counts = group["infraction"].value_counts()
        point = points.loc[location] if location in points.index else None
        expected[location] = {
            "tickets": len(group),
            "revenue": sum((f for f in group["fine"] if f is not None), Decimal(0)),
            "top": set(counts[counts == counts.max()].index) if len(counts) else {None},
            "first": group["date"].min(),
            "last": group["date"].max(),
            "latitude": None if point is None else float(point["latitude"]),
            "longitude": None if point is None else float(point["longitude"]),
        }
    return expected


def test_the_yearly_tables_equal_an_independent_computation(loaded):
    db = loaded
    result = run_aggregate("2016-2017")
    assert statuses(result) == {2016: "built", 2017: "built"}
    assert result.verdict().status == "pass"

    for year in (2016, 2017):
        expected = expected_parking_year(db, year)
        built = {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT location, ticket_count, total_revenue, top_infraction, first_date, last_date, latitude, "
                f"longitude FROM {YEARLY} WHERE year = %s",
                (year,),
            ).fetchall()
        }
        assert set(built) == set(expected)
        geocoded = 0
        for location, (tickets, revenue, top, first, last, lat, lon) in built.items():
            want = expected[location]
            assert (tickets, revenue, first, last) == (want["tickets"], want["revenue"], want["first"], want["last"])
            assert top in want["top"], f"{location}: {top!r} is not the most common infraction"
            assert (lat, lon) == (want["latitude"], want["longitude"])
            geocoded += lat is not None
        assert geocoded > len(built) / 2  # the demo's addresses are real, geocoded ones

    # the camera tables: each site's charges in the file, summed per year
    for program, table in CAMERA_YEARLY.items():
        charges = democameras.camera_charges(program)
        for year in (2016, 2017):
            frame = charges[charges["year"] == year]
            want = {
                site: (int(g["charges"].sum()), Decimal(int(g["fines"].sum())), g["latitude"].min())
                for site, g in frame.groupby("site_code")
            }
            got = {
                r[0]: (r[1], r[2], r[3])
                for r in db.execute(
                    f"SELECT site_code, ticket_count, total_revenue, latitude FROM {table} WHERE year = %s", (year,)
                ).fetchall()
            }
            assert got == want


def test_an_unchanged_rerun_skips_and_force_rebuilds_identical_rows(loaded):
    db = loaded
    first = run_aggregate("2016-2017")
    before = [digest(db, t) for t in TABLES]
    runs = {e.partition: e.run_id for e in ledger.entries(db, DATASET, step="aggregate")}
    charges = "SELECT array_agg(DISTINCT xmin::text) FROM red_light_camera_charges"
    loaded_by = db.execute(charges).fetchone()[0]

    again = run_aggregate("2016-2017")
    assert statuses(again) == {2016: "unchanged", 2017: "unchanged"}
    assert [digest(db, t) for t in TABLES] == before
    assert {e.partition: e.run_id for e in ledger.entries(db, DATASET, step="aggregate")} == runs
    assert again.verdict().figures["years unchanged"] == 2
    assert [y.tables for y in again.years] == [y.tables for y in first.years]
    assert db.execute(charges).fetchone()[0] == loaded_by  # the unchanged camera files were not loaded again

    forced = run_aggregate("2016-2017", force=True)
    assert statuses(forced) == {2016: "built", 2017: "built"}
    assert [digest(db, t) for t in TABLES] == before
    assert {e.run_id for e in ledger.entries(db, DATASET, step="aggregate")} != set(runs.values())


def test_a_reloaded_year_is_rebuilt_and_latest_is_the_newest_loaded(loaded, demo_dir):
    db = loaded
    run_aggregate("2016-2017")
    db.execute("DELETE FROM parking_tickets WHERE date_of_infraction BETWEEN '2017-03-01' AND '2017-03-31'")
    call("load", source=str(demo_dir), years="2017")  # the tampered year is loaded again: a new load
    assert statuses(run_aggregate("2016-2017")) == {2016: "unchanged", 2017: "built"}
    latest = aggregate.plan(context.make("aggregate", years="latest", cameras=""))
    assert latest.years == [2017]
    every = aggregate.plan(context.make("aggregate", years="", cameras=""))
    assert every.years == [2016, 2017]


def test_changed_camera_files_are_loaded_again(loaded, tmp_path):
    db = loaded
    folder = tmp_path / "cameras"
    shutil.copytree(democameras.source_folder(), folder)
    first = run_aggregate("2017", cameras=str(folder))
    assert statuses(first) == {2017: "built"}
    site, charges = db.execute(
        "SELECT site_code, ticket_count FROM red_light_yearly_locations WHERE year = 2017 ORDER BY site_code LIMIT 1"
    ).fetchone()
    ctx = context.make("aggregate", years="2017", cameras=str(folder))
    assert {f.program: f.loaded for f in aggregate.plan(ctx).camera_files} == {
        "red_light": "unchanged",
        "ase": "unchanged",
    }

    path = folder / "red_light_camera_charges.csv"
    frame = pd.read_csv(path)
    row = frame.index[(frame["site_code"] == site) & (frame["year"] == 2017)][0]
    frame.loc[row, "charges"] += 5  # the City corrects a site's count
    frame.to_csv(path, index=False)
    assert {f.program: f.loaded for f in aggregate.plan(ctx).camera_files}["red_light"] == "changed"

    again = run_aggregate("2017", cameras=str(folder))
    assert statuses(again) == {2017: "built"}
    assert again.cameras["red_light"] != first.cameras["red_light"]
    assert again.cameras["ase"] == first.cameras["ase"]
    now = db.execute(
        "SELECT ticket_count FROM red_light_yearly_locations WHERE year = 2017 AND site_code = %s", (site,)
    ).fetchone()[0]
    assert now == charges + 5
    assert db.execute("SELECT sum(charges) FROM red_light_camera_charges").fetchone()[0] == int(frame["charges"].sum())
    assert statuses(run_aggregate("2017", cameras=str(folder))) == {2017: "unchanged"}


def test_camera_files_are_read_from_a_gcs_prefix(loaded, gcs_emulator):
    from opsbook.stores import uri

    db = loaded
    run_aggregate("2017")
    from_folder = [digest(db, t, 2017) for t in CAMERA_YEARLY.values()]
    for path in sorted(democameras.source_folder().glob("*.csv")):
        uri.write_bytes(f"gs://opsbook-test/city/cameras/{path.name}", path.read_bytes())
    result = run_aggregate("2017", cameras="gs://opsbook-test/city/cameras", force=True)
    assert statuses(result) == {2017: "built"}
    assert [digest(db, t, 2017) for t in CAMERA_YEARLY.values()] == from_folder


def test_no_cameras_leaves_the_camera_tables_alone(loaded):
    db = loaded
    run_aggregate("2017")
    cameras_before = [digest(db, t) for t in CAMERA_YEARLY.values()]
    result = run_aggregate("2016", cameras="")
    assert statuses(result) == {2016: "built"}
    assert list(result.years[0].tables) == [YEARLY]
    assert [digest(db, t) for t in CAMERA_YEARLY.values()] == cameras_before


def test_a_failing_year_keeps_its_previous_rows(loaded):
    db = loaded
    run_aggregate("2016-2017")
    before = [digest(db, t, 2017) for t in TABLES]
    # a rule added on the table refuses 2017's new rows: the build of 2017 fails half way
    db.execute(f"ALTER TABLE {YEARLY} ADD CONSTRAINT refuse_2017 CHECK (year <> 2017) NOT VALID")
    try:
        result = run_aggregate("2016-2017", force=True)
    finally:
        db.execute(f"ALTER TABLE {YEARLY} DROP CONSTRAINT refuse_2017")
    assert statuses(result) == {2016: "built", 2017: "failed"}
    assert "refuse_2017" in result.years[1].error
    assert [digest(db, t, 2017) for t in TABLES] == before  # every table of the year, as it was
    verdict = result.verdict()
    assert verdict.status == "fail" and verdict.error is ProcedureFailed
    assert "kept their previous rows" in verdict.summary and "-p years=2017" in verdict.summary
    entry = ledger.get(db, DATASET, "2017", "aggregate")
    assert entry.status == "failed" and "refuse_2017" in entry.error

    rerun = run_aggregate("2017")  # a failed build is not "unchanged": it runs again
    assert statuses(rerun) == {2017: "built"}
    assert [digest(db, t, 2017) for t in TABLES] == before


def test_a_held_year_lock_exits_4_naming_the_holder(loaded, reports_dir):
    db = loaded
    run_aggregate("2017")
    before = [digest(db, t, 2017) for t in TABLES]
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True) as holder:
        schema.ensure_schema(holder)
        locks.try_lock(holder, locks.partition_lock("aggregate", DATASET, "2017"), "run test-holder")
        done = run_cli("aggregate", "-p", "years=2017", "-p", "cameras=", "-p", "force=true", "--json")
    assert done.code == 4, done.stderr
    assert done.json()["error"].startswith("LockHeld: opsbook.aggregate:toronto_parking_tickets:2017 is held by ")
    assert "run test-holder" in done.json()["error"]
    assert [digest(db, t, 2017) for t in TABLES] == before
    assert ledger.get(db, DATASET, "2017", "aggregate").status == "success"
