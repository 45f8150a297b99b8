"""reconcile_dual_write against a real PostgreSQL, a lake (folder or the GCS emulator) and an archive."""

import datetime as dt
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import call

from opsbook import datasets
from opsbook.demo import safety as safetydata
from opsbook.errors import CheckFailed, LockHeld, UsageError
from opsbook.history import locks
from opsbook.run import context
from opsbook.stores import uri
from opsbook.trafficsafety import archive, compare, dualwrite, layout, repair, sides, write_lock
from opsbook.trafficsafety.batches import find as batches_of
from opsbook.windows import Days

pytestmark = pytest.mark.integration
SPEC_NAME = "safety_indices"
START = dt.date(2025, 11, 1)
ROW_PATHS = {"hash join": 10**9, "bucketed checksums": 0}  # row_limit that makes compare take each path


@pytest.fixture
def lake(tmp_path, monkeypatch, db):
    """An empty lake, archive and staging area, and no safety_indices rows."""
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime")
    spec = datasets.get(SPEC_NAME)
    dualwrite.ensure_tables(db, spec)
    db.execute("DELETE FROM opsbook.writes WHERE dataset = %s", (SPEC_NAME,))
    shutil.rmtree(Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging", ignore_errors=True)
    return spec


def write_days(db, spec, days: int, start=START):
    """The demo's batches of ``days`` days from ``start`` (late readings in the last day's last
    batch), written to every target."""
    results = [dualwrite.write_batch(db, spec, b.batch_id, b.table) for b in safetydata.batches(start, days)]
    assert all(r.complete for r in results)
    return results


def by_class(comparison) -> dict[str, set]:
    found: dict[str, set] = {}
    for d in comparison.differences:
        found.setdefault(d["class"], set()).add(d["key"])
    return found


def reconcile(window: str, **values):
    return call("reconcile_dual_write", window=window, **values)


def test_what_was_written_agrees(lake, db):
    write_days(db, lake, 2)
    window = Days.parse("2025-11-01..2025-11-02")
    for limit in ROW_PATHS.values():
        comparison = compare.compare(lake, window, row_limit=limit)
        assert comparison.differences == []
        assert comparison.lake_rows == comparison.postgres_rows and sum(comparison.lake_rows.values()) > 1000
    assert archive.findings(db, lake, window) == []
    stats = sides.per_intersection(lake, window, sides.lake_files(lake, window))
    assert len(stats) == 8 and {s["status"] for s in stats} == {"pass"}
    assert sum(s["postgres rows"] for s in stats) == sum(comparison.postgres_rows.values())
    for method, limit in ROW_PATHS.items():
        result = reconcile("2025-11-01..2025-11-02", row_limit=limit)
        verdict = result.verdict()
        assert verdict.status == "pass", verdict.summary
        assert result.final.method.startswith(method)
        rows = sum(result.final.lake_rows.values())
        assert verdict.summary.startswith(f"lake and PostgreSQL agree over 2025-11-01..2025-11-02: {rows:,} rows, ")
        assert result.plan.repair.empty and result.repaired is None and result.after is None


def test_planted_differences_are_classified_exactly_by_both_paths(lake, db):
    write_days(db, lake, 3)
    expected = safetydata.plant_differences(db, "safety_indices_realtime", deletes=10, inserts=10, changes=40)
    # a day file holding some of its rows twice (a bad rewrite): those keys are twice in the lake
    day_file = Path(os.environ["LAKE_URL"]) / "processed" / "indices" / "indices_2025-11-02.parquet"
    held = pq.read_table(day_file)
    doubled = held.slice(100, 30)
    pq.write_table(pa.concat_tables([held, doubled]), day_file)

    twice = {(r["intersection_id"], r["timestamp"]) for r in doubled.to_pylist()}
    window = Days.parse("2025-11-01..2025-11-03")
    fast = compare.compare(lake, window, row_limit=10**9)
    bucketed = compare.compare(lake, window, row_limit=0)
    assert fast.method == "hash join" and bucketed.method.startswith("bucketed checksums")
    for comparison in (fast, bucketed):
        found = by_class(comparison)
        for klass, keys in expected.items():
            assert found.get(klass, set()) == keys, klass
        assert found["duplicate key"] == twice
        assert len(expected["timestamp shifted"]) >= 5
    assert [(d["class"], d["key"]) for d in fast.differences] == [(d["class"], d["key"]) for d in bucketed.differences]
    drift = next(d for d in fast.differences if d["class"] == "value drift" and "vru_index" in d["columns"])
    assert drift["postgres"]["vru_index"] - drift["lake"]["vru_index"] == pytest.approx(0.5)

    repair.apply(lake, repair.plan(fast, window, "lake"))
    after = compare.compare(lake, window, row_limit=10**9)
    assert [d["class"] for d in after.differences] == ["duplicate key"] * len(twice)  # the lake's own fault
    repair.apply(lake, repair.plan(after, window, "postgres"))
    assert compare.compare(lake, window, row_limit=0).differences == []


def test_the_procedure_finds_plans_and_repairs_planted_differences(lake, db):
    write_days(db, lake, 3)
    expected = safetydata.plant_differences(db, "safety_indices_realtime", deletes=10, inserts=10, changes=40)
    shifted = {(k[0], k[1] + dt.timedelta(hours=5)) for k in expected["timestamp shifted"]}
    window = "2025-11-01..2025-11-03"
    for method, limit in ROW_PATHS.items():
        result = reconcile(window, row_limit=limit)
        assert result.plan.comparison.method.startswith(method)
        found = by_class(result.final)
        assert {k: found.get(k, set()) for k in expected} == expected
        verdict = result.verdict()
        assert verdict.status == "fail" and verdict.error is CheckFailed and verdict.anchor == "reconcile-days"
        assert f"the dual-write disagrees over {window}: 10 missing in postgres, 10 missing in lake" in verdict.summary
        assert "-p repair=true" in verdict.summary
        # the plan: the lake's rows over the keys it has, the keys it lacks deleted; nothing applied
        planned = result.plan.repair
        assert (
            planned.upsert == expected["missing in postgres"] | expected["value drift"] | expected["timestamp shifted"]
        )
        assert planned.delete == expected["missing in lake"] | shifted
        assert result.repaired is None and result.after is None
    assert by_class(reconcile(window).final) == {k: v for k, v in expected.items() if v}  # still there

    logged = dict(
        db.execute(
            "SELECT check_name, status FROM data_quality_log WHERE procedure = 'reconcile_dual_write' "
            "ORDER BY id DESC LIMIT 7"
        ).fetchall()
    )
    assert logged["dual-write missing in postgres"] == "fail" and logged["pending writes"] == "pass"
    days = Days.parse(window)
    stats = {s["intersection_id"]: s for s in sides.per_intersection(lake, days, sides.lake_files(lake, days))}
    assert all(stats[90_001 + i]["lake rows"] == 0 for i in range(10))  # PostgreSQL alone holds them
    assert all(stats[90_001 + i]["status"] == "fail" for i in range(10))
    assert sum(s["lake rows"] for s in stats.values()) == sum(result.final.lake_rows.values())

    fixed = reconcile(window, repair=True)
    verdict = fixed.verdict()
    assert verdict.status == "pass", verdict.summary
    assert fixed.repaired.retried == 0 and not fixed.repaired.replanned
    assert fixed.repaired.done == {
        "upserted": len(planned.upsert),
        "deleted": len(planned.delete),
        "lake days rewritten": 0,
    }
    assert fixed.before.counts()["missing in postgres"] == 10 and fixed.after.differences == []
    assert verdict.summary.startswith(f"repair from lake answered {len(fixed.before.differences)} difference(s) (")


def test_repair_from_postgres_rewrites_only_the_days_that_differ(lake, db):
    write_days(db, lake, 2)
    db.execute(
        "UPDATE safety_indices_realtime SET traffic_volume = traffic_volume + 1 WHERE timestamp::date = '2025-11-02' "
        "AND intersection_id = 1003"
    )
    indices = Path(os.environ["LAKE_URL"]) / "processed" / "indices"
    untouched = (indices / "indices_2025-11-01.parquet").read_bytes()
    result = reconcile("2025-11-01..2025-11-02", repair=True, source_of_truth="postgres")
    assert {d["day"] for d in result.before.differences} == {dt.date(2025, 11, 2)}
    assert result.plan.repair.days == [dt.date(2025, 11, 2)]
    assert result.repaired.done["lake days rewritten"] == 1
    assert (indices / "indices_2025-11-01.parquet").read_bytes() == untouched
    assert result.after.differences == [] and result.verdict().status == "pass"
    assert sorted(f.name for f in indices.iterdir()) == ["indices_2025-11-01.parquet", "indices_2025-11-02.parquet"]


def test_archive_findings_and_a_repair_that_retries_the_pending_write(lake, db, tmp_path, monkeypatch):
    write_days(db, lake, 1)  # the indices, in the lake and PostgreSQL
    found = batches_of(lake, str(safetydata.source_folder()), Days.parse("2025-11-01"))
    batches = [b for b in found.batches if b.kind == "raw"]
    assert len(batches) == 24
    for b in batches[:-1]:
        assert dualwrite.write_raw(db, lake, b).complete
    broken = tmp_path / "not-a-folder"
    broken.write_text("")
    monkeypatch.setenv("ARCHIVE_URL", str(broken))  # the last raw file's archive write fails
    last = dualwrite.write_raw(db, lake, batches[-1])
    assert last.targets["archive"].status == "pending"
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    gone = layout.archive_object(lake, f"{batches[3].batch_id}.parquet", START)
    assert uri.delete(gone)
    stray = uri.join(layout.archive_day(lake, START), "bsm_1999-01-01_000000.parquet")
    uri.write_bytes(stray, b"")

    result = reconcile("2025-11-01")
    findings = {(f["batch"], f["finding"]) for f in result.archive}
    assert findings == {
        (batches[-1].batch_id, "archive write pending"),
        (batches[3].batch_id, "archive object missing"),
        ("bsm_1999-01-01_000000", "object not in the ledger"),
    }
    pending = next(f for f in result.archive if f["finding"] == "archive write pending")
    assert pending["attempts"] == 1 and pending["last error"].startswith(("NotADirectoryError", "FileExistsError"))
    assert [p["batch_id"] for p in result.pending] == [batches[-1].batch_id]
    verdict = result.verdict()
    assert verdict.status == "fail" and verdict.anchor == "pending-writes"
    assert verdict.summary.endswith("1 pending write(s), 3 archive finding(s); -p repair=true re-applies the "
                                    "source of truth and retries pending writes")  # fmt: skip
    assert result.final.differences == []  # lake and PostgreSQL agree: the archive alone is behind

    fixed = reconcile("2025-11-01", repair=True)
    assert fixed.repaired.retried == 1 and fixed.pending == []
    assert {(f["batch"], f["finding"]) for f in fixed.archive} == {
        (batches[3].batch_id, "archive object missing"),
        ("bsm_1999-01-01_000000", "object not in the ledger"),
    }
    assert fixed.verdict().anchor == "archive-findings-after"


def test_a_repair_waits_for_no_dual_write(lake, db):
    write_days(db, lake, 1)
    key = write_lock(SPEC_NAME)
    assert key == "opsbook.dual_write:safety_indices"
    from opsbook.procedures import reconcile_dual_write

    assert reconcile_dual_write.locks(reconcile_dual_write.Params(repair=True)) == [key]
    assert reconcile_dual_write.locks(reconcile_dual_write.Params()) == []
    locks.try_lock(db, key, "run writing")
    try:
        assert reconcile("2025-11-01").verdict().status == "pass"  # a check alone needs no lock
        with pytest.raises(LockHeld, match=f"{key} is held by run writing"):
            reconcile("2025-11-01", repair=True)
    finally:
        locks.unlock(db, key)


def test_the_window_is_required():
    with pytest.raises(UsageError, match="give the days to compare"):
        context.make("reconcile_dual_write", window="")
    with pytest.raises(UsageError, match="source_of_truth"):
        context.make("reconcile_dual_write", source_of_truth="archive")


def test_a_lake_on_gcs(lake, db, gcs_emulator, monkeypatch):
    monkeypatch.setenv("LAKE_URL", "gs://opsbook-test/lake")
    write_days(db, lake, 1)
    files = sides.lake_files(lake, Days.parse("2025-11-01"))
    assert files == ["gs://opsbook-test/lake/processed/indices/indices_2025-11-01.parquet"]
    db.execute("DELETE FROM safety_indices_realtime WHERE ctid = (SELECT ctid FROM safety_indices_realtime LIMIT 1)")
    comparison = compare.compare(lake, Days.parse("2025-11-01"))
    assert [d["class"] for d in comparison.differences] == ["missing in postgres"]
    fixed = reconcile("2025-11-01", repair=True)
    assert fixed.repaired.done["upserted"] == 1 and fixed.verdict().status == "pass"


def test_lake_day_counts_come_from_footers_only_when_they_prove_one_day(tmp_path):
    spec = datasets.get(SPEC_NAME)
    table, _ = safetydata.readings(START, 2, count=2)
    days = layout.days_of(spec, table)
    one_day = tmp_path / "one.parquet"
    pq.write_table(table.slice(0, 10), one_day)
    assert sides.day_counts_in_metadata(spec, [str(one_day)]) == {days[0]: 10}
    both_days = tmp_path / "both.parquet"  # a file holding two days: counted by a scan instead
    pq.write_table(table, both_days)
    assert sides.day_counts_in_metadata(spec, [str(one_day), str(both_days)]) is None


def test_duplicate_keys_are_found_when_postgres_enforces_its_key():
    """With a unique key in PostgreSQL the lake is searched for duplicates only when the join's
    counts show one: a copy equal to PostgreSQL's row, and a lake-only key twice, are both found."""
    spec = datasets.get(SPEC_NAME)
    table = layout.conform(spec, safetydata.readings(START, 1, count=2)[0])
    pg, extra = table.slice(0, table.num_rows - 1), table.slice(table.num_rows - 1, 1)  # extra: lake only

    def found(*parts) -> dict[str, set]:
        lake = pa.concat_tables(parts)
        lake = lake.append_column("_file", pa.array(["a.parquet"] * lake.num_rows))
        classes: dict[str, set] = {}
        for d in compare.compare_tables(spec, lake, pg, pg_unique=True):
            classes.setdefault(d["class"], set()).add(d["key"])
        return classes

    def keys(t) -> set:
        return {(r["intersection_id"], r["timestamp"]) for r in t.select(spec.key).to_pylist()}

    assert found(table) == {"missing in postgres": keys(extra)}
    assert found(table, table.slice(3, 1)) == {
        "duplicate key": keys(table.slice(3, 1)),
        "missing in postgres": keys(extra),
    }
    assert found(table, extra) == {"duplicate key": keys(extra), "missing in postgres": keys(extra)}
