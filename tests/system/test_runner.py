"""The runner end to end: run_notebook.py as cron calls it, its reports, exit codes and run log."""

import json
import re
from pathlib import Path

import pytest
from helpers import ROOT, kernel_processes, run_cli

pytestmark = pytest.mark.notebook


def banner_status(page: str) -> str | None:
    match = re.search(r'<div class="opsbook-banner[^"]*"[^>]*data-status="(\w+)"[^>]*id="opsbook-verdict"', page)
    return match.group(1) if match else None


def run_log_row(db, run_id):
    from opsbook.history import runs

    return runs.get(db, run_id)


def test_the_load_command_with_json(database_url, db, demo_dir, reports_dir):
    done = run_cli(
        "load", "-p", "dataset=toronto_parking_tickets", "-p", f"source={demo_dir}", "-p", "years=2016-2018", "--json"
    )
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["status"] == "pass" and outcome["exit_code"] == 0
    assert outcome["results"]["verdict"]["rows_out"] > 60_000
    ipynb, html = Path(outcome["reports"]["ipynb"]), Path(outcome["reports"]["html"])
    assert ipynb.is_file() and html.is_file()
    assert ipynb.parent.parent == reports_dir
    # one progress line per code cell on stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("[load ")]
    assert len(progress) == 7 and all(" ok " in line for line in progress)

    page = html.read_text()
    assert banner_status(page) == "pass"
    assert "SHA-256" in page and '<details class="opsbook-code"' in page
    assert "cdn." not in page and "unpkg.com" not in page and "require.min.js" not in page

    runs = [json.loads(line) for line in (reports_dir / "runs.jsonl").read_text().splitlines()]
    assert [r["run_id"] for r in runs] == [outcome["run_id"]]
    index = (reports_dir / "index.html").read_text()
    assert outcome["run_id"] in index and html.name in index

    row = run_log_row(db, outcome["run_id"])
    assert row["status"] == "success" and row["exit_code"] == 0
    assert row["procedure"] == "load" and row["window"] == "2016-2018"
    assert row["rows_out"] == outcome["results"]["verdict"]["rows_out"]
    assert row["html_path"] == str(html)
    assert kernel_processes() == []


def test_bad_parameters_exit_2_before_any_kernel(database_url, reports_dir):
    for args, message in (
        (["-p", "yeras=2017"], "did you mean 'years'"),
        (["-p", "years=20x7"], "'20x7' is not a year"),
        (["-p", "force"], "-p force: give a value too (-p NAME VALUE or -p NAME=VALUE)"),
    ):
        done = run_cli("load", *args)
        assert done.code == 2
        assert message in done.stderr
        assert "[load " not in done.stderr  # no cell ran
    done = run_cli("lod", "--json")
    assert done.code == 2 and "did you mean 'load'" in done.json()["error"]
    assert list(reports_dir.iterdir()) == []  # nothing was run, so nothing was reported


def test_a_failing_notebook_still_leaves_its_report(database_url, db, demo_dir, reports_dir):
    done = run_cli("load", "-p", f"source={demo_dir}", "-p", "years=2019", "--json")
    assert done.code == 3
    outcome = done.json()
    assert outcome["status"] == "fail"
    assert "no Toronto parking tickets file for 2019" in outcome["error"]
    page = Path(outcome["reports"]["html"]).read_text()
    assert banner_status(page) == "fail" and 'href="#opsbook-failed-cell"' in page
    assert 'id="opsbook-failed-cell"' in page
    assert run_log_row(db, outcome["run_id"])["status"] == "failed"
    assert json.loads((reports_dir / "runs.jsonl").read_text())["status"] == "fail"
    # the report shows the refusal as its one line; the executed notebook keeps the traceback
    shown = re.sub("<[^>]+>", "", page)  # the text a reader sees
    assert "SourceError: no Toronto parking tickets file for 2019" in shown
    assert "Traceback (most recent call last)" not in shown and "Cell In[" not in shown
    assert "Traceback (most recent call last)" in Path(outcome["reports"]["ipynb"]).read_text()


