"""backfill_indices against a real PostgreSQL: the bucket's daily index files (a folder, or the
GCS emulator) into the realtime table's day partitions, merged where readings exist, resumable."""

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import call, run_cli

from opsbook import datasets
from opsbook.demo import safety as safetydata
from opsbook.errors import SourceError
from opsbook.history import ledger
from opsbook.stores import uri
from opsbook.trafficsafety import dualwrite, schema

pytestmark = pytest.mark.integration
START = dt.date(2025, 11, 1)
DAYS = 5
LEGACY_UNTIL = dt.date(2025, 11, 3)  # the first two files in the older column names
WINDOW = "2025-11-01..2025-11-05"


@pytest.fixture
def bucket(tmp_path, db):
    """Five days of index files for four intersections, and empty traffic-safety tables."""
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")
    db.execute("DROP TABLE IF EXISTS data_quality_log")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    root = tmp_path / "bucket"
    rows = safetydata.write_index_files(root, START, [DAYS], 4, legacy_until=LEGACY_UNTIL)
    assert rows > 0
    return root


def index_file(root, day: dt.date):
    return root / "processed" / "indices" / f"indices_{day}.parquet"


def realtime_digest(db, where: str = "TRUE"):
    columns = ", ".join(f'"{c}"' for c in datasets.get("safety_indices").column_names)
    return db.execute(
        f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
        f"FROM (SELECT {columns} FROM safety_indices_realtime WHERE {where}) t"
    ).fetchone()


def test_days_are_loaded_into_their_partitions_with_legacy_names_mapped(bucket, db):
    result = call("backfill_indices", source=str(bucket), window=WINDOW, timezone="UTC")
    verdict = result.verdict()
    assert verdict.status == "pass", verdict.summary
    expected, _ = safetydata.readings(START, DAYS, 4)
    assert result.rows == expected.num_rows == db.execute("SELECT count(*) FROM safety_indices_realtime").fetchone()[0]
    # each day in its own partition
    spec = datasets.get("safety_indices")
    by_partition = dict(
        db.execute("SELECT tableoid::regclass::text, count(*) FROM safety_indices_realtime GROUP BY 1").fetchall()
    )
    assert sorted(by_partition) == [schema.partition_name(spec, START + dt.timedelta(days=i)) for i in range(DAYS)]
    # the values are the files' (legacy names mapped back), the counts NULL where the file lacks them
    held = db.execute(
        "SELECT intersection_id, timestamp, combined_index_eb, vru_count, hour_of_day, day_of_week "
        "FROM safety_indices_realtime ORDER BY 1, 2"
    ).fetchall()
    frame = expected.to_pandas().sort_values(["intersection_id", "timestamp"])
    assert [r[2] for r in held] == pytest.approx(frame["combined_index_eb"].tolist())
    legacy = [r for r in held if r[1].date() < LEGACY_UNTIL]
    assert legacy and all(r[3] is None for r in legacy)
    assert all(r[4] == r[1].hour and r[5] == int(r[1].strftime("%w")) for r in held)  # derived in UTC
    newer = [r for r in held if r[1].date() >= LEGACY_UNTIL]
    assert sum(r[3] is not None for r in newer) > 0.9 * len(newer)
    # the rollups of the days, checked; every day logged in the quality log
    assert result.built.hourly_rows > 0 and all(c.status == "pass" for c in result.checks)
    logged = db.execute(
        "SELECT status, count(*) FROM data_quality_log WHERE procedure = 'backfill_indices' GROUP BY 1"
    ).fetchall()
    assert logged == [("pass", DAYS)]


def test_a_rerun_skips_the_days_loaded_from_the_same_file(bucket, db):
    assert call("backfill_indices", source=str(bucket), window=WINDOW, rollups=False).verdict().status == "pass"
    day = START + dt.timedelta(days=3)
    other_days = f"timestamp::date <> '{day}'"
    before = realtime_digest(db, other_days)
    oids = db.execute("SELECT relname, oid FROM pg_class WHERE relname LIKE 'safety_indices_realtime_p%'").fetchall()
    # one file rewritten with a value changed: only that day is read again (and merged)
    table = pq.read_table(index_file(bucket, day))
    changed = table.set_column(2, "combined_index", pa.array([v + 1 for v in table.column(2).to_pylist()]))
    pq.write_table(changed, index_file(bucket, day))

    again = call("backfill_indices", source=str(bucket), window=WINDOW, rollups=False)
    assert [d.status for d in again.days] == ["unchanged"] * 3 + ["merged", "unchanged"]
    merged = again.days[3]
    assert merged.written == table.num_rows and merged.kept == 0
    assert (
        db.execute("SELECT relname, oid FROM pg_class WHERE relname LIKE 'safety_indices_realtime_p%'").fetchall()
        == oids
    )  # no partition replaced
    assert realtime_digest(db, other_days) == before
    assert db.execute(
        "SELECT sum(combined_index) FROM safety_indices_realtime WHERE timestamp >= %s AND timestamp < %s",
        schema.day_bounds(day),
    ).fetchone()[0] == pytest.approx(sum(changed.column(2).to_pylist()))


