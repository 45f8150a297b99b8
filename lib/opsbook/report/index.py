"""The list of runs: ``reports/runs.jsonl`` (one JSON line per run) and ``reports/index.html``."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsbook import config
from opsbook.report import signoff
from opsbook.report.html import write_text
from opsbook.run.redaction import Redactor

RUNS_FILE = "runs.jsonl"
INDEX_FILE = "index.html"


@contextlib.contextmanager
def reports_lock(reports: Path) -> Iterator[None]:
    with open(reports / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_run(entry: dict[str, Any], redact: Redactor, reports: Path | None = None) -> None:
    """Append one run to runs.jsonl and rewrite index.html."""
    reports = reports or config.reports_dir()
    line = redact(json.dumps(entry, default=str, ensure_ascii=False), "runs.jsonl") + "\n"
    with reports_lock(reports):
        with open(reports / RUNS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line)
        write_index(reports)


def read_runs(reports: Path | None = None) -> list[dict[str, Any]]:
    reports = reports or config.reports_dir()
    path = reports / RUNS_FILE
    if not path.exists():
        return []
    runs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            runs.append(json.loads(line))
        except ValueError:
            runs.append({"run_id": f"(unreadable line {number} of {path})", "status": "unknown"})
    return runs


def fmt_duration(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _fmt_figure(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


INDEX_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #24292f; }
h1 { font-size: 22px; margin: 0 0 12px; } h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #d0d7de; padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.window { white-space: nowrap; }
.status { border-radius: 10px; padding: 1px 8px; font-weight: 600; font-size: 12px; }
.status.pass { color: #1a7f37; background: #dafbe1; } .status.warn { color: #9a6700; background: #fff8c5; }
.status.fail { color: #cf222e; background: #ffebe9; } .status.unknown { color: #57606a; background: #f6f8fa; }
.status.abandoned { color: #57606a; background: #eaeef2; }
.filters { margin: 0 0 12px; } .filters label { margin-right: 16px; }
.figures { color: #57606a; font-size: 12px; } .summary { font-size: 12px; }
tr.hidden { display: none; }
.signoff { font-size: 12px; margin-top: 2px; } .signoff.signed { color: #1a7f37; }
.signoff.changed { color: #cf222e; font-weight: 600; }
"""

INDEX_SCRIPT = """
function applyFilters() {
  const status = document.getElementById('filter-status').value;
  const procedure = document.getElementById('filter-procedure').value;
  let shown = 0;
  for (const row of document.querySelectorAll('#runs tbody tr')) {
    const ok = (!status || row.dataset.status === status) && (!procedure || row.dataset.procedure === procedure);
    row.classList.toggle('hidden', !ok);
    if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  const params = new URLSearchParams(location.search);
  for (const name of ['status', 'procedure']) {
    const select = document.getElementById('filter-' + name);
    if (params.get(name)) select.value = params.get(name);
    select.addEventListener('change', applyFilters);
  }
  applyFilters();
});
"""


def write_index(reports: Path | None = None) -> Path:
    """Rewrite reports/index.html from runs.jsonl: the latest run of each procedure and dataset,
    then every run, newest first, filterable."""
    reports = reports or config.reports_dir()
    runs = sorted(read_runs(reports), key=lambda r: str(r.get("started_at", "")), reverse=True)
    procedures = sorted({str(r.get("procedure", "")) for r in runs if r.get("procedure")})
    statuses = ["pass", "warn", "fail", "abandoned"]
    esc = html.escape

    def relative(r: dict[str, Any]) -> str:
        with contextlib.suppress(ValueError, TypeError):
            return Path(r["html"]).resolve().relative_to(reports.resolve()).as_posix() if r.get("html") else ""
        return ""

    signoffs = signoff.read(reports)

    def signed(r: dict[str, Any]) -> str:
        entries = signoffs.get(str(r.get("run_id")))
        if not entries:
            return ""
        kind, text = signoff.state(entries)
        return f'<div class="signoff {kind}" data-signoff="{kind}">{esc(text)}</div>'

    latest: dict[tuple[str, str], dict[str, Any]] = {}
    # newest first: the first seen of each procedure and dataset is its latest; an abandoned
    # interactive run (it never reached a verdict) does not hide the last run that did
    for r in sorted(runs, key=lambda r: r.get("status") == "abandoned"):
        latest.setdefault((str(r.get("procedure", "")), str(r.get("dataset") or "")), r)
    latest_rows = []
    for (procedure, dataset), r in sorted(latest.items()):
        status, rel = str(r.get("status", "unknown")), relative(r)
        latest_rows.append(
            f"<tr><td>{esc(procedure)}</td><td>{esc(dataset)}</td>"
            f'<td><span class="status {esc(status)}">{esc(status.upper())}</span></td>'
            f'<td class="num">{esc(str(r.get("started_at", ""))[:19].replace("T", " "))}</td>'
            f'<td class="window">{esc(str(r.get("window") or ""))}</td>'
            f'<td><div class="summary">{esc(str(r.get("summary") or "")[:240])}</div></td>'
            f"<td>{f'<a href={chr(34)}{esc(rel)}{chr(34)}>report</a>' if rel else ''}{signed(r)}</td></tr>"
        )
    rows = []
    for r in runs:
        status = str(r.get("status", "unknown"))
        rel = relative(r)
        figures = r.get("figures") or {}
        shown = "; ".join(f"{esc(str(k))}: {esc(_fmt_figure(v))}" for k, v in list(figures.items())[:6])
        rows.append(
            f'<tr data-status="{esc(status)}" data-procedure="{esc(str(r.get("procedure", "")))}" '
            f'data-run-id="{esc(str(r.get("run_id", "")))}">'
            f'<td class="num">{esc(str(r.get("started_at", ""))[:19].replace("T", " "))}</td>'
            f"<td>{esc(str(r.get('procedure', '')))}</td>"
            f"<td>{esc(str(r.get('dataset') or ''))}</td>"
            f'<td class="window">{esc(str(r.get("window") or ""))}</td>'
            f'<td><span class="status {esc(status)}">{esc(status.upper())}</span></td>'
            f'<td class="num">{esc(fmt_duration(r.get("duration_s")))}</td>'
            f'<td><div class="summary">{esc(str(r.get("summary") or ""))}</div>'
            f'<div class="figures">{shown}</div></td>'
            f"<td>{f'<a href={chr(34)}{esc(rel)}{chr(34)}>report</a>' if rel else ''}{signed(r)}</td>"
            "</tr>"
        )
    options = lambda values: "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)  # noqa: E731
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>opsbook runs</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{INDEX_STYLE}</style><script>{INDEX_SCRIPT}</script></head>
<body>
<h1>opsbook runs</h1>
<h2>Latest status per procedure and dataset</h2>
<table id="latest"><thead><tr><th>procedure</th><th>dataset</th><th>status</th><th>started (UTC)</th>
<th>window</th><th>summary</th><th>report</th></tr></thead>
<tbody>
{"".join(latest_rows)}
</tbody></table>
<h2>Every run, newest first</h2>
<div class="filters">
<label>status <select id="filter-status"><option value="">all</option>{options(statuses)}</select></label>
<label>procedure <select id="filter-procedure"><option value="">all</option>{options(procedures)}</select></label>
<span><span id="shown">{len(runs)}</span> of {len(runs)} runs</span>
</div>
<table id="runs"><thead><tr><th>started (UTC)</th><th>procedure</th><th>dataset</th><th>window</th>
<th>status</th><th>duration</th><th>summary and key figures</th><th>report</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody></table>
</body></html>
"""
    path = reports / INDEX_FILE
    write_text(path, page)
    return path
