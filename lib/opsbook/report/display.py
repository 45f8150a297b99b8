"""Display helpers for notebooks: tables, status badges, the verdict, progress.

These only present what procedures return; they never query or compute.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from opsbook.run import nextstep
from opsbook.run.verdict import Verdict

STATUS_COLOURS = {
    "pass": ("#1a7f37", "#dafbe1"),
    "warn": ("#9a6700", "#fff8c5"),
    "fail": ("#cf222e", "#ffebe9"),
    "loaded": ("#1a7f37", "#dafbe1"),
    "unchanged": ("#57606a", "#f6f8fa"),
    "failed": ("#cf222e", "#ffebe9"),
    "rejected-too-many": ("#cf222e", "#ffebe9"),
    "refused": ("#cf222e", "#ffebe9"),
    "success": ("#1a7f37", "#dafbe1"),
    "built": ("#1a7f37", "#dafbe1"),
    "skipped": ("#57606a", "#f6f8fa"),
    "not started": ("#9a6700", "#fff8c5"),
    "interrupted": ("#9a6700", "#fff8c5"),
    "error": ("#cf222e", "#ffebe9"),
    "merged": ("#1a7f37", "#dafbe1"),
    "copied": ("#1a7f37", "#dafbe1"),
    "already there": ("#57606a", "#f6f8fa"),
    "to copy": ("#9a6700", "#fff8c5"),
    "to load": ("#9a6700", "#fff8c5"),
    "no file": ("#9a6700", "#fff8c5"),
    "differs": ("#cf222e", "#ffebe9"),
    "unreadable": ("#cf222e", "#ffebe9"),
}

STYLE = """
<style>
table.opsbook { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
table.opsbook th, table.opsbook td,
.jp-RenderedHTMLCommon table.opsbook th, .jp-RenderedHTMLCommon table.opsbook td {
  border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
table.opsbook th { background: #f6f8fa; }
table.opsbook td.num, .jp-RenderedHTMLCommon table.opsbook td.num {
  text-align: right; font-variant-numeric: tabular-nums; }
table.opsbook caption { text-align: left; font-weight: 600; padding: 4px 0; }
span.opsbook-status { border-radius: 10px; padding: 1px 8px; font-weight: 600; font-size: 12px; }
div.opsbook-verdict { border-radius: 6px; padding: 10px 14px; margin: 6px 0; font-size: 15px; }
code.opsbook-raw { white-space: pre-wrap; word-break: break-all; }
</style>
"""


class Html:
    """An object with both an HTML and a plain-text rendering, for display()."""

    def __init__(self, markup: str, text: str):
        self.markup = markup
        self.text = text

    def _repr_html_(self) -> str:
        return STYLE + self.markup

    def __repr__(self) -> str:
        return self.text


def badge(status: str) -> str:
    fg, bg = STATUS_COLOURS.get(status, ("#24292f", "#f6f8fa"))
    return f'<span class="opsbook-status" style="color:{fg};background:{bg}">{html.escape(status.upper())}</span>'


# integer columns that are names, not quantities: no thousands separator
PLAIN_COLUMNS = {"year", "month", "day", "line", "partition", "code", "run id"}


def _cell(value: Any, plain: bool = False) -> tuple[str, str]:
    if isinstance(value, bool):
        return "yes" if value else "no", ""
    if isinstance(value, int):
        return (str(value) if plain else f"{value:,}"), "num"
    if isinstance(value, float):
        return f"{value:,.2f}", "num"
    if value is None:
        return "", ""
    return str(value), ""


def table(
    rows: Sequence[dict[str, Any]],
    caption: str = "",
    status_column: str | None = None,
    element_id: str | None = None,
    raw_columns: Iterable[str] = (),
    row_ids: Sequence[str] | None = None,
) -> Html:
    """A table of dicts (one per row); ``status_column`` values are shown as coloured badges,
    ``raw_columns`` as preformatted text, and ``row_ids`` give each row an anchor."""
    raw_columns = set(raw_columns)
    if not rows:  # a caption as wide as an empty table would wrap word by word
        ident = f' id="{html.escape(element_id)}"' if element_id else ""
        title = f"<strong>{html.escape(caption)}</strong><br>" if caption else ""
        return Html(f'<div class="opsbook-empty"{ident}>{title}<em>none</em></div>', f"{caption}\n(none)".lstrip())
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    ident = f' id="{html.escape(element_id)}"' if element_id else ""
    parts = [f'<table class="opsbook"{ident}>']
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
    text_lines = [caption] if caption else []
    text_lines.append(" | ".join(columns))
    for index, row in enumerate(rows):
        cells, texts = [], []
        for c in columns:
            shown, cls = _cell(row.get(c), plain=c in PLAIN_COLUMNS)
            texts.append(shown)
            if c == status_column and shown:
                cells.append(f"<td>{badge(shown)}</td>")
            elif c in raw_columns:
                cells.append(f'<td><code class="opsbook-raw">{html.escape(shown)}</code></td>')
            else:
                cells.append(
                    f'<td class="{cls}">{html.escape(shown)}</td>' if cls else f"<td>{html.escape(shown)}</td>"
                )
        row_id = f' id="{html.escape(row_ids[index])}"' if row_ids else ""
        parts.append(f"<tr{row_id}>" + "".join(cells) + "</tr>")
        text_lines.append(" | ".join(texts))
    parts.append("</table>")
    return Html("".join(parts), "\n".join(text_lines))


def stack(*items: Html) -> Html:
    """Several displays as one output."""
    return Html("".join(i.markup for i in items), "\n\n".join(i.text for i in items))


def heading(text: str, element_id: str | None = None, level: int = 3) -> Html:
    ident = f' id="{html.escape(element_id)}"' if element_id else ""
    return Html(f"<h{level}{ident}>{html.escape(text)}</h{level}>", text)


class Chart:
    """A plotly figure for both readers: JupyterLab renders the plotly mimetype; the HTML
    report renders the ``text/html`` part, which expects plotly.js loaded once by the page."""

    def __init__(self, fig, element_id: str):
        self.fig = fig
        self.element_id = element_id

    def _repr_mimebundle_(self, include=None, exclude=None):
        import json

        plot_id = f"{self.element_id}-plot"
        div = self.fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=plot_id, config={"displaylogo": False, "responsive": True}
        )
        # shown only when plotly.js could not be loaded (the report moved without assets/)
        missing = (
            '<p class="opsbook-chart-missing" hidden><em>This chart needs plotly.js: keep the report '
            "beside its assets/ folder.</em></p><script>if (typeof Plotly === 'undefined') { "
            f"document.querySelector({json.dumps('#' + self.element_id + ' .opsbook-chart-missing')})"
            ".hidden = false; }</script>"
        )
        markup = f'<div class="opsbook-chart" id="{html.escape(self.element_id)}">{div}{missing}</div>'
        return {
            "application/vnd.plotly.v1+json": json.loads(self.fig.to_json()),
            "text/html": markup,
            "text/plain": f"<chart {self.element_id}: {self.fig.layout.title.text or ''}>",
        }


def chart(fig, element_id: str) -> Chart:
    return Chart(fig, element_id)


def note(text: str) -> Html:
    return Html(f"<p>{html.escape(text)}</p>", text)


def verdict(v: Verdict) -> Html:
    fg, bg = STATUS_COLOURS[v.status]
    figures = ", ".join(f"{k}: {_cell(val)[0]}" for k, val in v.figures.items())
    markup = (
        f'<div class="opsbook-verdict" id="verdict" data-status="{v.status}" '
        f'style="color:{fg};background:{bg};border:1px solid {fg}">'
        f"<strong>{v.label}</strong> &mdash; {html.escape(v.summary)}"
        + (f"<br><small>{html.escape(figures)}</small>" if figures else "")
        + (f"<br><small><b>Next step:</b> {nextstep.as_html(v.next_step)}</small>" if v.next_step else "")
        + "</div>"
    )
    text = f"{v.label}: {v.summary}" + (f"\n{figures}" if figures else "")
    return Html(markup, text + (f"\nNext step: {v.next_step}" if v.next_step else ""))
