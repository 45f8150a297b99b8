"""The load procedure against a real PostgreSQL: typed table, quarantine, per-year replace."""

import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import call

from opsbook.demo import tickets as demodata
from opsbook.errors import CheckFailed, LockHeld
from opsbook.history import ledger, locks, schema
from opsbook.procedures import load
from opsbook.run import context

pytestmark = pytest.mark.integration


def run_load(source, years, **extra):
    return call("load", source=str(source), years=years, **extra)


def table_digest(db, table, where="true"):
    """Row count and an order-independent hash of every row's text."""
    return db.execute(
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {table} t WHERE {where}"
    ).fetchone()


def test_loads_typed_rows_and_quarantines_bad_ones(clean, demo_dir):
    db = clean
    result = run_load(demo_dir, "2016-2018")
    assert [y.status for y in result.years] == ["loaded"] * 3
    expected = demodata.expected_monthly([2016, 2017, 2018])
    per_year = dict(
        db.execute(
            "SELECT extract(year FROM date_of_infraction)::int, count(*) FROM parking_tickets GROUP BY 1"
        ).fetchall()
    )
    assert per_year == {y: int(t) for y, t in expected.groupby("year")["tickets"].sum().items()}
    fines = db.execute("SELECT sum(set_fine_amount) FROM parking_tickets").fetchone()[0]
    assert fines == int(expected["fines"].sum())

    types = dict(
        db.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'parking_tickets'"
        ).fetchall()
    )
    assert types["date_of_infraction"] == "date"
    assert types["time_of_infraction"] == "time without time zone"
    assert types["set_fine_amount"] == "numeric"
    assert types["infraction_code"] == "integer"
    assert types["location2"] == "text"

    rejected = db.execute(
        "SELECT year, source_file, line_number, field, reason, raw_line FROM parking_tickets_rejected "
        "WHERE year = 2017 ORDER BY line_number"
    ).fetchall()
    kinds = [kind for kind, _ in demodata.malformed_rows(2017)]
    assert len(rejected) == len(kinds)
    assert all(r[1].startswith("parking-tickets-2017.zip:Parking_Tags_Data_2017_") for r in rejected)
    assert [r[5] for r in rejected] == [line for _, line in demodata.malformed_rows(2017)]
    reasons = " ".join(r[4] for r in rejected)
    for needle in ("impossible date", "not a number", "wrong column count", "impossible time", "unparsable date"):
        assert needle in reasons
    # no mojibake: the Windows-1252 year and the UTF-8 years read the same street alike
    streets = {
        row[0] for row in db.execute("SELECT DISTINCT location2 FROM parking_tickets WHERE location2 LIKE '%CONNOR DR'")
    }
    assert "O’CONNOR DR" in streets and not any("â€" in s for s in streets)


def test_reload_is_idempotent_and_unchanged_years_are_skipped(clean, demo_dir):
    db = clean
    run_load(demo_dir, "2016-2017")
    before = table_digest(db, "parking_tickets"), table_digest(db, "parking_tickets_rejected", "true")
    again = run_load(demo_dir, "2016-2017")
    assert [y.status for y in again.years] == ["unchanged", "unchanged"]
    forced = run_load(demo_dir, "2016-2017", force=True)
    assert [y.status for y in forced.years] == ["loaded", "loaded"]
    after = (
        table_digest(db, "parking_tickets"),
        db.execute(
            "SELECT count(*), sum(hashtextextended(source_file || line_number || reason || raw_line, 0)) "
            "FROM parking_tickets_rejected"
        ).fetchone(),
    )
    assert after[0] == before[0]
    assert after[1][0] == before[1][0] == 10  # rejected rows are not doubled
    entries = db.execute("SELECT partition, status, rows FROM opsbook.partitions ORDER BY 1").fetchall()
    assert [(p, s) for p, s, _ in entries] == [("2016", "success"), ("2017", "success")]


