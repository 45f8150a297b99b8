"""Runs at the same time, as cron and people start them.

Loads of different years run side by side and give what sequential loads give; a second run
of the same work is refused with exit 4, naming the run that holds it. Where a test needs two
runs to overlap, it holds the first one mid-way on a lock of its own (a table lock, an
advisory lock the procedure takes next) and starts the second only once pg_locks shows the
first holding its lock and waiting: the overlap does not depend on timing.
"""

import contextlib
import json
import os
import subprocess
import time

import psutil
import pytest
from helpers import call, kernel_processes, run_cli, start_cli

from opsbook.history import ledger as partitions
from opsbook.history import locks, runs, schema
from opsbook.procedures import rollups
from opsbook.stores import postgres
from opsbook.toronto.tickets import STEP

pytestmark = pytest.mark.notebook
DATASET = "toronto_parking_tickets"
YEARS = (2015, 2016, 2017)


@pytest.fixture
def started():
    """Start runs in the background; any still running at the end is killed (its kernel dies with it)."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        proc = start_cli(*args, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, dict, str]:
    """Exit code, --json outcome and stderr of a background run."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, json.loads(out), err


def contents(db, years) -> dict[int, tuple]:
    """Per year: the partition's rows and order-independent hash, its quarantined rows likewise
    (without run id and time), and its ledger figures."""
    found = {}
    for year in years:
        rows = db.execute(
            f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM parking_tickets_{year} t"
        ).fetchone()
        rejected = db.execute(
            "SELECT count(*), coalesce(sum(hashtextextended((source_file, line_number, field, reason, raw_line)"
            "::text, 0)), 0) FROM parking_tickets_rejected WHERE year = %s",
            (year,),
        ).fetchone()
        ledger = db.execute(
            "SELECT status, rows, rejected FROM opsbook.partitions WHERE dataset = %s AND partition = %s "
            "AND step = 'load'",
            (DATASET, str(year)),
        ).fetchone()
        found[year] = (rows, rejected, ledger)
    return found


def rows_per_year(db) -> dict[int, int]:
    return dict(
        db.execute(
            "SELECT extract(year FROM date_of_infraction)::int, count(*) FROM parking_tickets GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )


def sequential_baseline(db, source, years) -> dict[int, tuple]:
    """The contents one load after another give, from an empty database; emptied again after."""
    for year in years:
        result = call("load", source=str(source), years=str(year))
        assert result.years[0].status == "loaded"
    baseline = contents(db, years)
    assert all(rows[0] > 10_000 and rejected[0] > 0 for rows, rejected, _ in baseline.values())
    db.execute("DROP TABLE parking_tickets, parking_tickets_rejected CASCADE")
    db.execute("DROP SCHEMA opsbook CASCADE")
    return baseline


def kernels_of_this_session() -> list[int]:
    """Kernels started against this session's database (other suites may run on the machine)."""
    mine = []
    for pid in kernel_processes():
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).environ().get("DATABASE_URL") == os.environ["DATABASE_URL"]:
                mine.append(pid)
    return mine


def advisory_lock(db, key: str | int) -> list[tuple[int, bool]]:
    """(pid, granted) of the sessions holding or awaiting the advisory lock ``key`` (a lock name
    taken as hashtextextended(key, 0), or a number) in this database."""
    number = db.execute("SELECT hashtextextended(%s, 0)", (key,)).fetchone()[0] if isinstance(key, str) else key
    # a bigint advisory key is split in two: high half in classid, low half in objid
    return db.execute(
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((classid::bigint << 32) | objid::bigint) = %s ORDER BY granted DESC, pid",
        (number,),
    ).fetchall()


def lock_session(db, backend_pid: int) -> str:
    """The application name of a PostgreSQL session: opsbook names each connection after its run."""
    return db.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (backend_pid,)).fetchone()[0]


