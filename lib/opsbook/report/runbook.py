"""The report of a runbook run: each step's verdict, with a link to its own report."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

from opsbook import config
from opsbook.report.index import INDEX_STYLE, fmt_duration

if TYPE_CHECKING:
    from opsbook.run.runbook import RunbookOutcome

BANNER = {"pass": ("#1a7f37", "#dafbe1"), "warn": ("#9a6700", "#fff8c5"), "fail": ("#cf222e", "#ffebe9")}


def render(outcome: RunbookOutcome, path: Path) -> str:
    """The page, with links relative to ``path`` (so the reports folder can move as a whole)."""
    esc = html.escape
    book = outcome.runbook
    fg, bg = BANNER[outcome.status]
    rows = []
    for s in outcome.steps:
        link = ""
        if s.html:
            href = os.path.relpath(s.html, path.parent)
            link = f'<a href="{esc(href)}">report</a>'
        status = s.status if s.status in BANNER else "unknown"
        rows.append(
            f'<tr data-status="{esc(s.status)}"><td class="num">{s.number}</td><td>{esc(s.procedure)}</td>'
            f'<td><span class="status {esc(status)}">{esc(s.status.upper())}</span></td>'
            f'<td class="num">{esc(fmt_duration(s.duration_s) if s.run_id else "")}</td>'
            f'<td><div class="summary">{esc(s.summary)}</div>'
            f'<div class="figures">{esc(s.run_id or "")}{" (independent)" if s.independent else ""}</div></td>'
            f"<td>{link}</td></tr>"
        )
    index_href = os.path.relpath(config.reports_dir() / "index.html", path.parent)
    card = [
        ("runbook", f"{book.title} ({book.path})"),
        ("schedule", book.schedule or "on demand"),
        ("started (UTC)", outcome.started_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("duration", fmt_duration(outcome.duration_s)),
        ("exit code", str(outcome.exit_code)),
        *(("note", n) for n in outcome.notes),
    ]
    card_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in card)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(book.title)}: {outcome.status.upper()}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{INDEX_STYLE}
.banner {{ border-radius: 6px; padding: 10px 14px; margin: 6px 0 14px; font-size: 15px; }}
table.card {{ width: auto; margin-bottom: 16px; }} table.card th {{ position: static; }}</style></head>
<body>
<p><a href="{esc(index_href)}">all runs</a></p>
<h1>{esc(book.title)}</h1>
<div class="banner" id="verdict" data-status="{outcome.status}"
 style="color:{fg};background:{bg};border:1px solid {fg}">
<strong>{outcome.status.upper()}</strong> &mdash; {esc(outcome.summary)}</div>
<table class="card">{card_rows}</table>
<table id="steps"><thead><tr><th>step</th><th>procedure</th><th>status</th><th>duration</th>
<th>summary</th><th>report</th></tr></thead><tbody>
{"".join(rows)}
</tbody></table>
</body></html>
"""
