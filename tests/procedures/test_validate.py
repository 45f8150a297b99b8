"""validate end to end: the suite passes, corruption is named exactly, a restore passes again; with
no window every year the table holds is checked."""

from pathlib import Path

import pytest
from helpers import call, load_and_aggregate, run_cli

from opsbook.demo import tickets as demodata

pytestmark = pytest.mark.notebook


@pytest.fixture
def loaded(db, demo_dir, redis_url):
    """2016-2018 from the demo's files in a folder, the yearly tables, and the Redis payloads."""
    load_and_aggregate(db, demo_dir, "2016-2018")
    call("push_cache")
    return db


def validate(*args: str):
    # the files were read from a folder, so the suite's default reference would be the City's
    # full figures: these 1 %-scale files are compared with the demo's own
    return run_cli("validate", "-p", "reference=demo", *args, "--json")


def checks_of(outcome: dict) -> dict[str, dict]:
    return {c["name"]: c for c in outcome["results"]["checks"]}


def test_corruption_is_named_exactly_and_a_restore_passes(loaded, demo_dir, reports_dir):
    db = loaded
    passing = validate("-p", "window=2016-2018")
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
    failing = validate("-p", "window=2016-2018")
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
    again = validate("-p", "window=2016-2018")
    assert again.code == 0 and again.json()["status"] == "pass"


def test_only_warnings_exit_0_with_warn(loaded):
    loaded.execute(
        "UPDATE parking_tickets_2018 SET province = 'ontario' WHERE ctid = "
        "(SELECT ctid FROM parking_tickets_2018 LIMIT 1)"
    )
    done = validate("-p", "window=2018")
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["status"] == "warn"
    assert checks_of(outcome)["province_codes"]["status"] == "warn"
    assert "province_codes" in outcome["summary"]


def test_an_unknown_reference_is_refused_before_anything_runs():
    done = run_cli("validate", "-p", "window=2018", "-p", "reference=citi", "--json")
    assert done.code == 2
    error = done.json()["error"]
    assert "unknown reference 'citi'" in error and "did you mean 'city'?" in error and "demo" in error


def test_with_no_window_every_year_held_is_checked_against_its_sources_figures(db, redis_url):
    """The data of a stand-in source is compared with that source's figures; a month deleted
    from the first year is found without naming a window."""
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected CASCADE")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    call("load", source="demo", years="2011-2012", allow_demo=True)
    call("aggregate", years="2011-2023", cameras="demo", allow_demo=True)
    call("push_cache")
    passing = run_cli("validate", "--json")
    assert passing.code == 0, passing.stdout
    outcome = passing.json()
    assert outcome["summary"].startswith("all ") and "2011-2012" in outcome["summary"]
    page = Path(outcome["reports"]["html"]).read_text()
    assert "reference 'demo' (the figures of demo, the source the data was loaded from)" in page

    db.execute(
        "DELETE FROM parking_tickets WHERE date_of_infraction >= '2011-05-01' AND date_of_infraction < '2011-06-01'"
    )
    failing = run_cli("validate", "-p", "dataset=toronto_parking_tickets", "--json")
    assert failing.code == 1
    found = checks_of(failing.json())
    assert found["months_present"]["message"] == "missing months: 2011-05"
    assert "2011-05" in failing.json()["summary"]


def test_years_without_reference_figures_warn_and_do_not_fail(loaded):
    """A year with no published figures in the repository (2023) is not compared: WARN, not FAIL."""
    loaded.execute(
        "CREATE TABLE parking_tickets_2023 PARTITION OF parking_tickets "
        "FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')"
    )
    loaded.execute("INSERT INTO parking_tickets (date_of_infraction, set_fine_amount) VALUES ('2023-01-05', 30)")
    done = validate("-p", "window=2016-2018,2023")
    found = checks_of(done.json())
    assert found["yearly_totals"]["status"] == "warn"
    assert found["yearly_totals"]["message"] == "no reference for 2023 in reference 'demo': not compared"
    assert (
        found["monthly_totals"]["status"] == "warn" and "no reference for 2023-01" in found["monthly_totals"]["message"]
    )
