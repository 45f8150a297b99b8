"""Runs made in JupyterLab, as an analyst makes them: a real kernel driven cell by cell (the
messages JupyterLab sends), the notebook named to the kernel as Jupyter names it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from helpers import fresh_health_state, run_cli
from jupyter_client.manager import start_new_kernel

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "notebooks" / "load.ipynb"
pytestmark = pytest.mark.notebook


class Kernel:
    """A kernel as JupyterLab starts one for a notebook: in the notebook's folder, told its path."""

    def __init__(self, notebook: Path):
        env = dict(os.environ, JPY_SESSION_NAME=str(notebook))
        env.pop("OPSBOOK_RUN_ID", None)
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, cwd=str(notebook.parent))
        self.pid = self.manager.provisioner.process.pid

    def run(self, source: str) -> tuple[str, list[dict]]:
        """Run one cell: its status (ok | error) and the messages it produced."""
        messages: list[dict] = []
        reply = self.client.execute_interactive(source, timeout=300, output_hook=messages.append)
        return reply["content"]["status"], messages

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def errors(messages: list[dict]) -> list[dict]:
    return [m["content"] for m in messages if m["msg_type"] == "error"]


def code_cells(notebook: Path, troubleshooting: bool = False) -> list[str]:
    """The notebook's code cells: its steps, or its troubleshooting cells."""
    return [
        c.source
        for c in nbformat.read(notebook, as_version=4).cells
        if c.cell_type == "code" and ("troubleshooting" in c.metadata.get("tags", [])) == troubleshooting
    ]


@pytest.fixture
def kernel():
    opened: list[Kernel] = []

    def start(notebook: Path = LOAD) -> Kernel:
        opened.append(Kernel(notebook))
        return opened[-1]

    yield start
    for k in opened:
        k.close()


def runs_logged(reports_dir: Path) -> list[dict]:
    path = reports_dir / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_load_run_cell_by_cell_is_reported_like_a_headless_run(
    database_url, redis_url, clean, demo_dir, reports_dir, kernel
):
    k = kernel()
    cells = code_cells(LOAD)
    parameters, rest = cells[0], cells[1:]
    fresh_health_state(clean)
    assert k.run(parameters)[0] == "ok"
    assert k.run(f"source = {str(demo_dir)!r}\nyears = '2016'")[0] == "ok"
    looked = "print(plan.job.years if False else 'the analyst looked at the plan')"
    ran = [*rest[:2], looked, *rest[2:]]  # a cell of the analyst's own between two steps
    for source in ran:
        status, messages = k.run(source)
        assert status == "ok", errors(messages)

    for source in code_cells(LOAD, troubleshooting=True):  # after the run: not part of its report
        status, messages = k.run(source)
        assert status == "ok", errors(messages)

    (entry,) = runs_logged(reports_dir)
    assert (entry["procedure"], entry["status"], entry["exit_code"], entry["window"]) == ("load", "pass", 0, "2016")
    assert entry["interactive"] is True
    html = Path(entry["html"]).read_text()
    assert "JupyterLab, cell by cell (interactive)" in html
    assert "parking-tickets-2016.zip" in html  # the plan cell's output, as the analyst saw it
    assert "Loading" in html  # the progress display, in its final state
    executed = nbformat.read(entry["ipynb"], as_version=4)
    sources = [c.source for c in executed.cells if c.cell_type == "code"]
    assert sources[0].splitlines() == [f"{k} = {v!r}" for k, v in entry["params"].items()]
    assert sources[1:] == ran  # the setup cell, each step and the analyst's cell, in the order they ran
    own = next(c for c in executed.cells if c.source == looked)
    assert [(o.output_type, o.text) for o in own.outputs] == [("stream", "the analyst looked at the plan\n")]
    assert "Load: City files into PostgreSQL" in executed.cells[0].source  # the notebook's description
    index = (reports_dir / "index.html").read_text()
    assert Path(entry["html"]).name in index

    row = clean.execute(
        "SELECT status, interactive, html_path, finished_at IS NOT NULL FROM opsbook.runs WHERE run_id = %s",
        (entry["run_id"],),
    ).fetchone()
    assert row == ("success", True, entry["html"], True)

    # the next morning's check is green
    health = run_cli("health", "-p", "expected=load", "--json")
    assert health.code == 0, health.stderr
    assert health.json()["status"] == "pass"


