"""Pairs of traffic-safety procedures on one database and lake, in either order: nothing the
runbook keeps is destroyed. Every table and lake day is checksummed before and after.

The runbook keeps realtime readings 48 hours, hourly rollups 90 days, daily rollups for good,
and the lake's processed days (its own lifecycle): after retention has purged the readings,
rebuilding rollups, reconciling and repairing (from either side), backfilling from the bucket and
retrying a pending write must leave all of that as it was, and retention after any of them
removes only what its policy says.
"""

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from helpers import call

from opsbook import datasets
from opsbook.demo import safety as safetydata
from opsbook.trafficsafety import dualwrite

pytestmark = pytest.mark.integration
DAYS = 6
TABLES = ("safety_indices_realtime", "safety_indices_hourly", "safety_indices_daily")


@pytest.fixture
def written(tmp_path, monkeypatch, db):
    """Six days up to yesterday (UTC) dual-written to PostgreSQL, the lake and the archive, and
    their rollups built."""
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    spec = datasets.get("safety_indices")
    dualwrite.ensure_tables(db, spec)
    today = dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=DAYS)
    for batch in safetydata.batches(start, DAYS, count=4):
        assert dualwrite.write_batch(db, spec, batch.batch_id, batch.table).complete
    # the bucket's daily index files of the same readings (what backfill_indices reads)
    safetydata.write_index_files(bucket(), start, [DAYS], 4)
    built = call("rollups", window=f"{start}..{today - dt.timedelta(days=1)}", timezone="UTC")
    assert built.verdict().status == "pass", built.verdict().summary
    return db, start, today


def state(db) -> dict:
    """A checksum of every table and of every lake file. Floating-point values are summed in
    whatever order the scan gives, so a rebuilt average may differ in its last bits: they are
    compared to nine decimals (a row kept as it was compares the same either way)."""
    found = {}
    for table in TABLES:
        columns = db.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        values = ", ".join(
            f"round({name}::numeric, 9)" if kind == "double precision" else f'"{name}"' for name, kind in columns
        )
        found[table] = db.execute(
            f"SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) "
            f"FROM (SELECT {values} FROM {table}) r"
        ).fetchone()
    lake = Path(os.environ["LAKE_URL"])
    found["lake"] = {
        str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(lake.rglob("*.parquet"))
    }
    return found


def retention():
    result = call("retention", policy="trafficsafety", apply=True)
    assert result.verdict().status == "pass", result.verdict().summary
    return result


def rollups(start, today):
    return call("rollups", window=f"{start}..{today - dt.timedelta(days=1)}", timezone="UTC")


def reconcile(start, today, **values):
    window = f"{start}..{today - dt.timedelta(days=1)}"
    return call("reconcile_dual_write", window=window, horizon_policy="trafficsafety", **values)


def bucket() -> Path:
    return Path(os.environ["LAKE_URL"]).parent / "bucket"


def backfill(start, today):
    window = f"{start}..{today - dt.timedelta(days=1)}"
    return call("backfill_indices", source=str(bucket()), window=window, timezone="UTC")


def retry(start, today):
    """A dual_write retry of a write left pending by an outage: the first batch's PostgreSQL
    write (of a day retention has purged, when retention ran first)."""
    from opsbook.stores import postgres
    from opsbook.trafficsafety import layout

    spec = datasets.get("safety_indices")
    batch = safetydata.batches(start, DAYS, count=4)[0]
    staged = dualwrite.staging_path(spec, batch.batch_id)
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(layout.parquet_bytes(layout.conform(spec, batch.table)))
    with postgres.connection(autocommit=True) as conn:
        marked = conn.execute(
            "UPDATE opsbook.writes SET status = 'pending', attempts = attempts + 1, last_error = 'outage' "
            "WHERE dataset = %s AND batch_id = %s AND target = 'postgres'",
            (spec.name, batch.batch_id),
        ).rowcount
    assert marked == 1
    return call("dual_write", retry_pending=True, source=str(bucket()))  # a retry reads no source


SECOND = {
    "rollups": lambda start, today: rollups(start, today),
    "backfill": backfill,
    "dual_write retry": retry,
    "reconcile": lambda start, today: reconcile(start, today),
    "repair from the lake": lambda start, today: reconcile(start, today, repair=True, source_of_truth="lake"),
    "repair from postgres": lambda start, today: reconcile(start, today, repair=True, source_of_truth="postgres"),
}


@pytest.mark.parametrize("second", list(SECOND))
def test_after_retention_nothing_kept_is_destroyed(second, written):
    db, start, today = written
    retention()
    purged = db.execute("SELECT min(timestamp)::date FROM safety_indices_realtime").fetchone()[0]
    assert purged == today - dt.timedelta(days=2)  # the premise: four days of readings are gone
    before = state(db)

    result = SECOND[second](start, today)
    verdict = result.verdict()
    assert verdict.exit_code == 0, verdict.summary
    after = state(db)
    if second == "backfill":
        # the purged days' readings come back from the bucket (retention will drop them again);
        # every rollup and lake file reads as before, rebuilt from the same readings
        assert verdict.status == "pass" and [d.status for d in result.days] == ["loaded"] * 4 + ["merged"] * 2
    if second in ("backfill", "dual_write retry"):
        # readings of purged days written again (retention drops them again); nothing kept changed
        assert verdict.status == "pass"
        assert after["safety_indices_realtime"][0] > before["safety_indices_realtime"][0]
        del after["safety_indices_realtime"], before["safety_indices_realtime"]
    assert after == before
    if second == "rollups":
        assert verdict.status == "warn" and "4 day(s) without readings kept their rollups" in verdict.summary
    elif second not in ("backfill", "dual_write retry"):
        assert f"4 day(s) left out ({start}..{start + dt.timedelta(days=3)})" in verdict.summary
        assert verdict.status == "pass"


@pytest.mark.parametrize("first", list(SECOND))
def test_retention_after_any_removes_only_what_its_policy_says(first, written):
    db, start, today = written
    SECOND[first](start, today)
    before = state(db)
    retention()
    after = state(db)
    cutoff = today - dt.timedelta(days=2)
    kept = db.execute("SELECT count(*) FROM safety_indices_realtime WHERE timestamp < %s", (cutoff,)).fetchone()[0]
    assert kept == 0 and after["safety_indices_realtime"][0] < before["safety_indices_realtime"][0]
    # hourly rollups are within 90 days, daily ones are kept for good, the lake is not retention's
    for what in ("safety_indices_hourly", "safety_indices_daily", "lake"):
        assert after[what] == before[what], what


def test_a_repair_from_postgres_never_empties_a_lake_day(written):
    """Without the horizon (an ad-hoc run), the purged days differ; rewriting them from
    PostgreSQL would leave empty files: those lake days are kept, and the run says so."""
    db, start, today = written
    retention()
    before = state(db)["lake"]
    window = f"{start}..{today - dt.timedelta(days=1)}"
    result = call("reconcile_dual_write", window=window, repair=True, source_of_truth="postgres")
    assert result.repaired.done.get("lake days kept (no rows in PostgreSQL)") == 4
    assert state(db)["lake"] == before
    assert result.verdict().exit_code == 1  # the days still differ: said, not hidden