def test_an_unexpected_error_keeps_its_traceback_in_the_report(database_url, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("value = 1  # a parameter", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("def broken():\n    return {}['missing']\n\nbroken()"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "bug.ipynb"
    nbformat.write(nb, path)
    done = run_cli(str(path), "--json")
    assert done.code == 3, done.stderr  # a cell raised an unexpected error
    shown = re.sub("<[^>]+>", "", Path(done.json()["reports"]["html"]).read_text())
    assert "Traceback (most recent call last)" in shown and re.search(r"Cell In\[\d+\], line 2, in broken\(\)", shown)


def test_too_many_rejects_exit_1(database_url, demo_dir):
    done = run_cli(
        "load",
        "-p",
        f"source={demo_dir}",
        "-p",
        "years=2015",
        "-p",
        "force=true",
        "-p",
        "max_rejected_ratio=0",
        "--json",
    )
    assert done.code == 1, done.stderr
    assert "rejected" in done.json()["summary"]


def test_lock_held_exits_4(database_url, demo_dir):
    from opsbook.history import locks, schema
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True) as holder:
        schema.ensure_schema(holder)
        locks.try_lock(holder, "opsbook.load:toronto_parking_tickets:2015", "run other-run")
        done = run_cli("load", "-p", f"source={demo_dir}", "-p", "years=2015", "--json")
    assert done.code == 4
    assert "other-run" in done.json()["error"]


def test_timeout_exits_5(database_url):
    done = run_cli(str(ROOT / "tests/notebooks/sleep.ipynb"), "-p", "seconds=60", "--timeout", "3", "--json")
    assert done.code == 5
    outcome = done.json()
    assert "timeout" in outcome["error"] and Path(outcome["reports"]["html"]).is_file()
    assert kernel_processes() == []


def test_kernel_death_exits_6(database_url):
    done = run_cli(str(ROOT / "tests/notebooks/die.ipynb"), "--json")
    assert done.code == 6
    outcome = done.json()
    assert Path(outcome["reports"]["html"]).is_file()
    assert "about to die" in Path(outcome["reports"]["ipynb"]).read_text()


def test_list_and_help_document_procedures_and_exit_codes():
    listed = run_cli("--list")
    assert listed.code == 0
    from opsbook import procedures

    assert [line.split()[0] for line in listed.stdout.splitlines()] == procedures.names()
    assert all(len(line.split(maxsplit=1)) == 2 for line in listed.stdout.splitlines())  # each has a summary
    shown = run_cli("--help")
    assert shown.code == 0
    for code in range(7):
        assert f"\n  {code}  " in shown.stdout
    assert "python run_notebook.py load -p" in shown.stdout


UNREACHABLE = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/warehouse"}


@pytest.mark.parametrize(
    ("arguments", "code", "env"),
    [
        (("tests/notebooks/sleep.ipynb", "-p", "seconds=0.1"), 0, None),
        (("health", "-p", "expected=retention", "-p", "lag_hours=retention:0.000001"), 1, None),
        (("health",), 3, UNREACHABLE),
        (("tests/notebooks/sleep.ipynb", "-p", "seconds=60", "--timeout", "3"), 5, None),
        (("tests/notebooks/die.ipynb",), 6, None),
    ],
    ids=["pass", "check failed", "database unreachable", "timeout", "kernel death"],
)
def test_quiet_is_the_verdict_and_the_report_and_nothing_else(arguments, code, env, database_url):
    done = run_cli(*(str(ROOT / a) if a.endswith(".ipynb") else a for a in arguments), "--quiet", env=env)
    assert done.code == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert done.stdout == "" and len(lines) == 2, done.stderr
    assert lines[0].startswith(("PASS ", "FAIL ")) and lines[1].startswith("report: ")


def test_a_database_that_cannot_be_reached_is_named_not_taken_for_a_notebook_bug(database_url):
    done = run_cli("health", "--json", env=UNREACHABLE)
    assert done.code == 3
    outcome = done.json()
    assert outcome["summary"].startswith("ServiceError: cannot connect to PostgreSQL at 127.0.0.1:9/warehouse")
    assert "Traceback" not in done.stderr


def test_quiet_usage_error_is_one_line():
    """No run starts on a parameter error: one line says why (no report line)."""
    done = run_cli(str(ROOT / "tests/notebooks/sleep.ipynb"), "-p", "secs=1", "--quiet")
    assert done.code == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: unknown parameter 'secs' (from -p); did you mean 'seconds'? Valid names: seconds."
    ]
