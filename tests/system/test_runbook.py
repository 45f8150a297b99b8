"""A runbook as one command: steps in order, a stop at the first failure, one report linking every step."""

import datetime as dt
import json
import re
from pathlib import Path

from helpers import ROOT, run_cli


def write_runbook(folder: Path, demo_dir: Path, steps: str) -> Path:
    (folder / "load.yaml").write_text(f"dataset: toronto_parking_tickets\nsource: {demo_dir}\n")
    path = folder / "runbook.yaml"
    path.write_text(f"title: Test runbook\nschedule: '0 3 * * *'\nsteps:\n{steps}")
    return path


def test_steps_run_in_order_and_the_first_failure_stops_the_rest(clean, demo_dir, tmp_path, reports_dir):
    runbook = write_runbook(
        tmp_path,
        demo_dir,
        "  - {procedure: load, params: load.yaml, with: {years: 2016}}\n"
        "  - {procedure: load, params: load.yaml, with: {years: 2019}}\n"  # no file for 2019: exit 3
        "  - {procedure: load, params: load.yaml, with: {years: 2017}}\n",
    )
    done = run_cli("runbook", str(runbook), "--json")
    assert done.code == 3, done.stderr
    outcome = done.json()
    assert [(s["procedure"], s["status"]) for s in outcome["steps"]] == [
        ("load", "pass"),
        ("load", "fail"),
        ("load", "not run"),
    ]
    assert outcome["status"] == "fail" and outcome["summary"].startswith("step 2 (load) failed: ")
    assert "no Toronto parking tickets file for 2019" in outcome["summary"]
    years = [
        r[0] for r in clean.execute("SELECT DISTINCT extract(year FROM date_of_infraction)::int FROM parking_tickets")
    ]
    assert years == [2016], "the step after the failure did not run"

    page = Path(outcome["reports"]["html"]).read_text()
    assert 'data-status="fail"' in page
    for step in outcome["steps"][:2]:
        link = re.escape(Path(step["report"]).name)
        assert re.search(rf'href="[^"]*{link}"', page), "each step links to its own report"
    index = (reports_dir / "index.html").read_text()
    assert outcome["run_id"] in json.dumps(
        [json.loads(x) for x in (reports_dir / "runs.jsonl").read_text().splitlines()]
    )
    assert "runbook" in index


def test_an_independent_step_lets_the_next_ones_run(clean, demo_dir, tmp_path):
    runbook = write_runbook(
        tmp_path,
        demo_dir,
        "  - {procedure: load, params: load.yaml, with: {years: 2019}, independent: true}\n"
        "  - {procedure: load, params: load.yaml, with: {years: 2016}}\n",
    )
    done = run_cli("runbook", str(runbook), "--json", "--quiet")
    assert done.code == 3
    assert [s["status"] for s in done.json()["steps"]] == ["fail", "pass"]
    assert len(done.stderr.strip().splitlines()) == 2, done.stderr  # --quiet: the verdict and the report


def test_a_step_runs_only_on_its_days(clean, demo_dir, tmp_path):
    other = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(dt.date.today().weekday() + 1) % 7]
    runbook = write_runbook(
        tmp_path, demo_dir, f"  - {{procedure: load, params: load.yaml, with: {{years: 2016}}, days: [{other}]}}\n"
    )
    done = run_cli("runbook", str(runbook), "--json")
    assert done.code == 0
    (step,) = done.json()["steps"]
    assert step["status"] == "skipped" and other in step["summary"]


def test_bad_runbooks_are_refused_before_anything_runs(tmp_path):
    unknown = run_cli("runbook", "toronot", "--json")
    assert unknown.code == 2 and "did you mean 'toronto'" in unknown.json()["error"]
    bad = tmp_path / "runbook.yaml"
    bad.write_text("title: t\nsteps:\n  - {procedure: lod}\n")
    refused = run_cli("runbook", str(bad))
    assert refused.code == 2 and "did you mean 'load'" in refused.stderr
    missing = tmp_path / "other.yaml"
    missing.write_text("title: t\nsteps:\n  - {procedure: load, params: nowhere.yaml}\n")
    assert run_cli("runbook", str(missing)).code == 2


def test_the_runbooks_are_listed_with_their_steps():
    listed = run_cli("runbook", "--list")
    assert listed.code == 0
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert set(lines) == {p.parent.name for p in (ROOT / "params" / "runbooks").glob("*/runbook.yaml")}
    assert "load -> aggregate -> camera_datasets -> push_cache -> validate" in lines["toronto"]


def test_a_production_params_file_needs_its_environment(database_url, monkeypatch):
    """The runbooks' params take their locations from the environment: an unset one is named."""
    monkeypatch.delenv("TORONTO_TICKETS_SOURCE", raising=False)
    done = run_cli("load", "-f", "params/runbooks/toronto/load.yaml", "--json")
    assert done.code == 2
    assert "TORONTO_TICKETS_SOURCE" in done.json()["error"]
    demo = run_cli("load", "-f", "params/runbooks/toronto/load.yaml", "-p", "source=demo", "--json")
    assert demo.code == 2
    assert "allow_demo=true" in demo.json()["error"] and "stand-in data" in demo.json()["error"]