def test_a_day_whose_partition_was_replaced_since_is_loaded_again(bucket, db):
    """The ledger's entry names the partition it filled: one dropped by hand and made again
    empty (as a writer makes the coming days') is not 'unchanged'."""
    assert call("backfill_indices", source=str(bucket), window=WINDOW, rollups=False).verdict().status == "pass"
    spec = datasets.get("safety_indices")
    day = START + dt.timedelta(days=2)
    db.execute(f"DROP TABLE {schema.partition_name(spec, day)}")
    assert schema.ensure_partitions(db, spec, [day]) == [day]
    again = call("backfill_indices", source=str(bucket), window=WINDOW, rollups=False)
    assert [d.status for d in again.days] == ["unchanged"] * 2 + ["loaded"] + ["unchanged"] * 2
    held = db.execute("SELECT count(*) FROM safety_indices_realtime WHERE timestamp::date = %s", (day,)).fetchone()[0]
    assert held == pq.read_table(index_file(bucket, day)).num_rows


def test_a_merge_keeps_readings_the_file_lacks_and_values_of_columns_it_lacks(bucket, db):
    """The dual-write got there first: its readings of the day include one the file lacks and
    counts the legacy file has no column for. The backfill merges; it deletes nothing."""
    spec = datasets.get("safety_indices")
    dualwrite.ensure_tables(db, spec)
    expected, _ = safetydata.readings(START, DAYS, 4)
    next_day = pa.scalar(dt.datetime(2025, 11, 2, tzinfo=dt.UTC), expected.schema.field("timestamp").type)
    day_one = expected.filter(pc.less(expected.column("timestamp"), next_day))
    dualwrite.write_postgres(spec, day_one)
    db.execute(
        "INSERT INTO safety_indices_realtime (intersection_id, timestamp, combined_index, vru_count) "
        "VALUES (9999, '2025-11-01 12:00+00', 1.5, 7)"
    )
    with_counts = db.execute("SELECT count(vru_count) FROM safety_indices_realtime").fetchone()[0]
    assert with_counts > 0

    result = call("backfill_indices", source=str(bucket), window=WINDOW, rollups=False)
    assert result.verdict().status == "pass", result.verdict().summary
    first = result.days[0]
    assert (first.status, first.previous_rows, first.written, first.kept) == ("merged", day_one.num_rows + 1, 0, 1)
    assert "vru_count" in first.absent
    assert db.execute("SELECT count(*) FROM safety_indices_realtime WHERE intersection_id = 9999").fetchone()[0] == 1
    assert (
        db.execute("SELECT count(vru_count) FROM safety_indices_realtime WHERE timestamp < '2025-11-02'").fetchone()[0]
        == with_counts
    )
    assert "1 merged into readings already held (1 held only in PostgreSQL kept)" in result.verdict().summary


def test_a_bad_file_fails_its_day_only_and_leaves_nothing_half_made(bucket, db):
    day = START + dt.timedelta(days=2)
    table = pq.read_table(index_file(bucket, day))
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), index_file(bucket, day))  # a key twice
    outside = START + dt.timedelta(days=4)
    late = pq.read_table(index_file(bucket, outside))
    stamps = late.column("timestamp").to_pylist()
    stamps[0] = stamps[0] + dt.timedelta(days=1)  # a row of the next day
    pq.write_table(
        late.set_column(1, "timestamp", pa.array(stamps, late.schema.field(1).type)), index_file(bucket, outside)
    )
    index_file(bucket, START + dt.timedelta(days=1)).unlink()

    done = run_cli("backfill_indices", "-p", f"source={bucket}", "-p", f"window={WINDOW}", "--json")
    assert done.code == SourceError.exit_code, done.stdout
    result = done.json()
    assert "2 of 4 day(s) not loaded (the others were)" in result["summary"]
    assert "holds a key twice" in result["summary"] and "fall outside 2025-11-05" in result["summary"]
    days = dict(db.execute("SELECT timestamp::date, count(*) FROM safety_indices_realtime GROUP BY 1").fetchall())
    assert sorted(days) == [START, START + dt.timedelta(days=3)]
    spec = datasets.get("safety_indices")
    leftovers = db.execute("SELECT relname FROM pg_class WHERE relname LIKE '%\\_load'").fetchall()
    assert leftovers == []
    assert ledger.get(db, spec.name, str(day), "backfill_indices").status == "failed"
    assert (
        db.execute(
            "SELECT count(*) FROM data_quality_log WHERE procedure = 'backfill_indices' AND status = 'fail'"
        ).fetchone()[0]
        == 2
    )


def test_days_without_a_file_warn_and_a_window_without_any_fails(bucket, db):
    index_file(bucket, START).unlink()
    result = call("backfill_indices", source=str(bucket), window="2025-11-01..2025-11-06", rollups=False)
    verdict = result.verdict()
    assert verdict.status == "warn" and "no file for 2025-11-01,2025-11-06" in verdict.summary
    empty = run_cli("backfill_indices", "-p", f"source={bucket}", "-p", "window=2030-01-01..2030-01-02")
    assert empty.code == SourceError.exit_code
    assert "no index file for any day of 2030-01-01..2030-01-02" in empty.stdout + empty.stderr


def test_backfill_from_the_bucket_in_gcs(bucket, db, gcs_emulator):
    prefix = "gs://opsbook-test/trafficsafety"
    for path in sorted((bucket / "processed" / "indices").iterdir()):
        uri.write_bytes(uri.join(prefix, "processed", "indices", path.name), path.read_bytes())
    result = call("backfill_indices", source=prefix, window=WINDOW, timezone="UTC")
    assert result.verdict().status == "pass", result.verdict().summary
    expected, _ = safetydata.readings(START, DAYS, 4)
    assert db.execute("SELECT count(*) FROM safety_indices_realtime").fetchone()[0] == expected.num_rows
    again = call("backfill_indices", source=prefix, window=WINDOW, rollups=False)
    assert {d.status for d in again.days} == {"unchanged"}  # the objects' MD5s are the same