def advisory_locks(db) -> list[tuple]:
    return db.execute(
        "SELECT pid, classid, objid FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()


def wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 120):
    """Poll ``condition()`` until it is truthy; fail at once if ``proc`` ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {out[-1000:]} {err[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


def running_run(db, procedure: str) -> str | None:
    try:
        row = db.execute(
            "SELECT run_id FROM opsbook.runs WHERE procedure = %s AND status = 'running'", (procedure,)
        ).fetchone()
    except Exception:  # the schema is not there yet
        return None
    return row[0] if row else None


def test_loads_of_different_years_at_once_equal_sequential_loads(clean, demo_dir, started):
    db = clean
    baseline = sequential_baseline(db, demo_dir, YEARS)

    # from an empty database (schema, tables and partitions created by the racing runs), then
    # again with force=true over the loaded years (each swap detaches and drops a partition)
    for extra in ([], ["-p", "force=true"]):
        procs = {
            year: started("load", "-p", f"source={demo_dir}", "-p", f"years={year}", *extra, "--json") for year in YEARS
        }
        outcomes = {year: finish(proc) for year, proc in procs.items()}
        for year, (code, outcome, err) in outcomes.items():
            assert code == 0, f"{year}: {err[-3000:]}"
            assert outcome["summary"].startswith("loaded 1 year(s): "), outcome["summary"]
        assert contents(db, YEARS) == baseline
        assert rows_per_year(db) == {year: baseline[year][0][0] for year in YEARS}
        runs = {outcome["run_id"] for _, outcome, _ in outcomes.values()}
        ledger_runs = db.execute(
            "SELECT partition, run_id FROM opsbook.partitions WHERE dataset = %s ORDER BY 1", (DATASET,)
        ).fetchall()
        assert ledger_runs == [(str(year), outcomes[year][1]["run_id"]) for year in YEARS]
        logged = db.execute(
            "SELECT run_id, status, exit_code FROM opsbook.runs WHERE run_id = ANY(%s)", (list(runs),)
        ).fetchall()
        assert sorted(logged) == sorted((run_id, "success", 0) for run_id in runs)
        # the premise: all three were under way at one moment
        overlap = db.execute(
            "SELECT max(started_at) < min(finished_at) FROM opsbook.runs WHERE run_id = ANY(%s)", (list(runs),)
        ).fetchone()[0]
        assert overlap, "the loads did not run at the same time"

    staging = db.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'parking\\_tickets\\_%\\_load'").fetchone()
    assert staging == (0,)
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []


def test_a_second_load_of_the_same_year_exits_4_naming_the_first(clean, demo_dir, started):
    db = clean
    baseline = sequential_baseline(db, demo_dir, [2016])
    assert call("load", source=str(demo_dir), years="2016").years[0].status == "loaded"
    args = ("load", "-p", f"source={demo_dir}", "-p", "years=2016", "-p", "force=true", "--json")
    key = locks.partition_lock(STEP, DATASET, "2016")

    # the test holds the parent table: the first load can read its files and COPY, but waits to
    # swap its partition in, holding the year's lock all the while
    with postgres.connection(purpose="test gate") as gate:
        gate.execute("LOCK TABLE parking_tickets IN SHARE UPDATE EXCLUSIVE MODE")
        first = started(*args)
        holders = wait_for(lambda: advisory_lock(db, key), first, "the first load took the lock of 2016")
        wait_for(
            lambda: db.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'parking_tickets'::regclass AND NOT granted"
            ).fetchone()[0],
            first,
            "the first load waits to swap its partition in",
        )
        first_id = running_run(db, "load")
        assert len(holders) == 1 and holders[0][1]
        assert lock_session(db, holders[0][0]) == f"opsbook load {first_id}"

        second = run_cli(*args)
        assert second.code == 4, second.stderr
        error = second.json()["error"]
        assert f"{key} is held by run {first_id} on " in error
        # opsbook.locks names the process that took the lock: the first run's kernel
        named_pid = int(error.split("(pid ")[1].split(")")[0])
        assert named_pid in [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        second_row = runs.get(db, second.json()["run_id"])
        assert (second_row["status"], second_row["exit_code"]) == ("failed", 4)
        assert first.poll() is None  # still waiting: the refusal did not disturb it
        gate.rollback()

    code, outcome, err = finish(first)
    assert code == 0, err[-3000:]
    assert outcome["run_id"] == first_id and outcome["summary"].startswith("loaded 1 year(s): ")
    assert contents(db, [2016]) == baseline
    entry = partitions.get(db, DATASET, "2016", STEP)
    assert (entry.status, entry.run_id) == ("success", first_id)
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []


@pytest.fixture
def readings(db):
    """Four intersections' 15-minute readings around the rollups window."""
    import datetime as dt

    from opsbook import datasets
    from opsbook.demo import safety as safetydata
    from opsbook.trafficsafety import dualwrite

    db.execute("DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    spec = datasets.get("safety_indices")
    dualwrite.ensure_tables(db, spec)
    table, _ = safetydata.readings(dt.date(2025, 10, 31), 9, count=4)
    assert dualwrite.write_postgres(spec, table) == table.num_rows
    return db


ROLLUPS = ("rollups", "-f", "params/demo/trafficsafety/rollups.yaml", "--json")
# the rollups build takes this transaction lock right after the dataset's lock: held by the test, it
# keeps the first run between the two
ROLLUPS_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.safety_indices'))"


def ddl_lock_number(db) -> int:
    return db.execute("SELECT hashtext('opsbook.ddl.safety_indices')::bigint").fetchone()[0]


def test_cron_overlap_the_second_rollups_exits_4_before_a_kernel(readings, started, reports_dir):
    db = readings
    key = rollups.locks(rollups.Params(dataset="safety_indices"))[0]
    with postgres.connection(purpose="test gate") as gate:
        gate.execute(ROLLUPS_DDL_LOCK)
        first = started(*ROLLUPS)
        waiting = wait_for(
            lambda: [h for h in advisory_lock(db, ddl_lock_number(db)) if not h[1]],
            first,
            "the first rollups waits on the test's lock",
        )
        # read once the run waits: before its kernel starts, the runner's pre-flight check
        # takes and releases the same lock in a session of its own
        holders = advisory_lock(db, key)
        assert holders == [(waiting[0][0], True)]  # one session: the first run's
        first_id = running_run(db, "rollups")

        second = run_cli(*ROLLUPS)
        assert second.code == 4, second.stderr
        error = second.json()["error"]
        assert error.startswith(f"{key} is held by {first_id} on ")
        assert "[rollups " not in second.stderr  # refused before any kernel or cell
        assert first.poll() is None
        gate.rollback()

    code, outcome, err = finish(first)
    assert code == 0, err[-3000:]
    assert outcome["run_id"] == first_id and outcome["status"] == "pass"
    assert db.execute("SELECT count(*) FROM safety_indices_daily").fetchone()[0] == 4 * 7
    # the refused run left no run-log row and no report: only the first is recorded
    logged = db.execute("SELECT run_id, status FROM opsbook.runs WHERE procedure = 'rollups'").fetchall()
    assert logged == [(first_id, "success")]
    history = [json.loads(line)["run_id"] for line in (reports_dir / "runs.jsonl").read_text().splitlines()]
    assert history == [first_id]
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []


def test_two_identical_rollups_started_together_one_runs_one_exits_4(readings, started):
    db = readings
    key = rollups.locks(rollups.Params(dataset="safety_indices"))[0]
    # whichever run takes the dataset lock first stays between it and the test's lock until the
    # other has ended: the other is refused either by the runner's probe or in its notebook
    with postgres.connection(purpose="test gate") as gate:
        gate.execute(ROLLUPS_DDL_LOCK)
        procs = [started(*ROLLUPS), started(*ROLLUPS)]
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = [p for p in procs if p.poll() is not None]
        assert len(refused) == 1, f"{len(refused)} of the 2 runs ended while the test held the first one"
        winner = next(p for p in procs if p is not refused[0])
        code, outcome, err = finish(refused[0])
        assert code == 4, err[-3000:]
        assert f"{key} is held by " in outcome["error"]
        holders = advisory_lock(db, key)
        assert len(holders) == 1 and holders[0][1]
        holder = lock_session(db, holders[0][0])
        assert winner.poll() is None
        gate.rollback()

    code, outcome, err = finish(winner)
    assert code == 0, err[-3000:]
    assert outcome["status"] == "pass"
    assert holder == f"opsbook run {outcome['run_id']}"  # the lock was the winner's all along
    assert db.execute("SELECT count(*) FROM safety_indices_daily").fetchone()[0] == 4 * 7
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []


def test_the_holder_named_is_the_session_holding_the_lock(db):
    from opsbook.errors import LockHeld

    key = "opsbook.test:holder"
    with postgres.connection(autocommit=True, purpose="run first") as first:
        schema.ensure_schema(first)
        locks.try_lock(first, key, "run first")
        assert locks.holder_of(db, key).startswith("run first on ")
        locks.unlock(first, key)
    # a newer holder that has taken the lock but not yet recorded itself: the old row is not named
    with postgres.connection(autocommit=True, purpose="run second") as second:
        second.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        named = locks.holder_of(db, key)
        assert named.startswith("a session 'opsbook run second' (PostgreSQL pid ") and "run first" not in named
        with pytest.raises(LockHeld, match="held by a session 'opsbook run second'"):
            locks.try_lock(db, key, "run third")
        locks.unlock(second, key)