def test_one_year_replaces_only_that_year(clean, demo_dir):
    db = clean
    run_load(demo_dir, "2016-2017")
    oid_2016 = db.execute("SELECT 'parking_tickets_2016'::regclass::oid").fetchone()[0]
    digest_2016 = table_digest(db, "parking_tickets_2016")
    db.execute("DELETE FROM parking_tickets WHERE date_of_infraction BETWEEN '2017-03-01' AND '2017-03-31'")
    held = db.execute("SELECT count(*) FROM parking_tickets_2017").fetchone()[0]
    result = run_load(demo_dir, "2017")
    assert result.years[0].status == "loaded"  # the tampered year is detected and reloaded
    # and the run says so: why, and what the table held before
    deleted = result.years[0].rows - held
    reason = f"the table was changed since its last load: {deleted:,} row(s) deleted"
    assert result.years[0].reason.startswith(reason) and result.years[0].previous_rows == held
    assert f"2017 reloaded because {reason}" in result.verdict().summary
    assert db.execute("SELECT 'parking_tickets_2016'::regclass::oid").fetchone()[0] == oid_2016
    assert table_digest(db, "parking_tickets_2016") == digest_2016
    march = db.execute(
        "SELECT count(*) FROM parking_tickets WHERE date_of_infraction BETWEEN '2017-03-01' AND '2017-03-31'"
    ).fetchone()[0]
    assert march == int(demodata.expected_monthly([2017]).query("month == 3")["tickets"].iloc[0])


def test_a_changed_value_is_detected(clean, demo_dir):
    db = clean
    run_load(demo_dir, "2016")
    db.execute(
        "UPDATE parking_tickets SET set_fine_amount = set_fine_amount + 1 WHERE ctid = "
        "(SELECT ctid FROM parking_tickets_2016 LIMIT 1)"
    )
    assert run_load(demo_dir, "2016").years[0].status == "loaded"


def test_failure_mid_load_keeps_the_previous_contents(clean, demo_dir, tmp_path):
    db = clean
    run_load(demo_dir, "2016-2017")
    before = table_digest(db, "parking_tickets_2017"), table_digest(db, "parking_tickets_rejected", "year = 2017")
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(demo_dir / "parking-tickets-2016.zip", broken)
    original = (demo_dir / "parking-tickets-2017.zip").read_bytes()
    # a ZIP whose second part is cut short: the first part loads, then reading fails
    with zipfile.ZipFile(demo_dir / "parking-tickets-2017.zip") as archive:
        names = archive.namelist()
        with zipfile.ZipFile(broken / "parking-tickets-2017.zip", "w") as out:
            out.writestr(names[0], archive.read(names[0]))
            out.writestr(names[1], archive.read(names[1]))
    data = (broken / "parking-tickets-2017.zip").read_bytes()
    cut = data.find(names[1].encode()) + 2000
    (broken / "parking-tickets-2017.zip").write_bytes(data[:cut] + b"\x00" * 50 + data[cut + 50 :])
    assert original  # the demo file itself is untouched

    result = run_load(broken, "2016-2017", force=True)
    by_year = {y.year: y for y in result.years}
    assert by_year[2016].status == "loaded"
    assert by_year[2017].status == "failed"
    assert "parking-tickets-2017.zip" in by_year[2017].error
    assert result.verdict().status == "fail"
    assert "-p years=2017" in result.verdict().summary
    assert table_digest(db, "parking_tickets_2017") == before[0]
    assert table_digest(db, "parking_tickets_rejected", "year = 2017") == before[1]
    entry = ledger.get(db, "toronto_parking_tickets", "2017", "load")
    assert entry.status == "failed" and "2017" in entry.error
    staging = db.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'parking_tickets_%_load'").fetchone()[0]
    assert staging == 0

    rerun = run_load(demo_dir, "2017", force=True)
    assert rerun.years[0].status == "loaded"
    assert ledger.get(db, "toronto_parking_tickets", "2017", "load").status == "success"


