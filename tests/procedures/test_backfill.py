"""backfill against a real PostgreSQL: kill -9 and resume, the lock, resume/force, pool, Dask, failures."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers import kernel_processes, run_cli, start_cli

from opsbook.demo import tickets as demodata
from opsbook.history import locks, schema

pytestmark = pytest.mark.notebook
DATASET = "toronto_parking_tickets"
YEARS = (2015, 2016, 2017)
ROWS = 300_000  # per year: a year takes a few seconds, so a run can be killed in the middle of one
# the aggregate step reads the demo camera charges (the default), a stand-in source: the test
# database is a configured one, so the run says it is meant for stand-in data
DEMO_CAMERAS = ("-p", "allow_demo=true")


@pytest.fixture(scope="session")
def big_dir():
    from conftest import _STATE

    folder = _STATE / "backfill-files"
    if not folder.exists():
        for year in YEARS:
            demodata.write_year(folder, year, rows=ROWS)
    return folder


@pytest.fixture
def clean(db):
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected CASCADE")
    db.execute(
        "DROP TABLE IF EXISTS parking_ticket_yearly_locations, red_light_yearly_locations, "
        "ase_yearly_locations, red_light_camera_charges, ase_camera_charges CASCADE"
    )
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    return db


def rows_per_year(db) -> dict[int, int]:
    return dict(
        db.execute(
            "SELECT extract(year FROM date_of_infraction)::int, count(*) FROM parking_tickets GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )


def ledger(db) -> list[tuple]:
    return db.execute(
        "SELECT partition, step, status FROM opsbook.partitions WHERE dataset = %s ORDER BY 1, 2", (DATASET,)
    ).fetchall()


BUILT_TABLES = (
    "parking_tickets",
    "parking_tickets_rejected",
    "parking_ticket_yearly_locations",
    "red_light_yearly_locations",
)


def digest(db, table: str) -> tuple:
    """Row count and an order-independent hash of the rows (of the quarantine: without run id and time)."""
    row = (
        "(t.year, t.source_file, t.line_number, t.field, t.reason, t.raw_line)" if table.endswith("_rejected") else "t"
    )
    return db.execute(f"SELECT count(*), coalesce(sum(hashtextextended({row}::text, 0)), 0) FROM {table} t").fetchone()


def test_kill_9_mid_way_then_resume(clean, big_dir, reports_dir):
    db = clean
    window = f"{YEARS[0]}-{YEARS[-1]}"
    proc = start_cli(
        "backfill", "-p", f"source={big_dir}", "-p", f"window={window}", "-p", "steps=load,aggregate", "-p", "cameras="
    )
    deadline = time.monotonic() + 180
    killed_while = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            entries = ledger(db)
        except Exception:  # the schema is not there yet
            entries = []
        done = [e for e in entries if e[2] == "success"]
        running = [e for e in entries if e[2] == "running" and e[1] == "load"]
        if done and running:
            os.kill(proc.pid, signal.SIGKILL)
            killed_while = running[0]
            break
        time.sleep(0.05)
    proc.wait(30)
    assert killed_while, f"the backfill ended before it could be killed: {proc.stderr.read()[-2000:]}"
    partition, step, _ = killed_while
    key = locks.partition_lock(step, DATASET, partition)
    for _ in range(50):  # the kernel dies with the runner; PostgreSQL notices the closed session
        if locks.lock_is_free(db, key):
            break
        time.sleep(0.1)
    assert locks.lock_is_free(db, key), "the killed run's kernel still holds the partition"
    assert kernel_processes() == []
    still = dict(((p, s), st) for p, s, st in ledger(db))
    assert still[(partition, step)] == "running"  # left behind: only the next backfill can tell

    done = run_cli(
        "backfill",
        "-p",
        f"source={big_dir}",
        "-p",
        f"window={window}",
        "-p",
        "steps=load,aggregate",
        "-p",
        "cameras=",
        "-p",
        "resume=true",
        "--json",
    )
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["results"]["verdict"]["figures"]["interrupted before"] >= 1
    page = Path(outcome["reports"]["html"]).read_text()
    assert "marked interrupted" in page and partition in page
    expected = {year: ROWS for year in YEARS}
    assert rows_per_year(db) == expected
    assert ledger(db) == [(str(y), s, "success") for y in YEARS for s in ("aggregate", "load")]
    leftovers = db.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'parking_tickets_%_load'").fetchone()[0]
    assert leftovers == 0
    yearly = dict(
        db.execute("SELECT year, sum(ticket_count) FROM parking_ticket_yearly_locations GROUP BY 1").fetchall()
    )
    assert yearly == expected


def test_a_second_backfill_of_the_dataset_exits_4_before_a_kernel(clean, demo_dir, reports_dir):
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True) as holder:
        schema.ensure_schema(holder)
        locks.try_lock(holder, f"opsbook.backfill:{DATASET}", "run 20261122T000000Z-backfill-aaaaaa")
        done = run_cli("backfill", "-p", f"source={demo_dir}", "-p", "window=2015", *DEMO_CAMERAS, "--json")
    assert done.code == 4
    error = done.json()["error"]
    assert "20261122T000000Z-backfill-aaaaaa" in error and "pid" in error and "since" in error
    assert "[backfill " not in done.stderr  # refused before any cell ran
    assert not (reports_dir / "runs.jsonl").exists()


def test_resume_after_a_finished_backfill_does_nothing_and_force_is_identical(clean, demo_dir):
    db = clean
    args = ["backfill", "-p", f"source={demo_dir}", "-p", "window=2015-2018", *DEMO_CAMERAS, "--json"]
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    before = [digest(db, t) for t in BUILT_TABLES]
    again = run_cli(*args, "-p", "resume=true")
    assert again.code == 0
    assert again.json()["summary"] == "nothing to do: all 4 partitions already done"
    assert again.json()["results"]["verdict"]["figures"]["ran"] == 0
    forced = run_cli(*args, "-p", "force=true")
    assert forced.code == 0
    assert forced.json()["results"]["verdict"]["figures"]["ran"] == 4
    after = [digest(db, t) for t in BUILT_TABLES]
    assert after == before
    runs = {r[0] for r in db.execute("SELECT DISTINCT run_id FROM opsbook.partitions").fetchall()}
    assert runs == {forced.json()["run_id"]}


def test_a_failing_partition_does_not_stop_the_others(clean, demo_dir, tmp_path):
    db = clean
    source = tmp_path / "files"
    shutil.copytree(demo_dir, source)
    original = (source / "parking-tickets-2016.zip").read_bytes()
    (source / "parking-tickets-2016.zip").write_bytes(original[: len(original) // 2])  # truncated
    done = run_cli("backfill", "-p", f"source={source}", "-p", "window=2015-2017", *DEMO_CAMERAS, "--json")
    assert done.code == 1, done.stderr
    outcome = done.json()
    figures = outcome["results"]["verdict"]["figures"]
    assert (figures["ran"], figures["failed"]) == (3, 1)
    assert "2016" in outcome["summary"] and "truncated" in outcome["summary"]
    command = outcome["summary"].split("Rerun only them: ")[1]
    assert command == (
        f"python run_notebook.py backfill -p dataset={DATASET} -p source={source} -p window=2016 "
        "-p steps=load,aggregate -p only_failed=true -p allow_demo=true"
    )
    assert set(rows_per_year(db)) == {2015, 2017}
    statuses = {(p, s): st for p, s, st in ledger(db)}
    assert statuses[("2016", "load")] == "failed"
    assert ("2016", "aggregate") not in statuses  # never started after its load failed

    (source / "parking-tickets-2016.zip").write_bytes(original)
    args = command.split()[2:]  # the exact command the report gave, as cron would run it
    rerun = run_cli(*args, "--json")
    assert rerun.code == 0, rerun.stderr
    assert rerun.json()["results"]["verdict"]["figures"]["ran"] == 1
    assert set(rows_per_year(db)) == {2015, 2016, 2017}


def test_a_local_pool_gives_the_same_tables(clean, demo_dir):
    db = clean
    done = run_cli(
        "backfill", "-p", f"source={demo_dir}", "-p", "window=2015-2018", "-p", "workers=2", *DEMO_CAMERAS, "--json"
    )
    assert done.code == 0, done.stderr
    assert "a local pool of 2 processes" in done.json()["summary"]
    expected = demodata.expected_monthly(range(2015, 2019)).groupby("year")["tickets"].sum()
    assert rows_per_year(db) == {int(y): int(n) for y, n in expected.items()}
    progress = [line for line in done.stderr.splitlines() if line.startswith("[backfill] ")]
    assert len(progress) == 4 and all("ETA" in line and "elapsed" in line for line in progress)


def test_partitions_run_on_dask(clean, demo_dir):
    from distributed import LocalCluster

    db = clean
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address.removeprefix("tcp://")
        worker_pids = {w.pid for w in cluster.workers.values()}
        done = run_cli(
            "backfill",
            "-p",
            f"source={demo_dir}",
            "-p",
            "window=2015-2018",
            "-p",
            f"executor=dask://{address}",
            *DEMO_CAMERAS,
            "--json",
        )
    assert done.code == 0, done.stderr
    assert f"Dask at tcp://{address}" in done.json()["summary"]
    assert len(rows_per_year(db)) == 4
    page = Path(done.json()["reports"]["ipynb"]).read_text()
    used = {
        int(pid)
        for pid in __import__("re").findall(
            r":(\d+)", json.dumps([line for line in page.splitlines() if "backfill-partitions" in line])
        )
    }
    assert used & worker_pids, "the partitions ran on the cluster's workers"


def test_contradictory_modes_are_refused():
    done = run_cli("backfill", "-p", "resume=true", "-p", "force=true", *DEMO_CAMERAS)
    assert done.code == 2 and "resume and force contradict" in done.stderr
    done = run_cli("backfill", "-p", "steps=load,agregate")
    assert done.code == 2 and "unknown step(s) agregate" in done.stderr
