"""Dual-write and reconcile against a real PostgreSQL and the GCS emulator."""

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli
from opsbook import datasets
from opsbook.trafficsafety import dualwrite
from opsbook.trafficsafety import reconcile
from opsbook.demo import safety as safetydata

pytestmark = pytest.mark.integration
SPEC_NAME = "safety_indices"
START = dt.date(2025, 11, 1)


@pytest.fixture
def lake(tmp_path, monkeypatch, db):
    """An empty lake, archive and staging area, and no safety_indices rows."""
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    db.execute("DROP TABLE IF EXISTS safety_indices")
    db.execute("DELETE FROM opsbook.writes WHERE dataset = %s", (SPEC_NAME,)) if _has_writes(db) else None
    shutil.rmtree(Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging", ignore_errors=True)
    spec = datasets.get(SPEC_NAME)
    dualwrite.ensure_tables(db, spec)
    return spec


def _has_writes(db) -> bool:
    return db.execute("SELECT to_regclass('opsbook.writes')").fetchone()[0] is not None


def write_days(db, spec, days: int, start=START):
    results = [dualwrite.write_batch(db, spec, b.batch_id, b.table) for b in safetydata.batches(start, days)]
    assert all(r.complete for r in results)
    return results


def by_class(comparison) -> dict[str, set]:
    found: dict[str, set] = {}
    for d in comparison.differences:
        found.setdefault(d["class"], set()).add(d["key"])
    return found


def test_what_was_written_agrees(lake, db):
    write_days(db, lake, 2)
    window = reconcile.parse_window("2025-11-01..2025-11-02")
    for limit in (10**9, 0):
        comparison = reconcile.compare(lake, window, row_limit=limit)
        assert comparison.differences == []
        assert comparison.lake_rows == comparison.postgres_rows and sum(comparison.lake_rows.values()) > 1000
    assert reconcile.archive_findings(db, lake, window) == []


def test_planted_differences_are_classified_exactly_by_both_paths(lake, db):
    write_days(db, lake, 3)
    expected = safetydata.plant_differences(db, "safety_indices", deletes=10, inserts=10, changes=40)
    # a batch file copied under another name: every key in it is now twice in the lake
    day_dir = Path(os.environ["LAKE_URL"]) / SPEC_NAME / "date=2025-11-02"
    copied = sorted(day_dir.glob("*.parquet"))[5]
    shutil.copy(copied, day_dir / "zz-copy.parquet")
    import pyarrow.parquet as pq

    twice = {(r["intersection_id"], r["timestamp"]) for r in pq.read_table(copied).to_pylist()}
    window = reconcile.parse_window("2025-11-01..2025-11-03")
    fast = reconcile.compare(lake, window, row_limit=10**9)
    bucketed = reconcile.compare(lake, window, row_limit=0)
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

    reconcile.repair(lake, window, fast, "lake")
    after = reconcile.compare(lake, window, row_limit=10**9)
    assert [d["class"] for d in after.differences] == ["duplicate key"] * len(twice)  # the lake's own fault
    reconcile.repair(lake, window, after, "postgres")
    assert reconcile.compare(lake, window, row_limit=0).differences == []


def test_repair_from_postgres_rewrites_only_the_days_that_differ(lake, db):
    write_days(db, lake, 2)
    db.execute(
        "UPDATE safety_indices SET traffic_volume = traffic_volume + 1 WHERE timestamp::date = '2025-11-02' "
        "AND intersection_id = 1003"
    )
    window = reconcile.parse_window("2025-11-01..2025-11-02")
    before = reconcile.compare(lake, window)
    assert {d["day"] for d in before.differences} == {dt.date(2025, 11, 2)}
    untouched = sorted((Path(os.environ["LAKE_URL"]) / SPEC_NAME / "date=2025-11-01").glob("*.parquet"))
    done = reconcile.repair(lake, window, before, "postgres")
    assert done["lake days rewritten"] == 1
    assert sorted((Path(os.environ["LAKE_URL"]) / SPEC_NAME / "date=2025-11-01").glob("*.parquet")) == untouched
    assert reconcile.compare(lake, window).differences == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(port: int, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "opsbook.stores.gcs_emulator", "--port", str(port),
                             "--bucket", "opsbook-archive", "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    raise RuntimeError(f"the GCS emulator did not start: {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.notebook
def test_gcs_down_during_a_dual_write_then_retried(lake, db, tmp_path):
    port = free_port()
    data_dir = tmp_path / "gcs"
    env = {"ARCHIVE_URL": "gs://opsbook-archive/archive", "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
           "OPSBOOK_GCS_RETRY_SECONDS": "3"}  # fmt: skip
    emulator = start_emulator(port, data_dir)
    try:
        first = run_cli("dual_write", "-p", "days=1", "--json", env=env)
        assert first.code == 0, first.stderr
        emulator.kill()
        emulator.wait()
        down = run_cli("dual_write", "-p", "start=2025-11-02", "-p", "days=1", "--json", env=env)
        assert down.code == 1, down.stderr
        outcome = down.json()
        assert "pending" in outcome["summary"] and "retry_pending=true" in outcome["summary"]
        states = dict(((t, s), n) for t, s, n in db.execute(
            "SELECT target, status, count(*) FROM opsbook.writes WHERE dataset = %s AND first_day = '2025-11-02' "
            "GROUP BY 1, 2", (SPEC_NAME,)).fetchall())  # fmt: skip
        batches = states[("postgres", "success")]
        assert states == {
            ("postgres", "success"): batches,
            ("lake", "success"): batches,
            ("archive", "pending"): batches,
        }

        check = run_cli("reconcile_dual_write", "-p", "window=2025-11-01..2025-11-02", "--json", env=env)
        assert check.code == 1
        assert check.json()["results"]["verdict"]["figures"]["pending writes"] == batches

        emulator = start_emulator(port, data_dir)
        retried = run_cli("dual_write", "-p", "retry_pending=true", "--json", env=env)
        assert retried.code == 0, retried.stderr
        again = run_cli("reconcile_dual_write", "-p", "window=2025-11-01..2025-11-02", "--json", env=env)
        assert again.code == 0, again.json()["summary"]
        assert not list((Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging" / SPEC_NAME).glob("*.parquet"))
    finally:
        emulator.kill()


def test_a_lake_on_gcs(lake, db, gcs_emulator, monkeypatch):
    monkeypatch.setenv("LAKE_URL", "gs://opsbook-test/lake")
    write_days(db, lake, 1)
    files = reconcile.lake_files(lake, reconcile.parse_window("2025-11-01"))
    assert files and all(f.startswith("gs://opsbook-test/lake/safety_indices/date=2025-11-01/") for f in files)
    db.execute("DELETE FROM safety_indices WHERE ctid = (SELECT ctid FROM safety_indices LIMIT 1)")
    comparison = reconcile.compare(lake, reconcile.parse_window("2025-11-01"))
    assert [d["class"] for d in comparison.differences] == ["missing in postgres"]


def test_lake_day_counts_come_from_footers_only_when_they_prove_one_day(tmp_path):
    import pyarrow.parquet as pq

    spec = datasets.get(SPEC_NAME)
    table, _ = safetydata.readings(START, 2, count=2)
    days = dualwrite.days_of(spec, table)
    one_day = tmp_path / "one.parquet"
    pq.write_table(table.slice(0, 10), one_day)
    assert reconcile._day_counts_in_metadata(spec, [str(one_day)]) == {days[0]: 10}
    both_days = tmp_path / "both.parquet"  # a file holding two days: counted by a scan instead
    pq.write_table(table, both_days)
    assert reconcile._day_counts_in_metadata(spec, [str(one_day), str(both_days)]) is None


def test_duplicate_keys_are_found_when_postgres_enforces_its_key():
    """With a unique key in PostgreSQL the lake is searched for duplicates only when the join's
    counts show one: a copy equal to PostgreSQL's row, and a lake-only key twice, are both found."""
    import pyarrow as pa

    spec = datasets.get(SPEC_NAME)
    table = dualwrite.conform(spec, safetydata.readings(START, 1, count=2)[0])
    pg, extra = table.slice(0, table.num_rows - 1), table.slice(table.num_rows - 1, 1)  # extra: lake only

    def found(*parts) -> dict[str, set]:
        lake = pa.concat_tables(parts)
        lake = lake.append_column("_file", pa.array(["a.parquet"] * lake.num_rows))
        classes: dict[str, set] = {}
        for d in reconcile.compare_tables(spec, lake, pg, pg_unique=True):
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
