"""Reports as a lead sees them: headless Chromium, networking disabled, scripts run.

Opens a PASS report, a FAIL report and the index, and checks the verdict banner, a plot that
really rendered (an SVG with bars inside the plot element), the checks table and the links.
Screenshots go to test-artifacts/browser/.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import ROOT, call, load_and_aggregate, run_cli

pytestmark = pytest.mark.notebook
ARTIFACTS = ROOT / "test-artifacts" / "browser"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("OPSBOOK_REQUIRE_SERVICES") == "1":
        pytest.fail("Chromium is required here (Debian: apt-get install chromium)", pytrace=False)
    pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")


def browse(url: str, screenshot: Path) -> str:
    """The DOM after scripts ran, with every network request refused; also a screenshot."""
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={profile}",
            # no network: every request goes to a proxy that is not there
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--virtual-time-budget=15000",
            "--window-size=1280,2200",
        ]
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return dom.stdout


def banner_status(dom: str) -> str | None:
    match = re.search(r'<div[^>]*class="opsbook-banner (\w+)"[^>]*id="opsbook-verdict"', dom)
    return match.group(1) if match else None


def rendered_bars(dom: str, plot_id: str) -> int:
    """Bars drawn by plotly inside the plot element (0 when plotly.js did not run)."""
    start = dom.find(f'id="{plot_id}"')
    assert start >= 0, f"no element {plot_id}"
    section = dom[start : start + 400_000]
    assert '<svg class="main-svg"' in section, "the plot element holds no rendered SVG"
    return len(re.findall(r'<path class="point"', section))


@pytest.fixture
def reports(db, demo_dir, reports_dir, redis_url):
    load_and_aggregate(db, demo_dir, "2017")
    call("push_cache")
    passing = run_cli("validate", "-p", "window=2017", "-p", "reference=demo", "--json").json()
    db.execute(
        "DELETE FROM parking_tickets WHERE date_of_infraction >= '2017-05-01' AND date_of_infraction < '2017-06-01'"
    )
    failing = run_cli("validate", "-p", "window=2017", "-p", "reference=demo", "--json").json()
    assert (passing["status"], failing["status"]) == ("pass", "fail")
    return Path(passing["reports"]["html"]), Path(failing["reports"]["html"]), reports_dir


def test_reports_and_index_render_offline(reports):
    passing, failing, folder = reports
    shutil.rmtree(ARTIFACTS, ignore_errors=True)

    dom = browse(passing.as_uri(), ARTIFACTS / "pass-report.png")
    assert banner_status(dom) == "pass"
    assert rendered_bars(dom, "coverage-chart-plot") >= 12
    assert re.search(r'<table class="opsbook" id="checks">', dom)
    assert dom.count('class="opsbook-status"') >= 14  # a status badge per check
    assert 'href="../index.html"' in dom
    assert '<p class="opsbook-chart-missing" hidden="">' in dom

    dom = browse(failing.as_uri(), ARTIFACTS / "fail-report.png")
    assert banner_status(dom) == "fail"
    link = re.search(r'<a href="#(check-[\w]+)">see the failing check</a>', dom)
    assert link and f'id="{link.group(1)}"' in dom
    assert "missing months: 2017-05" in dom
    assert rendered_bars(dom, "coverage-chart-plot") >= 11

    index = folder / "index.html"
    dom = browse(index.as_uri(), ARTIFACTS / "index.png")
    every_run = dom[dom.index('<table id="runs"') :]
    links = re.findall(r'<a href="([^"]+\.html)">report</a>', every_run)
    assert len(links) == 2  # the two validations, newest first
    assert all((folder / link).is_file() for link in links)
    assert links[0].endswith(failing.name)
    latest = dom[dom.index('<table id="latest"') : dom.index('<table id="runs"')]
    assert re.findall(r'<a href="([^"]+\.html)">report</a>', latest) == links[:1]  # the newest validation
    filtered = browse(index.as_uri() + "?status=fail", ARTIFACTS / "index-failed.png")
    assert 'id="shown">1<' in filtered
    assert len(re.findall(r'<tr[^>]*class="hidden"', filtered)) == 1


def test_a_report_moved_with_its_asset_folder_still_renders(reports, tmp_path):
    passing, _, folder = reports
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder / "assets", moved / "assets")
    (moved / "day").mkdir()
    shutil.copy(passing, moved / "day" / passing.name)
    dom = browse((moved / "day" / passing.name).as_uri(), ARTIFACTS / "moved-report.png")
    assert rendered_bars(dom, "coverage-chart-plot") >= 12
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(passing, alone / passing.name)
    dom = browse((alone / passing.name).as_uri(), ARTIFACTS / "report-without-assets.png")
    assert '<p class="opsbook-chart-missing">' in dom  # says what is missing instead of a blank space
    assert banner_status(dom) == "pass"


def test_report_weight(reports):
    passing, _, _ = reports
    assert passing.stat().st_size < 600_000
