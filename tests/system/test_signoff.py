"""A lead signs off a run's report; the index shows it, and shows a report changed after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import fresh_health_state, run_cli

pytestmark = pytest.mark.notebook


def signoffs(reports_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (reports_dir / "signoffs.jsonl").read_text().splitlines()]


def test_sign_off_records_who_when_why_and_the_report_digest(database_url, redis_url, db, reports_dir):
    fresh_health_state(db)
    run = run_cli("health", "-p", "expected=", "--json")
    assert run.code == 0, run.stderr
    run_id, html = run.json()["run_id"], Path(run.json()["reports"]["html"])

    done = run_cli("signoff", run_id, "--by", "A. Lead", "--comment", "morning check read")
    assert done.code == 0, done.stderr
    import hashlib

    digest = hashlib.sha256(html.read_bytes()).hexdigest()
    assert done.stdout.strip().endswith(f"(SHA-256 {digest})")
    (entry,) = signoffs(reports_dir)
    assert (entry["run_id"], entry["by"], entry["comment"], entry["html_sha256"]) == (
        run_id,
        "A. Lead",
        "morning check read",
        digest,
    )
    row = db.execute(
        "SELECT signed_off_by, signoff_comment, signoff_sha256, signed_off_at IS NOT NULL FROM opsbook.runs "
        "WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert row == ("A. Lead", "morning check read", digest, True)
    index = (reports_dir / "index.html").read_text()
    assert 'data-signoff="signed"' in index and "signed off by A. Lead" in index

    assert run_cli("signoff", "--check").code == 0
    # someone edits the signed report: the check and the index say so
    html.write_text(html.read_text().replace("PASS", "PASS (edited)"))
    check = run_cli("signoff", "--check")
    assert check.code == 1
    assert run_id in check.stdout and "changed after sign-off by A. Lead" in check.stdout
    index = (reports_dir / "index.html").read_text()
    assert 'data-signoff="changed"' in index
    # and it cannot be signed off again as it is now: it is not what the run wrote
    again = run_cli("signoff", run_id, "--by", "B. Lead")
    assert again.code == 2 and "was changed after its run wrote it" in again.stderr
    assert len(signoffs(reports_dir)) == 1


def test_sign_off_refusals_say_why(database_url, redis_url, db, reports_dir):
    fresh_health_state(db)
    failed = run_cli("health", "-p", "expected=load", "--json")
    assert failed.code == 1, failed.stderr  # no load ever ran: health fails
    run_id = failed.json()["run_id"]

    no_comment = run_cli("signoff", run_id, "--by", "A. Lead")
    assert no_comment.code == 2 and "ended FAIL: say why it is accepted with --comment" in no_comment.stderr
    typo = run_cli("signoff", run_id[:-1] + "x", "--by", "A. Lead")
    assert typo.code == 2 and f"did you mean {run_id}?" in typo.stderr
    nobody = run_cli("signoff", run_id)
    assert nobody.code == 2 and "--by NAME" in nobody.stderr
    assert not (reports_dir / "signoffs.jsonl").exists()

    accepted = run_cli("signoff", run_id, "--by", "A. Lead", "--comment", "load is not scheduled on this host")
    assert accepted.code == 0, accepted.stderr
