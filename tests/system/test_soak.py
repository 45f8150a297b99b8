"""Soak: many load + validate rounds in one process leave the data, the run log and the
process exactly as they were.

Each round runs the cells of load.ipynb and validate.ipynb in this process, as an
interactive run does (``opsbook.run.context.start`` ... ``run.finish``), so every round writes its
own ``opsbook.runs`` rows the way a real run does, without a kernel start per round.
"""

import contextlib
import io
import time

import psutil
import pytest
from helpers import call, load_and_aggregate

from opsbook.demo import tickets as demodata
from opsbook.run.context import RUN_ID_ENV

pytestmark = [
    pytest.mark.integration,
    # outside a kernel, scrapbook warns that glue has nowhere to record; the values still reach
    # results.record's caller through the verdict, which is what the run log is written from
    pytest.mark.filterwarnings("ignore:No kernel detected for 'glue':UserWarning"),
]

ROUNDS = 50  # a round takes about 0.3 s here
YEAR = 2016


def notebook_round(source: str, force: bool):
    """The code cells of load.ipynb, then of validate.ipynb, with their displays swallowed."""
    import opsbook
    from opsbook.procedures import load, validate

    with contextlib.redirect_stdout(io.StringIO()):
        ctx = opsbook.start("load", source=source, years=str(YEAR), force=force)
        plan = load.plan(ctx)
        load.show_plan(plan)
        loaded = load.run(ctx, plan)
        load.show_years(loaded)
        load.show_rejected(loaded)
        ctx.finish(loaded)
        load_id = ctx.run_id

        # files read from a folder: their 1 % scale is the demo's figures, not the City's
        ctx = opsbook.start("validate", window=str(YEAR), reference="demo")
        checked = validate.run(ctx)
        validate.show_checks(checked)
        validate.show_coverage(checked)
        validate.show_failures(checked)
        ctx.finish(checked, checks=checked.records())
    return (load_id, loaded), (ctx.run_id, checked)


def year_contents(db) -> tuple:
    """Rows and an order-independent hash of the year's partition, and its quarantined rows."""
    rows = db.execute(
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM parking_tickets_{YEAR} t"
    ).fetchone()
    rejected = db.execute(
        "SELECT count(*), coalesce(sum(hashtextextended((source_file, line_number, field, reason, raw_line)::text, 0)),"
        " 0) FROM parking_tickets_rejected WHERE year = %s",
        (YEAR,),
    ).fetchone()
    return rows, rejected


def other_sessions(db) -> int:
    return db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def settled_sessions(db) -> int:
    """Sessions to this database once the count holds still for a moment (setup's are closing)."""
    count, deadline = other_sessions(db), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.2)
        count, previous = other_sessions(db), count
        if count == previous:
            break
    return count


def sessions_settle(db, baseline: int, seconds: float = 5.0) -> int:
    """Sessions to this database once closed ones are gone (a backend exits just after its client)."""
    deadline = time.monotonic() + seconds
    while (count := other_sessions(db)) != baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


def leftovers(db) -> dict[str, list]:
    """Temporary and staging tables, and advisory locks, in this database."""
    return {
        "temporary tables": db.execute("SELECT relname FROM pg_class WHERE relpersistence = 't'").fetchall(),
        "staging tables": db.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'parking\\_tickets\\_%\\_load'"
        ).fetchall(),
        "advisory locks": db.execute(
            "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall(),
    }


def process_resources(proc: psutil.Process) -> dict[str, int]:
    return {"fds": proc.num_fds(), "threads": proc.num_threads(), "children": len(proc.children(recursive=True))}


def test_fifty_load_and_validate_rounds_change_nothing_and_leak_nothing(db, demo_dir, redis_url, monkeypatch):
    # interactive runs write their own run-log rows; under the runner's id they would not
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    load_and_aggregate(db, demo_dir, str(YEAR))  # validate's suite needs the yearly tables too
    call("push_cache")  # and the published payloads
    assert db.execute("SELECT count(*) FROM opsbook.runs").fetchone()[0] == 0
    contents = year_contents(db)
    expected_rows = int(demodata.expected_monthly([YEAR])["tickets"].sum())
    expected_rejected = len(demodata.malformed_rows(YEAR))
    assert (contents[0][0], contents[1][0]) == (expected_rows, expected_rejected)
    me = psutil.Process()
    # processes this one already has (a session's GCS emulator, ...) are not the rounds' doing
    children_before = process_resources(me)["children"]
    sessions = settled_sessions(db)
    # compared with what was there before, not with nothing: a test that ran earlier in the
    # session may have left something of its own, which is not this test's finding
    before = leftovers(db)

    run_ids, statuses, resources = [], [], []
    for round_no in range(ROUNDS):
        # every other round reloads the year (COPY, swap, quarantine); the others find it unchanged
        (load_id, loaded), (validate_id, checked) = notebook_round(str(demo_dir), force=round_no % 2 == 0)
        run_ids += [load_id, validate_id]
        statuses.append(loaded.years[0].status)
        assert loaded.verdict().status == "pass", f"round {round_no}: {loaded.verdict().summary}"
        assert checked.verdict().status == "pass", f"round {round_no}: {checked.verdict().summary}"
        assert year_contents(db) == contents, f"round {round_no} changed the {YEAR} rows"
        assert sessions_settle(db, sessions) == sessions, f"round {round_no} left a database session open"
        assert leftovers(db) == before, f"round {round_no}"
        resources.append(process_resources(me))

    assert statuses == ["loaded", "unchanged"] * (ROUNDS // 2)
    # the first round imports and starts what a process keeps (Arrow's thread pool, ...); from
    # then on nothing may grow
    assert resources[0]["children"] == children_before
    assert all(r == resources[0] for r in resources), f"grew after round 1: {resources[0]} -> {resources[-1]}"

    runs = db.execute(
        'SELECT run_id, procedure, "window", status, exit_code, finished_at IS NOT NULL, interactive, pid, '
        "rows_in, rows_out, rows_rejected FROM opsbook.runs ORDER BY started_at, run_id"
    ).fetchall()
    assert len(runs) == 2 * ROUNDS
    assert [r[0] for r in runs] == run_ids
    assert [r[1] for r in runs] == ["load", "validate"] * ROUNDS
    assert {r[2:8] for r in runs} == {(str(YEAR), "success", 0, True, True, me.pid)}
    first_load, first_validate = runs[0][8:], runs[1][8:]
    assert first_load == (expected_rows + expected_rejected, expected_rows, expected_rejected)
    assert first_validate == (expected_rows, None, None)  # rows checked
    assert [r[8:] for r in runs[0::2]] == [first_load] * ROUNDS
    assert [r[8:] for r in runs[1::2]] == [first_validate] * ROUNDS

    ledger = db.execute(
        "SELECT status, rows, rejected, run_id FROM opsbook.partitions WHERE dataset = 'toronto_parking_tickets' "
        "AND partition = %s AND step = 'load'",
        (str(YEAR),),
    ).fetchone()
    # the last reload was round ROUNDS - 1 (force on even rounds); unchanged rounds leave the entry alone
    assert ledger == ("success", expected_rows, expected_rejected, run_ids[2 * (ROUNDS - 2)])
