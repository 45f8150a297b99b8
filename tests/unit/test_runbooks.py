"""The runbooks' files hold together: known procedures, params files that validate, and a morning
check that expects exactly what the runbooks schedule."""

from pathlib import Path

import pytest
import yaml

from opsbook import procedures
from opsbook.run import runbook
from opsbook.run.params import resolve

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((ROOT / "params" / "runbooks").glob("*/runbook.yaml"))
DEMO = sorted((ROOT / "params" / "demo").glob("*/runbook.yaml"))
# what the runbooks' params files take from the environment
LOCATIONS = (
    "TORONTO_TICKETS_SOURCE",
    "TORONTO_CAMERAS_SOURCE",
    "TRAFFICSAFETY_BATCHES_SOURCE",
    "WAREHOUSE_WEATHER_SOURCE",
)


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the demo's stand-ins need the embedded database
    for name in LOCATIONS:
        monkeypatch.setenv(name, str(tmp_path))


@pytest.mark.parametrize("path", RUNBOOKS + DEMO, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_step_validates_as_it_would_run(path):
    book = runbook.load(str(path))
    for step in book.steps:
        files = [book.params_path(step)] if step.params else []
        resolve(procedures.get(step.procedure).Params, files, step.override_args())


def _scheduled(paths) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        for step in runbook.load(str(path)).steps:
            if step.procedure != "health":
                found.setdefault(step.procedure, []).extend(step.days or ["every day"])
    return found


@pytest.mark.parametrize(("runbooks", "health"), [(RUNBOOKS, "runbooks"), (DEMO, "demo")])
def test_the_morning_check_expects_what_the_runbooks_schedule(runbooks, health):
    settings = yaml.safe_load((ROOT / "params" / health / "ops" / "health.yaml").read_text())
    scheduled = _scheduled(runbooks)
    assert sorted(settings["expected"]) == sorted(scheduled)
    lags = settings["lag_hours"]
    for procedure, days in scheduled.items():
        lag = lags.get(procedure, lags["default"])
        assert lag >= (7 * 24 if "every day" not in days else 24), f"{procedure} runs on {days}: lag {lag} h"
        if "every day" not in days:
            assert lag <= 8 * 24, f"{procedure} runs weekly: a lag of {lag} h would miss a skipped week"
