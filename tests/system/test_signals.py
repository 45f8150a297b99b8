"""A run stopped by a signal, or losing its database session, ends failed and leaves nothing
half-made: no 'running' run or ledger row, staging table, lock, kernel or kernel folder.

Each run is held mid-way by the test (a table lock its swap waits on), so the signal arrives
while a staging table exists and the year's lock is held: the overlap does not depend on timing.
"""

import json
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from helpers import call
from test_concurrency import advisory_locks, finish, kernels_of_this_session, running_run, started, wait_for

from opsbook.stores import postgres

pytestmark = pytest.mark.notebook
__all__ = ["started"]  # the fixture, used by name

LOAD = ("load", "-p", "years=2016", "-p", "force=true", "--json")


def digest(db, year=2016):
    return db.execute(
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM parking_tickets_{year} t"
    ).fetchone()


def waiting_on_swap(db):
    return db.execute(
        "SELECT pid FROM pg_locks WHERE relation = 'parking_tickets'::regclass AND NOT granted"
    ).fetchall()


def staging_tables(db) -> int:
    return db.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'parking\\_tickets\\_%\\_load'").fetchone()[0]


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)], ids=["TERM", "INT", "HUP"]
)
def test_a_signalled_run_ends_failed_with_its_report_and_nothing_left(
    signum, code, clean, demo_dir, started, reports_dir
):
    db = clean
    assert call("load", source=str(demo_dir), years="2016").years[0].status == "loaded"
    before = digest(db)
    # the runner's temporary folder, where the kernel's sockets and logs go (short: a socket's
    # path is limited to about 100 bytes)
    temp = Path(tempfile.mkdtemp(prefix="sig-", dir="/tmp"))
    with postgres.connection(purpose="test gate") as gate:
        gate.execute("LOCK TABLE parking_tickets IN SHARE UPDATE EXCLUSIVE MODE")
        proc = started(*LOAD, "-p", f"source={demo_dir}", env={"TMPDIR": str(temp)})
        wait_for(lambda: waiting_on_swap(db), proc, "the load waits to swap 2016 in")
        run_id = running_run(db, "load")
        # the premise: half-made state exists when the signal comes
        assert staging_tables(db) == 1 and list(temp.glob("opsbook-kernel-*"))
        proc.send_signal(signum)
        exit_code, outcome, err = finish(proc, timeout=120)
        gate.rollback()

    name = signal.Signals(signum).name
    assert exit_code == code, err[-3000:]
    assert outcome["run_id"] == run_id and outcome["status"] == "fail" and outcome["exit_code"] == code
    assert outcome["error"] == f"stopped by {name}: the kernel was interrupted; the run did not finish", outcome
    assert outcome["reports"]["html"] and "Traceback" not in err
    html = Path(outcome["reports"]["html"]).read_text(encoding="utf-8")
    assert f"stopped by {name}" in html
    history = [json.loads(line) for line in (reports_dir / "runs.jsonl").read_text().splitlines()]
    assert (history[-1]["run_id"], history[-1]["exit_code"]) == (run_id, code)
    row = db.execute("SELECT status, exit_code FROM opsbook.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row == ("failed", code)
    entry = db.execute("SELECT status, error FROM opsbook.partitions WHERE run_id = %s", (run_id,)).fetchone()
    assert entry[0] in ("interrupted", "failed") and entry[0] != "running"
    assert staging_tables(db) == 0
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []
    assert list(temp.iterdir()) == []
    shutil.rmtree(temp)
    assert digest(db) == before


@pytest.mark.parametrize("session", ["swap", "control"])
def test_a_lost_session_fails_its_year_and_the_next_year_loads(session, clean, demo_dir, started):
    """The server ends one of the load's sessions while 2016 waits to swap. The swap's: 2016
    fails (its ledger entry says so) and keeps its rows. The control session's: 2016 commits on
    its own session. Either way 2017 loads, and no ledger entry stays 'running'."""
    db = clean
    assert call("load", source=str(demo_dir), years="2016-2017").years[0].status == "loaded"
    before = digest(db)
    with postgres.connection(purpose="test gate") as gate:
        gate.execute("LOCK TABLE parking_tickets IN SHARE UPDATE EXCLUSIVE MODE")
        proc = started("load", "-p", f"source={demo_dir}", "-p", "years=2016-2017", "-p", "force=true", "--json")
        waiting = wait_for(lambda: waiting_on_swap(db), proc, "the load waits to swap 2016 in")
        run_id = running_run(db, "load")
        if session == "swap":
            victim = waiting[0][0]
        else:
            victim = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"opsbook load {run_id}",)
            ).fetchone()[0]
        db.execute("SELECT pg_terminate_backend(%s)", (victim,))
        gate.rollback()
        exit_code, outcome, err = finish(proc, timeout=300)

    ledger = dict(
        db.execute(
            "SELECT partition, status FROM opsbook.partitions WHERE run_id = %s AND step = 'load'", (run_id,)
        ).fetchall()
    )
    assert "running" not in ledger.values(), ledger
    assert ledger.get("2017") == "success", (ledger, outcome["summary"], err[-2000:])
    if session == "swap":
        assert exit_code == 3, err[-3000:]
        assert ledger["2016"] == "failed" and digest(db) == before
        assert "1 year(s) failed (2016)" in outcome["summary"], outcome["summary"]
    else:
        # the control session holds the years' locks and reads the ledger; the swap of 2016
        # commits on a session of its own, and 2017 gets a new control session
        assert exit_code == 0, err[-3000:]
        assert ledger["2016"] == "success"
    assert staging_tables(db) == 0
    assert advisory_locks(db) == []
    assert kernels_of_this_session() == []


def test_a_signal_between_cells_starts_no_further_cell(tmp_path, database_url, reports_dir):
    """The kernel may be idle when the signal comes (an idle kernel ignores SIGINT): the cell
    after it must not start, and the run ends stopped."""
    from helpers import ROOT, run_cli

    marker = tmp_path / "ran"
    done = run_cli(str(ROOT / "tests/notebooks/stop_self.ipynb"), "-p", f"marker={marker}", "--json")
    assert done.code == 143, done.stderr
    assert done.json()["error"].startswith("stopped by SIGTERM: ")
    assert not marker.exists()
