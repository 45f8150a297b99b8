"""health against a real PostgreSQL: lag, failures, stuck runs, blocked sessions, escalation zip."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import psycopg
import pytest
from helpers import call, run_cli

from opsbook.history import runs as history
from opsbook.history import schema

pytestmark = pytest.mark.notebook
HOST = socket.gethostname()
# the server is shared with other suites: their connections must not decide these tests
SHARED_SERVER = ("-p", "max_connections_used=1")


@pytest.fixture
def runs(db):
    """An empty run log; returns ``add(run_id, procedure, ...)`` inserting one row."""
    schema.ensure_schema(db)
    db.execute("DELETE FROM opsbook.runs")
    db.execute("DELETE FROM opsbook.locks")
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime CASCADE")  # its partitions ahead: tested apart

    def add(run_id, procedure, status="success", hours_ago=1.0, dataset=None, window=None, rows_out=None, **extra):
        row = {
            "run_id": run_id,
            "procedure": procedure,
            "dataset": dataset,
            "window": window,
            "status": status,
            "started_at_h": hours_ago,
            "finished_h": None if status == "running" else hours_ago,
            "rows_out": rows_out,
            "host": HOST,
            "pid": None,
            "error": None,
            "report_path": None,
            "html_path": None,
        }
        row.update(extra)
        db.execute(
            """INSERT INTO opsbook.runs (run_id, procedure, dataset, "window", status, started_at, finished_at,
                   heartbeat_at, rows_out, host, pid, error, report_path, html_path)
               VALUES (%(run_id)s, %(procedure)s, %(dataset)s, %(window)s, %(status)s,
                   now() - make_interval(secs => %(started_at_h)s * 3600),
                   now() - make_interval(secs => %(finished_h)s * 3600),
                   now() - make_interval(secs => %(started_at_h)s * 3600),
                   %(rows_out)s, %(host)s, %(pid)s, %(error)s, %(report_path)s, %(html_path)s)""",
            row,
        )

    return add


def healthy(add):
    for n, procedure in enumerate(("load", "aggregate", "validate")):
        add(f"ok-{procedure}", procedure, dataset="toronto_parking_tickets", window="2016-2018", rows_out=1000 + n)


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def status_of(db, run_id):
    return db.execute("SELECT status, error FROM opsbook.runs WHERE run_id = %s", (run_id,)).fetchone()


def test_healthy_state_passes_with_the_defaults(db, runs):
    healthy(runs)
    done = run_cli("health", *SHARED_SERVER, "--json")
    assert done.code == 0, done.stdout + done.stderr
    out = done.json()
    assert out["status"] == "pass", out["summary"]
    assert "3 scheduled procedure(s) succeeded" in out["summary"]
    assert status_of(db, out["run_id"])[0] == "success"
    html = Path(out["reports"]["html"]).read_text()
    assert "1. Sync status" in html and "health-runs-chart" in html


def test_a_missing_partition_for_tomorrow_fails_until_rollups_makes_it(db, runs):
    import datetime as dt

    from opsbook import datasets
    from opsbook.trafficsafety import schema as tables

    healthy(runs)
    spec = datasets.get("safety_indices")
    tables.ensure(db, spec)
    today = db.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    assert tables.ensure_partitions(db, spec, [today]) == [today]
    done = run_cli("health", *SHARED_SERVER, "--json")
    assert done.code == 1, done.stdout + done.stderr
    tomorrow = today + dt.timedelta(days=1)
    assert f"safety_indices_realtime has no partition for tomorrow ({tomorrow}, UTC)" in done.json()["summary"]

    made = tables.ensure_partitions(db, spec, tables.days_ahead(today, 7))
    assert made == [today + dt.timedelta(days=n) for n in range(1, 8)]
    assert tables.ensure_partitions(db, spec, tables.days_ahead(today, 7)) == []  # idempotent
    again = run_cli("health", *SHARED_SERVER, "--json")
    assert again.code == 0, again.stdout + again.stderr
    html = Path(again.json()["reports"]["html"]).read_text()
    assert "health-partitions" in html


def test_lag_failures_and_a_missing_procedure_breach(db, runs):
    runs("old-load", "load", hours_ago=30, dataset="toronto_parking_tickets")
    runs("ok-validate", "validate", hours_ago=5, dataset="toronto_parking_tickets")
    runs("bad-validate", "validate", status="failed", hours_ago=2, dataset="toronto_parking_tickets", error="boom")
    runs("once-backfill", "backfill", hours_ago=200, dataset="toronto_parking_tickets")  # on demand: no limit
    done = run_cli("health", *SHARED_SERVER, "-p", "lag_hours=default=25,load=26", "--json")
    assert done.code == 1, done.stdout + done.stderr
    summary = done.json()["summary"]
    assert "3 threshold(s) breached" in summary
    assert "load/toronto_parking_tickets last succeeded 30.0 h ago" in summary and "26 h limit" in summary
    assert "validate/toronto_parking_tickets failed 1 time(s) in the last 24 h; last error: boom" in summary
    assert "aggregate is expected but has never run" in summary
    assert "backfill" not in summary


def test_a_drop_in_rows_is_flagged_for_scheduled_procedures_only(db, runs):
    for n, rows in enumerate((1000, 1100, 900, 100)):
        runs(f"load-{n}", "load", hours_ago=4 - n, dataset="d", window="2017", rows_out=rows)
    runs("load-other-window", "load", hours_ago=0.5, dataset="d2", window="2018", rows_out=5)
    runs("backfill-1", "backfill", hours_ago=3, dataset="d", window="2017", rows_out=1000)
    runs("backfill-2", "backfill", hours_ago=2, dataset="d", window="2017", rows_out=0)
    result = call("health", expected="load")
    by_name = {s.name: s for s in result.findings.sync}
    assert by_name["load/d"].breaches == [
        "load/d wrote 100 rows in its last run, 90% fewer than the median 1,000 of its 3 earlier run(s) "
        "of window 2017 in 7 days"
    ]
    assert by_name["load/d2"].breaches == []  # nothing earlier of the same window to compare with
    assert by_name["backfill/d"].breaches == []
    # the day of the last run (UTC; the day before today in the first hour after midnight)
    day = db.execute(
        "SELECT to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM opsbook.runs WHERE run_id = 'load-3'"
    ).fetchone()[0]
    assert by_name["load/d"].daily_rows[day] == 100
    assert all(v is None for d, v in by_name["load/d"].daily_rows.items() if d > day)


def test_stuck_run_is_reported_then_marked_and_a_live_run_is_left(db, runs):
    healthy(runs)
    runs("dead-run", "load", status="running", hours_ago=2, dataset="toronto_parking_tickets", pid=gone_pid())
    # a run of this very process: alive for as long as the test runs
    history.start(db, "live-run", "backfill", "toronto_parking_tickets", "2017", {})
    # an old row whose pid now belongs to a younger process (this one): the pid was recycled
    runs("recycled-pid", "aggregate", status="running", hours_ago=24 * 365, pid=os.getpid())

    result = call("health", stuck_after_minutes=0, max_connections_used=1)
    states = {r.run_id: r.state for r in result.findings.running}
    assert states == {"dead-run": "dead", "live-run": "alive", "recycled-pid": "dead"}

    reported = run_cli("health", *SHARED_SERVER, "-p", "stuck_after_minutes=0", "--json")
    assert reported.code == 1, reported.stdout + reported.stderr
    assert "run dead-run (load) has been 'running'" in reported.json()["summary"]
    assert status_of(db, "dead-run")[0] == "running"  # reported only

    db.execute("DELETE FROM opsbook.runs WHERE run_id = 'recycled-pid'")
    marked = run_cli("health", *SHARED_SERVER, "-p", "stuck_after_minutes=0", "-p", "mark_stuck=true", "--json")
    assert marked.code == 1
    health_run = marked.json()["run_id"]
    status, error = status_of(db, "dead-run")
    assert status == "failed"
    assert error.startswith(f"marked failed by health run {health_run}: no process since ")
    assert status_of(db, "live-run")[0] == "running"
    failed = db.execute("SELECT run_id FROM opsbook.runs WHERE status = 'failed' AND procedure <> 'health'")
    assert [r[0] for r in failed] == ["dead-run"]  # exactly the stuck run


def test_a_blocked_session_is_reported_with_its_blocker(db, runs, database_url):
    healthy(runs)
    db.execute("DROP TABLE IF EXISTS health_probe")
    db.execute("CREATE TABLE health_probe (id int)")
    holder = psycopg.connect(database_url, application_name="test lock holder")
    holder.execute("LOCK TABLE health_probe IN ACCESS EXCLUSIVE MODE")  # transaction left open
    holder_pid = holder.info.backend_pid
    waiter = psycopg.connect(database_url, autocommit=True, application_name="test waiter")
    waiter.execute("SET statement_timeout = '120s'")  # never hang the suite
    waiting = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM health_probe"))
    waiting.start()
    try:
        for _ in range(600):  # until the waiter is queued behind the lock
            if db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'test waiter' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]:
                break
            time.sleep(0.05)
        done = run_cli("health", *SHARED_SERVER, "-p", "blocked_seconds=0", "--json")
    finally:
        holder.rollback()
        waiting.join()
        holder.close()
        waiter.close()
    assert done.code == 1, done.stdout + done.stderr
    summary = done.json()["summary"]
    assert f"held by session {holder_pid} (test lock holder, idle in transaction)" in summary
    assert "AccessShareLock on health_probe" in summary


def test_incident_bundle_holds_the_run_log_the_failed_report_and_no_secret(db, runs, reports_dir, database_url):
    password, token = "hunter2-health-pw", "tok-health-9f3a7c"
    env = {
        "DATABASE_URL": database_url.replace("postgres@", f"postgres:{password}@", 1),
        "OPSBOOK_SECRET_X": token,
    }
    healthy(runs)
    day = reports_dir / "2026-01-01"
    day.mkdir()
    html = day / "failed-load.html"
    html.write_text(f"<html><body>load failed; connected with {password} and {token}</body></html>")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("load.run()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=f"warning: retrying with {token}\n"),
        nbformat.v4.new_output(
            "error", ename="SourceError", evalue="truncated ZIP", traceback=["\x1b[31mTraceback\x1b[0m", "bad ZIP"]
        ),
    ]
    nb.cells = [cell]
    ipynb = day / "failed-load.ipynb"
    nbformat.write(nb, ipynb)
    runs(
        "failed-load",
        "load",
        status="failed",
        hours_ago=3,
        dataset="toronto_parking_tickets",
        error=f"SourceError: truncated ZIP ({password})",
        html_path=str(html),
        report_path=str(ipynb),
    )

    done = run_cli("health", *SHARED_SERVER, "-p", "incident=true", "--json", env=env)
    assert done.code == 1, done.stdout + done.stderr
    out = done.json()
    bundle = reports_dir / "incidents" / f"{out['run_id']}.zip"
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        contents = {name: archive.read(name).decode() for name in names}
    assert {"runs.csv", "reports/failed-load.html", "logs/failed-load.log", "findings.json"} <= names
    assert "failed-load" in contents["runs.csv"] and "ok-validate" in contents["runs.csv"]
    assert "load failed; connected with ***" in contents["reports/failed-load.html"]
    log = contents["logs/failed-load.log"]
    assert "SourceError: truncated ZIP" in log and "bad ZIP" in log and "\x1b[" not in log
    assert "warning: retrying with ***" in log
    findings = json.loads(contents["findings.json"])
    assert any("failed 1 time(s)" in b for b in findings["breaches"])
    for text in contents.values():
        assert password not in text and token not in text
    assert f"incidents/{out['run_id']}.zip" in Path(out["reports"]["html"]).read_text()


def test_a_bad_threshold_is_refused_before_a_kernel_starts():
    done = run_cli("health", "-p", "lag_hours=lod=3")
    assert done.code == 2
    assert "did you mean 'load'" in done.stderr


def test_expected_and_lag_hours_take_text_or_yaml_and_are_written_back_as_text():
    from opsbook.errors import UsageError
    from opsbook.procedures import health
    from opsbook.run.params import validate

    as_text = validate(health.Params, {"expected": "load, validate", "lag_hours": "default=25,load=26"})
    as_yaml = validate(health.Params, {"expected": ["load", "validate"], "lag_hours": {"default": 25, "load": 26}})
    assert as_text == as_yaml
    assert as_text.expected == ("load", "validate") and as_text.lag_hours == {"default": 25.0, "load": 26.0}
    written = as_yaml.notebook_parameters()
    assert (written["expected"], written["lag_hours"]) == ("load,validate", "default:25,load:26")
    assert validate(health.Params, written) == as_text  # what the notebook records reads back the same
    with pytest.raises(UsageError, match="did you mean 'validate'"):
        validate(health.Params, {"expected": "validat"})
    with pytest.raises(UsageError, match="is not a number of hours"):
        validate(health.Params, {"lag_hours": {"load": "soon"}})