def test_too_many_rejects_keep_the_previous_contents(clean, demo_dir):
    db = clean
    run_load(demo_dir, "2018")
    before = table_digest(db, "parking_tickets_2018")
    result = run_load(demo_dir, "2018", force=True, max_rejected_ratio=0.0)
    assert result.years[0].status == "rejected-too-many"
    verdict = result.verdict()
    assert verdict.status == "fail" and verdict.error is CheckFailed
    assert table_digest(db, "parking_tickets_2018") == before


def test_a_second_load_of_the_same_year_is_refused(clean, demo_dir):
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True) as holder:
        schema.ensure_schema(holder)
        locks.try_lock(holder, "opsbook.load:toronto_parking_tickets:2016", "run test-holder")
        with pytest.raises(LockHeld, match=r"held by run test-holder on \S+ \(pid \d+\) since 20"):
            run_load(demo_dir, "2016")


def test_missing_year_stops_before_anything_is_loaded(clean, demo_dir):
    from opsbook.errors import SourceError

    with pytest.raises(SourceError, match="no Toronto parking tickets file for 2019"):
        load.plan(context.make("load", source=str(demo_dir), years="2018-2019"))


def test_loads_from_a_gcs_prefix(clean, demo_dir, gcs_emulator):
    from opsbook.stores import uri

    for path in sorted(Path(demo_dir).glob("*2016*")):
        uri.write_bytes(f"gs://opsbook-test/city/tickets/{path.name}", path.read_bytes())
    result = run_load("gs://opsbook-test/city/tickets", "2016")
    local = demodata.expected_monthly([2016])["tickets"].sum()
    assert result.years[0].status == "loaded"
    assert result.years[0].rows == local
    assert result.years[0].files == ["parking-tickets-2016.zip"]


def test_a_swap_behind_an_open_transaction_fails_the_year_with_exit_4_naming_the_session(clean, demo_dir, monkeypatch):
    """An analyst's transaction reading the table holds a lock the swap's DETACH needs: the load
    waits OPSBOOK_LOCK_TIMEOUT (not forever, and not blocking other readers longer), keeps the
    year as it was, and names the session that held it."""
    from opsbook.stores import postgres

    db = clean
    run_load(demo_dir, "2016")
    before = table_digest(db, "parking_tickets_2016")
    monkeypatch.setenv("OPSBOOK_LOCK_TIMEOUT", "1s")
    with postgres.connection(purpose="analyst's notebook") as analyst:
        analyst.execute("SELECT count(*) FROM parking_tickets WHERE date_of_infraction >= '2016-06-01'")
        pid = analyst.info.backend_pid
        result = run_load(demo_dir, "2016", force=True)
        analyst.rollback()
    year = result.years[0]
    assert year.status == "failed"
    assert f"waited 1s (OPSBOOK_LOCK_TIMEOUT) for a lock on parking_tickets held by PostgreSQL pid {pid}" in year.error
    assert "application opsbook analyst's notebook" in year.error and "count(*)" in year.error
    verdict = result.verdict()
    assert verdict.error is LockHeld and verdict.exit_code == 4
    assert table_digest(db, "parking_tickets_2016") == before
    assert ledger.get(db, "toronto_parking_tickets", "2016", "load").status == "failed"
    leftovers = db.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'parking_tickets%%_load'")
    assert leftovers.fetchone()[0] == 0


def test_every_session_carries_the_timeouts_and_a_bad_value_is_a_usage_error(clean, monkeypatch):
    from opsbook.errors import UsageError
    from opsbook.stores import postgres

    monkeypatch.setenv("OPSBOOK_STATEMENT_TIMEOUT", "2min")
    with postgres.connection() as conn:
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "30s"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "2min"
    with postgres.adbc_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout')")
        assert cur.fetchone()[0] == "2min"
    monkeypatch.setenv("OPSBOOK_LOCK_TIMEOUT", "forever")
    with pytest.raises(UsageError, match="OPSBOOK_LOCK_TIMEOUT='forever' is not a duration"):
        postgres.connect()
