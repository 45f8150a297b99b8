"""The run card's status line says what the exit code means, and only what applies."""

import pytest

from opsbook.run.publish import status_text


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        ("pass", 0, "PASS (exit 0)"),
        ("warn", 0, "WARN (exit 0: with warnings)"),
        ("fail", 1, "FAIL (exit 1: a check failed)"),
        ("fail", 5, "FAIL (exit 5: timeout)"),
        ("fail", 77, "FAIL (exit 77: see the summary)"),
    ],
)
def test_status_text(status, code, text):
    assert status_text(status, code) == text


def test_the_rerun_command_repeats_only_what_differs_from_the_defaults():
    from opsbook.run.nextstep import rerun_command

    defaults = {"dataset": "toronto_parking_tickets", "years": "2016-2018", "force": False, "source": "demo"}
    values = {**defaults, "years": "2015", "force": True, "source": "/data/city files"}
    assert rerun_command("load", values, defaults) == (
        "python run_notebook.py load -p years=2015 -p force=true -p 'source=/data/city files'"
    )


@pytest.mark.parametrize(
    ("status", "code", "says"),
    [
        ("fail", 1, "read the failing check in this report"),
        ("fail", 2, "correct the parameter"),
        ("fail", 3, "read the error in this report"),
        ("fail", 4, "python run_notebook.py health"),
        ("fail", 5, "--timeout 600"),
        ("fail", 6, "the kernel died"),
        ("fail", 143, "stopped by a signal"),
        ("warn", 0, "python run_notebook.py signoff RUN1 --by NAME"),
    ],
)
def test_every_fail_and_warn_has_a_next_step_with_its_command(status, code, says):
    from opsbook.run.nextstep import suggest

    step = suggest(status, code, "RUN1", "python run_notebook.py load -p years=2015", anchor="years", timeout=300)
    assert says in step
    assert "`python run_notebook.py" in step  # an exact command, quoted


def test_a_pass_has_no_next_step():
    from opsbook.run.nextstep import suggest

    assert suggest("pass", 0, "RUN1", "python run_notebook.py load") is None


def test_the_next_step_in_html_links_the_failing_check_and_escapes_the_rest():
    from opsbook.run.nextstep import as_html

    shown = as_html("read the failing check in this report <b>now</b>, then `run -p 'a<b'`", "#years")
    assert shown == (
        'read the failing check <a href="#years">in this report</a> &lt;b&gt;now&lt;/b&gt;, then '
        "<code>run -p &#x27;a&lt;b&#x27;</code>"
    )


def card_of(verdict: dict, params: dict) -> dict:
    from pathlib import Path

    from opsbook.report.html import ReportPaths
    from opsbook.run.publish import Outcome, _report_context

    outcome = Outcome("RUN1", "validate", "pass", "all checks passed", params=params, verdict=verdict)
    paths = ReportPaths(Path("/reports/2026-12-06/RUN1.ipynb"), Path("/reports/2026-12-06/RUN1.html"))
    return dict(_report_context(outcome, paths)["card"])


def test_the_run_card_shows_only_the_counts_a_run_has_and_empty_values_as_such():
    card = card_of({"rows_in": 64_433}, {"window": "2016-2018", "reference": ""})
    assert card["rows in"] == "64,433"
    assert not [k for k in card if k.startswith("rows ") and k != "rows in"]
    assert card["parameters"] == 'window=2016-2018, reference=""'
    full = card_of({"rows_in": 10, "rows_out": 8, "rows_rejected": 2}, {})
    assert full["rows in / out / quarantined"] == "10 / 8 / 2"
    assert "rows" not in " ".join(card_of({}, {}))  # a run that counted no rows shows no such line