def test_a_step_run_after_a_parameter_changed_is_refused_in_one_line(
    database_url, redis_url, clean, demo_dir, reports_dir, kernel
):
    k = kernel()
    cells = code_cells(LOAD)
    k.run(cells[0])
    k.run(f"source = {str(demo_dir)!r}\nyears = '2016'")
    assert k.run(cells[1])[0] == "ok"  # the setup cell
    k.run("years = '2017'")  # changed, the setup cell not run again
    status, messages = k.run(cells[2])
    assert status == "error"
    (error,) = errors(messages)
    assert error["ename"] == "StaleParameters"
    assert "years '2016' -> '2017'" in error["evalue"] and "run the setup cell" in error["evalue"]
    assert error["traceback"] == [f"StaleParameters: {error['evalue']}"]  # one line, no traceback

    # the setup cell run again: a new run of 2017; the first one never finished and is abandoned
    assert k.run(cells[1])[0] == "ok"
    for source in cells[2:]:
        status, messages = k.run(source)
        assert status == "ok", errors(messages)
    runs = clean.execute('SELECT "window", status, error FROM opsbook.runs ORDER BY started_at').fetchall()
    assert [r[:2] for r in runs] == [("2016", "abandoned"), ("2017", "success")]
    assert "the setup cell was run again" in runs[0][2]
    logged = runs_logged(reports_dir)
    assert [(r["window"], r["status"]) for r in logged] == [("2016", "abandoned"), ("2017", "pass")]


def test_a_run_whose_kernel_died_is_abandoned_not_failed(database_url, redis_url, clean, demo_dir, reports_dir, kernel):
    fresh_health_state(clean)
    k = kernel()
    cells = code_cells(LOAD)
    k.run(cells[0])
    k.run(f"source = {str(demo_dir)!r}\nyears = '2016'")
    k.run(cells[1])
    k.run(cells[2])  # planned, never loaded: the analyst closed the tab and the kernel went away
    psutil.Process(k.pid).kill()
    psutil.Process(k.pid).wait(10)
    time.sleep(0.2)
    (run_id, status) = clean.execute("SELECT run_id, status FROM opsbook.runs").fetchone()
    assert status == "running"

    health = run_cli("health", "-p", "expected=", "--json")
    assert health.code == 0, health.stderr
    assert health.json()["status"] == "pass"
    assert "1 interactive run(s) abandoned" in health.json()["summary"]
    row = clean.execute("SELECT status, error FROM opsbook.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row[0] == "abandoned" and "its kernel is gone" in row[1]
    entry = next(r for r in runs_logged(reports_dir) if r["run_id"] == run_id)
    assert entry["status"] == "abandoned"
    index = (reports_dir / "index.html").read_text()
    assert 'data-status="abandoned"' in index and "ABANDONED" in index
    # a second check finds nothing left to mark
    again = run_cli("health", "-p", "expected=", "--json")
    assert again.code == 0 and "abandoned" not in again.json()["summary"]


def test_a_report_that_cannot_be_written_still_ends_the_run(database_url, redis_url, db, tmp_path, monkeypatch, kernel):
    fresh_health_state(db)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("OPSBOOK_REPORTS_DIR", str(blocked / "reports"))  # cannot be made: a file is in the way
    k = kernel(ROOT / "notebooks" / "health.ipynb")
    status, messages = k.run(
        'import opsbook\nfrom opsbook.procedures import health\nctx = opsbook.start("health", expected="")\n'
        "ctx.finish(health.run(ctx, None))"
    )
    assert status == "ok", errors(messages)
    shown = " ".join(str(m["content"].get("data", {}).get("text/markdown", "")) for m in messages)
    assert "The run's report could not be written" in shown
    assert db.execute("SELECT status, finished_at IS NOT NULL FROM opsbook.runs").fetchone() == ("success", True)


def test_a_run_that_has_ended_takes_no_more_steps(database_url, redis_url, db, kernel):
    fresh_health_state(db)
    k = kernel(ROOT / "notebooks" / "health.ipynb")
    setup = 'import opsbook\nfrom opsbook.procedures import health\nctx = opsbook.start("health", expected="")'
    assert k.run(setup)[0] == "ok"
    assert k.run("ctx.finish(health.run(ctx, None))")[0] == "ok"
    for cell in ("health.run(ctx, None)", "ctx.finish(health.run(ctx, None))"):
        status, messages = k.run(cell)
        (error,) = errors(messages)
        assert status == "error" and error["ename"] == "StaleParameters"
        assert "has ended (its verdict and report are written): run the setup cell" in error["evalue"]
    assert db.execute("SELECT count(*), min(status) FROM opsbook.runs").fetchone() == (1, "success")
