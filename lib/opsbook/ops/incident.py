"""The escalation bundle (breezeway_etl.md "Escalation"): one zip to attach when escalating.

``reports/incidents/<run id>.zip`` holds the recent run log as CSV, the HTML report of each
failed run, per failed run its run-log error and the tail of its notebook's error and stderr
output, and the findings as JSON. Every file is redacted of the configured secrets, whatever
it quotes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbook.ops.health import Findings
from opsbook.ops.sessions import ts

LOG_TAIL_LINES = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Bundle:
    path: Path
    files: list[str]
    bytes: int


def write_bundle(findings: Findings, hours: int, reports: list[dict], parameters: dict[str, Any]) -> Bundle:
    """Write the zip for ``findings``: the run log of the last ``hours`` hours (and of any run
    still running); ``reports``: the runs index (``runs.jsonl``), where a run's report is found
    when its run-log row does not name it; ``parameters``: those of the check, for the JSON."""
    from opsbook import config
    from opsbook.history import runs
    from opsbook.run.redaction import Redactor
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"health {findings.run_id}") as conn:
        rows = runs.recent(conn, hours)
    files: dict[str, str] = {"runs.csv": _runs_csv(rows)}
    indexed = {r.get("run_id"): r for r in reports}
    for row in rows:
        if row["status"] != "failed":
            continue
        html_path = row["html_path"] or (indexed.get(row["run_id"]) or {}).get("html")
        if html_path and Path(html_path).is_file():
            files[f"reports/{Path(html_path).name}"] = Path(html_path).read_text(encoding="utf-8", errors="replace")
        ipynb = row["report_path"] or (indexed.get(row["run_id"]) or {}).get("ipynb")
        files[f"logs/{row['run_id']}.log"] = log_tail(row, ipynb)
    found = {**findings.as_dict(), "params": parameters}
    files["findings.json"] = json.dumps(found, indent=2, default=str, ensure_ascii=False)
    files["README.txt"] = _readme(findings, hours, sorted(files))

    redact = Redactor()
    folder = config.reports_dir() / "incidents"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{findings.run_id}.zip"
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, redact(data, name))  # every file, whatever it quotes
    tmp.replace(path)
    return Bundle(path, list(files), path.stat().st_size)


def _runs_csv(rows: list[dict]) -> str:
    from opsbook.history.runs import COLUMNS

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()})
    return text.getvalue()


def log_tail(row: dict, ipynb: str | None) -> str:
    """The run-log error and the tail of the executed notebook's error and stderr output.

    Runs keep no separate log file: the runner's progress goes to its stderr, and what a
    notebook printed to stderr or raised is kept in the executed notebook.
    """
    lines = [f"run {row['run_id']} ({row['procedure']}) {row['status']}, exit code {row['exit_code']}"]
    if row["error"]:
        lines += ["", "run log error:", str(row["error"])]
    if not ipynb or not Path(ipynb).is_file():
        lines += ["", f"executed notebook: {ipynb or 'not recorded'} (not found)"]
        return "\n".join(lines) + "\n"
    nb = json.loads(Path(ipynb).read_text(encoding="utf-8"))
    output: list[str] = []
    for number, cell in enumerate(nb.get("cells", []), 1):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                output.append(f"--- cell {number}: {out.get('ename')}: {out.get('evalue')}")
                output.extend(_ANSI.sub("", "\n".join(out.get("traceback", []))).splitlines())
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                output.append(f"--- cell {number}: stderr")
                output.extend(("".join(text) if isinstance(text, list) else text).splitlines())
    lines += ["", f"executed notebook: {ipynb}; last {LOG_TAIL_LINES} lines of its error and stderr output:"]
    lines += output[-LOG_TAIL_LINES:] or ["(none)"]
    return "\n".join(lines) + "\n"


def _readme(findings: Findings, hours: int, names: list[str]) -> str:
    breaches = findings.breaches()
    lines = [
        f"opsbook escalation bundle from health run {findings.run_id} on {findings.host} at {ts(findings.checked_at)}",
        "",
        f"{len(breaches)} threshold(s) breached:" if breaches else "No threshold breached.",
        *(f"- {b}" for b in breaches),
        "",
        "Contents:",
        f"- runs.csv: opsbook.runs rows started in the last {hours} h, and any still running",
        "- reports/: the HTML report of each failed run among them",
        "- logs/: per failed run, its run-log error and the tail of its notebook's error and stderr output",
        "- findings.json: everything this health run found",
        "Secret values configured on the host are replaced with ***.",
        "",
        *names,
    ]
    return "\n".join(lines) + "\n"
