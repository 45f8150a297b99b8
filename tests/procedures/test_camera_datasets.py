"""camera_datasets against a real PostgreSQL, a lake folder and the GCS emulator."""

import json

import geopandas as gpd
import pytest
from helpers import call, load_and_aggregate, run_cli

from opsbook.demo import cameras as democameras
from opsbook.toronto import cameras

pytestmark = pytest.mark.notebook


@pytest.fixture
def aggregated(db, demo_dir):
    load_and_aggregate(db, demo_dir, "2017")
    return db


def test_geojson_and_summaries_match_the_runbook_totals(aggregated, tmp_path):
    out = tmp_path / "cameras"
    done = run_cli("camera_datasets", "-p", f"out={out}", "--json")
    assert done.code == 0, done.stderr
    assert done.json()["status"] == "pass"
    for program, spec in democameras.CAMERA_PROGRAMS.items():
        geo = gpd.read_file(out / f"{program}_locations.geojson")
        assert geo.crs.to_epsg() == 4326
        assert len(geo) == spec["sites"] and geo.geometry.is_valid.all()
        assert (geo.geometry.geom_type == "Point").all()
        assert int(geo["ticket_count"].sum()) == spec["tickets"]  # the runbook's sanity totals
        assert round(float(geo["total_revenue"].sum())) == spec["revenue"]
        summary = json.loads((out / f"{program}_summary.json").read_text())
        assert summary["tickets"] == spec["tickets"] and summary["excluded"] == []
        per_year = dict(
            aggregated.execute(
                f"SELECT year::text, sum(ticket_count)::int FROM {cameras.PROGRAMS[program]} GROUP BY year"
            ).fetchall()
        )
        assert {y: v["tickets"] for y, v in summary["years"].items()} == per_year
        # a point is where PostgreSQL has the site
        site = geo.iloc[0]
        lat, lon = aggregated.execute(
            f"SELECT min(latitude), min(longitude) FROM {cameras.PROGRAMS[program]} WHERE site_code = %s",
            (site["site_code"],),
        ).fetchone()
        assert (site.geometry.x, site.geometry.y) == pytest.approx((lon, lat))


def test_sites_without_valid_coordinates_are_listed_not_dropped(aggregated, tmp_path):
    aggregated.execute("UPDATE red_light_yearly_locations SET latitude = NULL WHERE site_code = 'RLC-003'")
    aggregated.execute("UPDATE red_light_yearly_locations SET latitude = 45.42 WHERE site_code = 'RLC-004'")
    result = call("camera_datasets", programs="red_light", out=str(tmp_path))
    verdict = result.verdict()
    assert verdict.status == "warn" and "2 site(s) left off the map" in verdict.summary
    (program,) = result.programs
    assert {(e["site_code"], e["reason"]) for e in program.excluded} == {
        ("RLC-003", "no coordinates"),
        ("RLC-004", "outside Toronto"),
    }
    assert program.features == 78
    excluded_tickets = sum(e["tickets"] for e in program.excluded)
    assert program.tickets == democameras.CAMERA_PROGRAMS["red_light"]["tickets"] - excluded_tickets
    summary = json.loads((tmp_path / "red_light_summary.json").read_text())
    assert sorted(e["site_code"] for e in summary["excluded"]) == ["RLC-003", "RLC-004"]


def test_files_go_to_gcs_when_out_is_a_bucket(aggregated, gcs_emulator):
    from opsbook.stores import uri

    result = call("camera_datasets", out="gs://opsbook-test/maps/cameras")
    assert result.verdict().status == "pass"
    names = {o.uri for o in uri.listing("gs://opsbook-test/maps/cameras/")}
    assert names == {
        f"gs://opsbook-test/maps/cameras/{p}_{s}"
        for p in ("red_light", "ase")
        for s in ("locations.geojson", "summary.json")
    }


def test_no_camera_sites_fails(aggregated, tmp_path):
    aggregated.execute("TRUNCATE red_light_yearly_locations")
    done = run_cli("camera_datasets", "-p", "programs=red_light", "-p", f"out={tmp_path}", "--json")
    assert done.code == 1
    assert "no camera sites for red_light" in done.json()["summary"]


def test_a_file_that_reads_back_short_fails(aggregated, tmp_path, monkeypatch):
    """What a truncated upload would give a map client: the check engine judges the read-back."""
    original = cameras.uri.read_bytes

    def first_feature_lost(target):
        document = json.loads(original(target))
        document["features"] = document["features"][1:]
        return json.dumps(document).encode()

    monkeypatch.setattr(cameras.uri, "read_bytes", first_feature_lost)
    result = call("camera_datasets", programs="red_light", out=str(tmp_path))
    (check,) = result.checks
    assert check.name == "red_light_read_back" and check.status == "fail"
    assert {f["total"] for f in check.failing} == {"features", "tickets"}
    assert "features: 79 read back, 80 in PostgreSQL" in check.message
    verdict = result.verdict()
    assert verdict.status == "fail" and "disagree with PostgreSQL" in verdict.summary
    assert "red_light_read_back" in verdict.summary and verdict.anchor == "check-red_light_read_back"
