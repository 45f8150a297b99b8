"""dual_write against a real PostgreSQL, a lake and an archive (folders, or the GCS emulator)."""

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import call, run_cli

from opsbook import datasets
from opsbook.demo import safety as safetydata
from opsbook.errors import CheckFailed, LockHeld, SourceError, UsageError
from opsbook.history import locks
from opsbook.procedures import dual_write
from opsbook.run import context
from opsbook.stores import uri
from opsbook.trafficsafety import dualwrite, write_lock
from opsbook.trafficsafety.compare import compare
from opsbook.windows import Days

pytestmark = pytest.mark.integration
SPEC_NAME = "safety_indices"
TARGETS = ("lake", "postgres", "archive")


@pytest.fixture
def lake(tmp_path, monkeypatch, db):
    """An empty lake, archive and staging area, and no safety_indices rows, writes or intersections."""
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, intersections")
    spec = datasets.get(SPEC_NAME)
    dualwrite.ensure_tables(db, spec)
    db.execute("DELETE FROM opsbook.writes WHERE dataset = %s", (SPEC_NAME,))
    shutil.rmtree(Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging", ignore_errors=True)
    return spec


def write(**values):
    """dual_write of the demo's batches (a stand-in source: the test database is a configured one)."""
    values.setdefault("source", "demo")
    return call("dual_write", allow_demo=True, **values)


def source_batches() -> dict[str, pa.Table]:
    """The demo source's index batches by id."""
    folder = safetydata.source_folder()
    return {p.stem: pq.read_table(p) for p in sorted(Path(folder).glob("safety-*.parquet"))}


def raw_files(day: dt.date) -> dict[str, bytes]:
    """The demo source's raw BSM files of one day, by batch id."""
    folder = Path(safetydata.source_folder())
    return {p.stem: p.read_bytes() for p in sorted(folder.glob(f"bsm_{day}_*.parquet"))}


def days_of(table: pa.Table) -> set[dt.date]:
    return {t.astimezone(dt.UTC).date() for t in table.column("timestamp").to_pylist()}


def ledger(db) -> dict[tuple[str, str], tuple[str, int]]:
    rows = db.execute(
        "SELECT batch_id, target, status, attempts FROM opsbook.writes WHERE dataset = %s", (SPEC_NAME,)
    ).fetchall()
    return {(b, t): (s, a) for b, t, s, a in rows}


def table_digest(db, table: str = "safety_indices_realtime"):
    return db.execute(f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {table} t").fetchone()


def test_a_window_writes_its_batches_to_every_target_once(lake, db):
    batches = source_batches()
    wanted = {b for b, t in batches.items() if dt.date(2025, 11, 1) in days_of(t)}
    result = write(window="2025-11-01")
    verdict = result.verdict()
    assert verdict.status == "pass", verdict.summary
    assert len(wanted) > 24  # the day's own batches, and the next day's with its late readings
    assert all(b.complete for b in result.batches) and result.pending == []
    raw = raw_files(dt.date(2025, 11, 1))
    assert len(raw) == 24 and {b.batch_id for b in result.batches} == wanted | set(raw)
    expected = {(b, t): ("success", 1) for b in wanted for t in ("lake", "postgres")}
    assert ledger(db) == expected | {(b, "archive"): ("success", 1) for b in raw}

    # every reading of the day is in PostgreSQL, and the batches' other rows too: nothing else
    rows = pa.concat_tables([batches[b] for b in sorted(wanted)])
    assert (
        db.execute("SELECT count(*) FROM safety_indices_realtime").fetchone()[0]
        == rows.num_rows
        == result.rows - sum(pq.read_table(pa.BufferReader(data)).num_rows for data in raw.values())
    )
    readings, _ = safetydata.readings(dt.date(2025, 11, 1), 7)
    day_one = sum(1 for t in readings.column("timestamp").to_pylist() if t.date() == dt.date(2025, 11, 1))
    assert (
        db.execute("SELECT count(*) FROM safety_indices_realtime WHERE timestamp < '2025-11-02'").fetchone()[0]
        == day_one
    )
    # the bucket: the processed indices once, a file per UTC day; the raw files as they came
    indices = Path(os.environ["LAKE_URL"]) / "processed" / "indices"
    assert sorted(p.name for p in indices.iterdir()) == ["indices_2025-11-01.parquet", "indices_2025-11-02.parquet"]
    assert sum(pq.read_table(p).num_rows for p in indices.iterdir()) == rows.num_rows
    assert pq.read_table(indices / "indices_2025-11-01.parquet").num_rows == day_one
    archived = Path(os.environ["ARCHIVE_URL"]) / "raw" / "bsm" / "2025" / "11" / "01"
    assert {p.stem: p.read_bytes() for p in archived.iterdir()} == raw  # byte for byte
    assert compare(lake, Days.parse("2025-11-01")).differences == []

    # a batch the ledger has in every target is not written again, unless forced
    before = table_digest(db)
    again = write(window="2025-11-01")
    assert again.batches == [] and len(again.plan.writes.done) == len(wanted) + len(raw)
    assert again.verdict().status == "pass" and "already in every target" in again.verdict().summary
    assert again.verdict().rows_out == verdict.rows_out == result.rows  # the window's rows held, not a drop
    forced = write(window="2025-11-01", force=True)
    assert {b.batch_id for b in forced.batches} == wanted | set(raw) and forced.verdict().status == "pass"
    assert {(b, t): v for (b, t), v in ledger(db).items() if b in wanted} == {
        (b, t): ("success", 2) for b in wanted for t in ("lake", "postgres")
    }
    assert table_digest(db) == before
    assert pq.read_table(indices / "indices_2025-11-01.parquet").num_rows == day_one  # merged, not doubled


def test_consecutive_windows_and_a_missing_target_write_each_batch_once(lake, db):
    first = write(window="2025-11-01", targets="lake,postgres")
    assert first.verdict().status == "pass"
    assert not any(b.batch_id.startswith("bsm_") for b in first.batches)  # the archive was not a target
    second = write(window="2025-11-02")
    # the batches of 2025-11-02 already in the lake and PostgreSQL are not written again; the raw
    # files of the day reach the archive
    shared = {b.batch_id for b in first.batches} & {b.batch_id for b in second.batches}
    assert first.batches and not shared
    assert len(second.plan.writes.done) > 0
    archived = {b.batch_id for b in second.batches if set(b.targets) == {"archive"}}
    assert archived == set(raw_files(dt.date(2025, 11, 2)))
    assert all(set(b.targets) == {"lake", "postgres"} for b in second.batches if b.batch_id not in archived)
    assert {a for _, a in ledger(db).values()} == {1}  # no batch was written twice to a target
    assert compare(lake, Days.parse("2025-11-01..2025-11-02")).differences == []


def test_intersections_are_upserted_from_the_source(lake, db, tmp_path):
    from opsbook.stores.postgres import has_postgis

    result = write(window="2025-11-03")
    assert result.written.intersections == 8
    demo = safetydata.intersections(8)
    rows = db.execute("SELECT id, name, latitude, longitude, installed_on FROM intersections ORDER BY id").fetchall()
    assert rows == [tuple(r) for r in demo.itertuples(index=False)]
    if has_postgis(db):  # with PostGIS: test_intersections_get_a_postgis_point_where_postgis_exists
        assert db.execute("SELECT count(*) FROM intersections WHERE geometry IS NOT NULL").fetchone()[0] == 8

    # a source of our own: two batches, the intersections file with one name changed
    folder = tmp_path / "incoming"
    folder.mkdir()
    source = Path(safetydata.source_folder())
    for name in ("safety-20251101T05.parquet", "safety-20251101T06.parquet"):
        shutil.copy(source / name, folder / name)
    text = (source / "intersections.csv").read_text()
    (folder / "intersections.csv").write_text(text.replace(demo["name"][0], "Renamed Corner"))
    ours = call("dual_write", source=str(folder), force=True)
    assert ours.verdict().status == "pass" and len(ours.batches) == 2
    assert db.execute("SELECT name FROM intersections WHERE id = 1001").fetchone()[0] == "Renamed Corner"
    assert db.execute("SELECT count(*) FROM intersections").fetchone()[0] == 8


def test_unreadable_batch_files_are_reported_and_the_others_written(lake, db, tmp_path):
    folder = tmp_path / "incoming"
    (folder / "2025" / "11").mkdir(parents=True)
    source = Path(safetydata.source_folder())
    shutil.copy(source / "safety-20251101T05.parquet", folder / "2025" / "11" / "safety-20251101T05.parquet")
    shutil.copy(source / "safety-20251101T06.parquet", folder / "safety-20251101T06.parquet")
    (folder / "truncated.parquet").write_bytes((source / "safety-20251101T07.parquet").read_bytes()[:200])
    pq.write_table(
        pq.read_table(source / "safety-20251101T08.parquet").drop(["intersection_id"]), folder / "narrow.parquet"
    )
    # an older collector's batch: its column names are mapped, the columns it lacks are NULL
    older = pq.read_table(source / "safety-20251101T09.parquet").select(list(safetydata.LEGACY_NAMES))
    pq.write_table(older.rename_columns(list(safetydata.LEGACY_NAMES.values())), folder / "older.parquet")
    (folder / "README.txt").write_text("incoming batches")

    plan = dual_write.plan(context.make("dual_write", source=str(folder)))
    work = ["older", "safety-20251101T05", "safety-20251101T06"]
    assert [w.batch.batch_id for w in plan.writes.work] == work
    assert plan.writes.found.ignored == ["README.txt"]
    reasons = dict(plan.writes.found.unreadable)
    assert set(reasons) == {"truncated.parquet", "narrow.parquet"}
    assert "intersection_id" in reasons["narrow.parquet"]

    result = call("dual_write", source=str(folder))
    verdict = result.verdict()
    assert verdict.status == "fail" and verdict.error is SourceError
    assert verdict.summary.startswith("2 batch file(s) could not be read and were not written (first: ")
    assert [b.batch_id for b in result.batches if b.complete] == work
    assert db.execute("SELECT count(*) FROM safety_indices_realtime").fetchone()[0] == result.rows > 0
    counted = sum(pq.read_table(folder / n).column("vru_count").null_count for n in ("safety-20251101T06.parquet",))
    counted += pq.read_table(folder / "2025" / "11" / "safety-20251101T05.parquet").column("vru_count").null_count
    nulls = "SELECT count(*) FROM safety_indices_realtime WHERE vru_count IS NULL"
    assert db.execute(nulls).fetchone()[0] == older.num_rows + counted


def test_a_window_with_no_batch_is_refused_before_anything_is_written(lake, db):
    with pytest.raises(SourceError, match=r"no batch of .* falls in 2030-01-01: nothing to write \(336 batch"):
        write(window="2030-01-01")
    assert ledger(db) == {}


def test_a_stand_in_source_is_refused_against_a_configured_database():
    with pytest.raises(UsageError, match="source=demo generates stand-in data"):
        context.make("dual_write", source="demo")
    with pytest.raises(UsageError, match="target"):
        context.make("dual_write", source="demo", allow_demo=True, targets="lake,s3")


def test_one_writer_at_a_time(lake, db):
    key = write_lock(SPEC_NAME)
    locks.try_lock(db, key, "run holding it")
    try:
        with pytest.raises(LockHeld, match=f"{key} is held by run holding it"):
            write(window="2025-11-01")
    finally:
        locks.unlock(db, key)
    assert ledger(db) == {}


def test_batches_read_from_gcs(lake, db, gcs_emulator, monkeypatch):
    prefix = "gs://opsbook-test/incoming/safety"
    source = Path(safetydata.source_folder())
    names = ["safety-20251101T05.parquet", "safety-20251101T06.parquet", "intersections.csv"]
    names.append("bsm_2025-11-01_050000.parquet")
    for name in names:
        uri.write_bytes(uri.join(prefix, name), (source / name).read_bytes())
    bucket = "gs://opsbook-test/bucket"  # the processed and the raw side in one bucket, as the runbook has it
    monkeypatch.setenv("LAKE_URL", bucket)
    monkeypatch.setenv("ARCHIVE_URL", bucket)
    result = call("dual_write", source=prefix, window="2025-11-01")
    assert result.verdict().status == "pass", result.verdict().summary
    batches = ["bsm_2025-11-01_050000", "safety-20251101T05", "safety-20251101T06"]
    assert [b.batch_id for b in result.batches] == batches
    assert result.written.intersections == 8
    # the runbook's bucket layout, through google-cloud-storage
    listed = {o.uri.removeprefix(bucket + "/") for o in uri.listing(bucket)}
    assert listed == {
        "processed/indices/indices_2025-11-01.parquet",
        "raw/bsm/2025/11/01/bsm_2025-11-01_050000.parquet",
    }
    archived = uri.read_bytes(f"{bucket}/raw/bsm/2025/11/01/bsm_2025-11-01_050000.parquet")
    assert archived == (source / "bsm_2025-11-01_050000.parquet").read_bytes()


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
    demo = ("-p", "allow_demo=true")
    emulator = start_emulator(port, data_dir)
    try:
        first = run_cli("dual_write", "-p", "window=2025-11-01", *demo, "--json", env=env)
        assert first.code == 0, first.stderr
        emulator.kill()
        emulator.wait()
        down = run_cli("dual_write", "-p", "window=2025-11-02", *demo, "--json", env=env)
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
            ("archive", "pending"): 24,  # the day's raw files
        }

        check = run_cli("reconcile_dual_write", "-p", "window=2025-11-01..2025-11-02", "--json", env=env)
        assert check.code == 1
        assert check.json()["results"]["verdict"]["figures"]["pending writes"] == 24

        emulator = start_emulator(port, data_dir)
        retried = run_cli("dual_write", "-p", "retry_pending=true", *demo, "--json", env=env)
        assert retried.code == 0, retried.stderr
        again = run_cli("reconcile_dual_write", "-p", "window=2025-11-01..2025-11-02", "--json", env=env)
        assert again.code == 0, again.json()["summary"]
        assert not list((Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging" / SPEC_NAME).glob("*.parquet"))
    finally:
        emulator.kill()


def test_retry_pending_writes_every_pending_batch_from_its_staged_copy(lake, db, tmp_path, monkeypatch):
    broken = tmp_path / "not-a-folder"
    broken.write_text("")
    monkeypatch.setenv("ARCHIVE_URL", str(broken))  # every archive write fails
    failed = write(window="2025-11-04")
    verdict = failed.verdict()
    assert verdict.status == "fail" and verdict.error is CheckFailed
    pending = {p["batch_id"] for p in failed.pending}
    raw = {b.batch_id for b in failed.batches if b.batch_id.startswith("bsm_")}
    assert pending == raw and len(raw) == 24 and {p["target"] for p in failed.pending} == {"archive"}
    assert all(b.complete for b in failed.batches if b.batch_id not in raw)
    first_error = failed.pending[0]["last_error"]
    assert first_error.startswith(("NotADirectoryError", "FileExistsError"))
    assert all(p["last_error"].startswith("not tried: archive failed at batch ") for p in failed.pending[1:])

    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    retried = write(retry_pending=True)
    assert retried.verdict().status == "pass" and retried.pending == []
    assert {b.batch_id for b in retried.batches} == pending
    assert all(set(b.targets) == {"archive"} for b in retried.batches)
    assert {o.name.removesuffix(".parquet") for o in uri.listing(str(tmp_path / "archive"))} == pending


def test_an_archived_raw_file_whose_md5_does_not_match_stays_pending(lake, db, monkeypatch):
    monkeypatch.setattr(uri, "md5_of", lambda target: "0" * 32)  # the store reads back other bytes
    result = write(window="2025-11-01", targets="archive")
    assert result.verdict().status == "fail"
    pending = {p["batch_id"]: p["last_error"] for p in result.pending}
    assert len(pending) == 24 and all(b.startswith("bsm_2025-11-01_") for b in pending)
    first = pending[min(pending)]
    assert "the stored object's MD5 differs from the file's" in first


def test_intersections_get_a_postgis_point_where_postgis_exists(lake, db):
    """The runbook's spatial query (Task 4.3, nearby intersections) works on what dual_write made."""
    from helpers import postgis

    postgis(db)  # skips, saying why, where the server has no PostGIS (never in CI)
    db.execute("DROP TABLE IF EXISTS intersections")
    assert write(window="2025-11-03").written.intersections == 8
    lat, lon = db.execute("SELECT latitude, longitude FROM intersections WHERE id = 1001").fetchone()
    nearby = db.execute(
        "SELECT id FROM intersections WHERE ST_DWithin(geometry::geography, "
        "ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography, 10) ORDER BY id",
        (lon, lat),
    ).fetchall()
    assert nearby == [(1001,)]
    index = db.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'intersections' AND indexdef ~ 'gist'")
    assert index.fetchone() is not None


def test_a_retry_reads_no_source_so_the_stand_in_default_is_not_refused(database_url):
    """Against a configured database a stand-in source needs allow_demo=true; a retry of the
    staged pending batches reads no source, so the notebook's default does not stop it."""
    from opsbook.errors import UsageError

    with pytest.raises(UsageError, match="allow_demo"):
        context.make("dual_write")
    assert context.make("dual_write", retry_pending=True).params.retry_pending
