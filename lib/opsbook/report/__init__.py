"""What a lead reads: displays inside notebooks, the HTML report of each run, and the index.

============================  ==============================================================
module                        job
============================  ==============================================================
:mod:`.display`               tables, badges, charts, notes and the verdict, for notebooks
:mod:`.checks`                the outcome of checks (opsbook.checks): a table and failing rows
:mod:`.html`                  the executed notebook and its HTML report (banner, run card)
:mod:`.index`                 ``reports/runs.jsonl`` and ``reports/index.html``
============================  ==============================================================

The display helpers are re-exported here: ``from opsbook import report; report.table(rows)``.
They only present what procedures return; they never query or compute.
"""

from opsbook.report.checks import check_failures, check_report, check_table
from opsbook.report.display import Chart, Html, badge, chart, heading, note, stack, table, verdict

__all__ = [
    "Chart",
    "Html",
    "badge",
    "chart",
    "check_failures",
    "check_report",
    "check_table",
    "heading",
    "note",
    "stack",
    "table",
    "verdict",
]
