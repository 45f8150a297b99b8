"""A lead's sign-off of a run's report: who, when, why, and the SHA-256 of the report signed.

``python run_notebook.py signoff RUN_ID --by NAME --comment TEXT`` appends one line to
``reports/signoffs.jsonl`` and fills the run's row in ``opsbook.runs`` (``signed_off_by``,
``signed_off_at``, ``signoff_comment``, ``signoff_sha256``). The index shows each sign-off
against its run, and a report whose bytes no longer match the SHA-256 that was signed is shown
as changed after sign-off. A report already changed since its run wrote it (its SHA-256 is in
runs.jsonl) is not signed off at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsbook import config
from opsbook.errors import UsageError
from opsbook.run.redaction import Redactor

SIGNOFFS_FILE = "signoffs.jsonl"
# a line of signoffs.jsonl lacking one of these (edited by hand, cut short) is not a sign-off
REQUIRED = ("run_id", "by", "at", "html", "html_sha256")


@dataclass(frozen=True)
class SignOff:
    run_id: str
    by: str
    at: str  # ISO 8601, UTC
    comment: str
    html: str
    html_sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_run(run_id: str, reports: Path) -> dict[str, Any]:
    """The run's last runs.jsonl entry; UsageError naming the closest run ids when there is none."""
    from opsbook.report import index
    from opsbook.run.params import closest

    runs = index.read_runs(reports)
    found = [r for r in runs if r.get("run_id") == run_id]
    if found:
        return found[-1]
    near = closest(run_id, [str(r.get("run_id")) for r in runs])
    raise UsageError(f"no run {run_id!r} in {reports / index.RUNS_FILE}" + (f"; did you mean {near}?" if near else ""))


def sign(run_id: str, by: str, comment: str = "", reports: Path | None = None) -> tuple[SignOff, list[str]]:
    """Record a sign-off of the run's HTML report; returns it and notes (the run log not reached)."""
    from opsbook.report import index

    reports = reports or config.reports_dir()
    by, comment = by.strip(), comment.strip()
    if not by:
        raise UsageError("--by names who signs off (a name or an e-mail address)")
    run = find_run(run_id, reports)
    status = str(run.get("status"))
    if status in ("fail", "warn") and not comment:
        raise UsageError(f"run {run_id} ended {status.upper()}: say why it is accepted with --comment TEXT")
    html = Path(run["html"]) if run.get("html") else None
    if html is None or not html.is_file():
        raise UsageError(f"run {run_id} has no HTML report to sign off ({html or 'none was written'})")
    digest = sha256_of(html)
    written = run.get("html_sha256")
    if written and written != digest:
        raise UsageError(
            f"the report {html} was changed after its run wrote it (SHA-256 {written[:12]}… then, "
            f"{digest[:12]}… now): not signed off. Restore it, or rerun the procedure"
        )
    record = SignOff(run_id, by, datetime.now(UTC).isoformat(timespec="seconds"), comment, str(html), digest)
    redact = Redactor()
    line = redact(json.dumps(asdict(record), ensure_ascii=False), SIGNOFFS_FILE) + "\n"
    with index.reports_lock(reports):
        with open(reports / SIGNOFFS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line)
        index.write_index(reports)
    notes = []
    try:
        _record_in_run_log(record, redact)
    except Exception as exc:  # the sign-off stands in signoffs.jsonl
        notes.append(f"the run log (opsbook.runs) was not updated: {exc}")
    return record, notes


def _record_in_run_log(record: SignOff, redact: Redactor) -> None:
    from opsbook.history import runs, schema
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose="signoff") as conn:
        schema.ensure_schema(conn)
        found = runs.sign_off(
            conn, record.run_id, redact(record.by), record.at, redact(record.comment), record.html_sha256
        )
    if not found:
        raise LookupError(f"it has no row for run {record.run_id} (the run used another database)")


def read(reports: Path) -> dict[str, list[dict[str, Any]]]:
    """Every sign-off, by run id, oldest first."""
    path = reports / SIGNOFFS_FILE
    found: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in REQUIRED):
            found.setdefault(entry["run_id"], []).append(entry)
    return found


def state(entries: list[dict[str, Any]]) -> tuple[str, str]:
    """``(signed | changed, text)`` for a run's sign-offs: changed when the report's bytes no
    longer match the SHA-256 the last sign-off recorded (or the report is gone)."""
    last = entries[-1]
    who = "; ".join(f"{e['by']} at {str(e['at'])[:16].replace('T', ' ')}" for e in entries)
    path = Path(last["html"])
    current = sha256_of(path) if path.is_file() else None
    if current != last["html_sha256"]:
        what = "deleted" if current is None else "changed"
        return "changed", f"report {what} after sign-off by {who} (signed SHA-256 {last['html_sha256'][:12]}…)"
    comment = f": {last['comment']}" if last.get("comment") else ""
    return "signed", f"signed off by {who}{comment}"


def check(reports: Path | None = None) -> list[str]:
    """Every signed report changed (or deleted) since its sign-off, one line each; the index is
    rewritten so it shows the same."""
    from opsbook.report import index

    reports = reports or config.reports_dir()
    changed = []
    for run_id, entries in sorted(read(reports).items()):
        kind, text = state(entries)
        if kind == "changed":
            changed.append(f"{run_id}: {text}")
    with index.reports_lock(reports):
        index.write_index(reports)
    return changed
