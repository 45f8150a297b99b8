"""validate end to end: the demo suite passes, corruption is named exactly, a restore passes again."""

from pathlib import Path

import pytest
from helpers import load_and_aggregate, run_cli
from opsbook.demo import tickets as demodata

pytestmark = pytest.mark.notebook


@pytest.fixture
def loaded(db, demo_dir):
    load_and_aggregate(db, demo_dir, "2016-2018")
    return db


def checks_of(outcome: dict) -> dict[str, dict]:
    return {c["name"]: c for c in outcome["results"]["checks"]}


def test_corruption_is_named_exactly_and_a_restore_passes(loaded, demo_dir, reports_dir):
    db = loaded
    passing = run_cli("validate", "-p", "window=2016-2018", "--json")
    assert passing.code == 0, passing.stderr
    outcome = passing.json()
    assert outcome["status"] == "pass"
    assert all(c["status"] == "pass" for c in outcome["results"]["checks"] if c["severity"] == "error")
    html = Path(outcome["reports"]["html"]).read_text()
    assert 'class="opsbook-chart"' in html and "../assets/plotly-" in html

    # delete one month of one year; change one fine by 7.50
    march = int(demodata.expected_monthly([2017]).query("month == 3")["tickets"].iloc[0])
    db.execute(
        "DELETE FROM parking_tickets WHERE date_of_infraction >= '2017-03-01' AND date_of_infraction < '2017-04-01'"
    )
    db.execute(
        "UPDATE parking_tickets_2016 SET set_fine_amount = set_fine_amount + 7.50 "
        "WHERE ctid = (SELECT ctid FROM parking_tickets_2016 WHERE date_of_infraction = '2016-06-15' LIMIT 1)"
    )
    failing = run_cli("validate", "-p", "window=2016-2018", "--json")
    assert failing.code == 1, failing.stderr
    outcome = failing.json()
    assert outcome["status"] == "fail"
    found = checks_of(outcome)
    assert found["months_present"]["status"] == "fail"
    assert found["months_present"]["message"] == "missing months: 2017-03"
    monthly = found["monthly_totals"]["message"]
    assert f"2017-03 tickets: 0, expected {march:,} (off by -{march:,})" in monthly
    assert "2016-06 fines:" in monthly and "(off by +7.50)" in monthly
    yearly = found["yearly_totals"]["message"]
    assert "2016 fines:" in yearly and "(off by +7.50)" in yearly
    assert "2017 tickets:" in yearly and f"(off by -{march:,})" in yearly
    assert found["required_fields"]["status"] == "pass"
    page = Path(outcome["reports"]["html"]).read_text()
    assert 'href="#check-months_present"' in page and 'id="check-months_present"' in page

    # restore: loading the years again notices the tampered partitions and reloads them
    restored = run_cli("load", "-p", f"source={demo_dir}", "-p", "years=2016-2017", "--json")
    assert restored.code == 0 and "loaded 2 year(s)" in restored.json()["summary"]
    again = run_cli("validate", "-p", "window=2016-2018", "--json")
    assert again.code == 0 and again.json()["status"] == "pass"


def test_only_warnings_exit_0_with_warn(loaded):
    loaded.execute(
        "UPDATE parking_tickets_2018 SET province = 'ontario' WHERE ctid = "
        "(SELECT ctid FROM parking_tickets_2018 LIMIT 1)"
    )
    done = run_cli("validate", "-p", "window=2018", "--json")
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["status"] == "warn"
    assert checks_of(outcome)["province_codes"]["status"] == "warn"
    assert "province_codes" in outcome["summary"]


def test_unknown_reference_is_an_error_check(loaded):
    done = run_cli("validate", "-p", "window=2018", "-p", "reference=nope", "--json")
    assert done.code == 1
    found = checks_of(done.json())
    assert found["monthly_totals"]["status"] == "error"
    assert "unknown reference 'nope'" in found["monthly_totals"]["message"]
