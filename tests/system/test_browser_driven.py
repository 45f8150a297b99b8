"""The pages driven as their users drive them, in Debian's Chromium through playwright (the
system browser: nothing is downloaded): the index's filters and latest-status view, a FAIL
report's next-step link, a self-contained report opened alone with the network cut, and
JupyterLab opening a notebook on the ``opsbook`` kernel and running it cell by cell.
Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, fresh_health_state, run_cli

pytestmark = pytest.mark.notebook
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def _required(what: str) -> None:
    if os.environ.get("OPSBOOK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here", pytrace=False)
    pytest.skip(f"no {what} on this machine")


@pytest.fixture(scope="module")
def browser():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if chromium is None:
        _required("Chromium (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _required("playwright (pip install playwright; it drives the system Chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def offline(page) -> None:
    """Every request off this machine fails, as on a laptop on a plane."""
    page.route("http*://**", lambda route: route.abort() if not _local(route.request.url) else route.continue_())


def _local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "http://localhost"))


@pytest.fixture
def runs(database_url, redis_url, db, reports_dir):
    """Three health runs: two passing, then one failing (a scheduled procedure never ran); the
    first passing one signed off."""
    fresh_health_state(db)
    first = run_cli("health", "-p", "expected=", "--json").json()
    second = run_cli("health", "-p", "expected=", "--json").json()
    failing = run_cli("health", "-p", "expected=load", "--json").json()
    assert (first["status"], second["status"], failing["status"]) == ("pass", "pass", "fail")
    assert run_cli("signoff", first["run_id"], "--by", "A. Lead").code == 0
    return first, second, failing


def test_index_filters_latest_status_and_sign_off(runs, reports_dir, page):
    first, _, failing = runs
    offline(page)
    page.goto((reports_dir / "index.html").as_uri())
    assert page.locator("#shown").inner_text() == "3"
    # the latest status of health is the failing run, linked to its report
    latest = page.locator("#latest tbody tr")
    assert latest.count() == 1
    assert latest.locator(".status").inner_text() == "FAIL"
    latest.locator("a", has_text="report").click()
    assert page.url.endswith(Path(failing["reports"]["html"]).name)
    page.go_back()

    page.select_option("#filter-status", "fail")
    assert page.locator("#shown").inner_text() == "1"
    visible = page.locator("#runs tbody tr:not(.hidden)")
    assert visible.count() == 1 and visible.get_attribute("data-run-id") == failing["run_id"]
    page.select_option("#filter-status", "pass")
    assert page.locator("#shown").inner_text() == "2"
    signed = page.locator(f'#runs tr[data-run-id="{first["run_id"]}"] .signoff')
    assert signed.get_attribute("data-signoff") == "signed" and "signed off by A. Lead" in signed.inner_text()
    page.select_option("#filter-procedure", "health")
    page.select_option("#filter-status", "")
    assert page.locator("#shown").inner_text() == "3"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "index-driven.png"), full_page=True)
    # a link with the filter in it opens filtered
    page.goto((reports_dir / "index.html").as_uri() + "?status=fail")
    assert page.locator("#shown").inner_text() == "1"


def test_a_fail_reports_next_step_links_to_the_failing_check(runs, page):
    _, _, failing = runs
    offline(page)
    page.goto(Path(failing["reports"]["html"]).as_uri())
    step = page.locator("#opsbook-next-step")
    assert "Next step:" in step.inner_text()
    assert "python run_notebook.py health -p expected=load" in step.locator("code").all_inner_texts()
    step.locator("a", has_text="in this report").click()
    assert page.url.endswith("#health-sync")
    target = page.locator("#health-sync")
    assert target.is_visible()
    box = target.bounding_box()
    assert box is not None and -1 < box["y"] < 900  # scrolled to it
    page.screenshot(path=str(ARTIFACTS / "fail-next-step.png"))


def test_a_self_contained_report_reads_alone_with_its_chart(runs, page, tmp_path):
    _, second, _ = runs
    alone = tmp_path / "mailed" / "health.html"
    alone.parent.mkdir()
    exported = run_cli("export", second["run_id"], "-o", str(alone))
    assert exported.code == 0, exported.stderr
    assert 'src="../assets/plotly-' not in alone.read_text()
    offline(page)
    page.goto(alone.as_uri())
    assert page.locator("#opsbook-verdict").get_attribute("data-status") == "pass"
    plot = page.locator("#health-runs-chart-plot svg.main-svg").first
    plot.wait_for(timeout=15_000)  # plotly.js ran: inlined, nothing fetched
    assert page.locator("#health-runs-chart-plot .bars path").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "self-contained.png"))
    # the report as written is unchanged (its sign-off digest stays valid)
    assert 'src="../assets/plotly-' in Path(second["reports"]["html"]).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(database_url, redis_url, db, reports_dir, tmp_path):
    """JupyterLab as ``make lab`` starts it, on a copy of the notebooks (it autosaves outputs)."""
    fresh_health_state(db)
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder)
    port, token = _free_port(), "opsbook-test"
    env = dict(os.environ)
    env.pop("OPSBOOK_RUN_ID", None)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        env[name] = str(tmp_path / name.lower())
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--ServerApp.root_dir={folder}",
            f"--IdentityProvider.token={token}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", token
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_jupyterlab_opens_a_notebook_on_the_opsbook_kernel_and_runs_it(jupyterlab, page, reports_dir):
    url, token = jupyterlab
    offline(page)
    page.goto(f"{url}/lab/tree/health.ipynb?token={token}", timeout=90_000)
    notebook = page.locator(".jp-NotebookPanel").first
    notebook.wait_for(timeout=90_000)
    from playwright.sync_api import expect

    kernel = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").first
    expect(kernel).to_have_text("opsbook", timeout=90_000)  # "No Kernel" until it has started
    page.locator(".jp-NotebookPanel-toolbar [data-status='idle']").first.wait_for(timeout=90_000)

    cells = notebook.locator(".jp-Notebook .jp-Cell")
    total = cells.count()
    cells.first.locator(".jp-InputPrompt").first.click()
    for _ in range(total):  # Shift+Enter through every cell, as an analyst does
        page.keyboard.press("Shift+Enter")
    # no load, aggregate or validate ran on this database: health fails, and says so in one line
    notebook.locator(".jp-OutputArea-output", has_text="Report:").first.wait_for(timeout=180_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-health.png"), full_page=True)
    errors = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.all_inner_texts() == [
        "CheckFailed: 3 threshold(s) breached: load is expected but has never run; aggregate is expected but "
        "has never run; validate is expected but has never run"
    ]
    assert notebook.get_by_text("Next step:").count() >= 1

    (entry,) = [json.loads(line) for line in (reports_dir / "runs.jsonl").read_text().splitlines()]
    assert (entry["procedure"], entry["status"], entry["exit_code"]) == ("health", "fail", 1)
    assert entry["interactive"] is True
    assert Path(entry["html"]).is_file()
