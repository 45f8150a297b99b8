"""reports/index.html: the latest run of each procedure and dataset, then every run."""

import re

from opsbook.report import index
from opsbook.run.redaction import Redactor


def run(run_id, procedure, status, started, dataset="toronto_parking_tickets", **extra):
    return {
        "run_id": run_id,
        "procedure": procedure,
        "dataset": dataset,
        "status": status,
        "started_at": started,
        "summary": f"{procedure} {status}",
        **extra,
    }


def rows_of(page: str, table: str) -> list[str]:
    body = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [re.sub(r"<[^>]+>", " ", row).split() for row in re.findall(r"<tr.*?</tr>", body, re.S)]


def test_the_latest_status_of_each_procedure_and_dataset_leads_the_index(tmp_path):
    redact = Redactor()
    (tmp_path / "2026-12-01").mkdir()
    report = tmp_path / "2026-12-01" / "r3.html"
    report.write_text("<html></html>")
    index.append_run(run("r1", "load", "fail", "2026-12-01T01:00:00"), redact, tmp_path)
    index.append_run(run("r2", "validate", "warn", "2026-12-01T02:00:00"), redact, tmp_path)
    index.append_run(run("r3", "load", "pass", "2026-12-01T03:00:00", html=str(report)), redact, tmp_path)
    index.append_run(run("r4", "load", "pass", "2026-12-01T04:00:00", dataset="other"), redact, tmp_path)
    page = (tmp_path / "index.html").read_text()
    latest = rows_of(page, "latest")
    assert [r[:3] for r in latest] == [
        ["load", "other", "PASS"],
        ["load", "toronto_parking_tickets", "PASS"],
        ["validate", "toronto_parking_tickets", "WARN"],
    ]
    assert 'href="2026-12-01/r3.html"' in page
    assert len(rows_of(page, "runs")) == 4  # every run stays listed below


def test_a_damaged_signoffs_file_does_not_stop_the_index(tmp_path):
    """signoffs.jsonl edited by hand or cut short: the lines that are not sign-offs are skipped."""
    from opsbook.report import index, signoff

    (tmp_path / "signoffs.jsonl").write_text('null\n{"run_id": "R1"}\n[1, 2]\n{"run_id": "R2", "by": "A", "at": "x"\n')
    assert signoff.read(tmp_path) == {}
    index.write_index(tmp_path)
    assert (tmp_path / "index.html").exists()
