"""``empty_query``: a query that returns the rows breaking a rule (none: the check passes).

The query is trusted configuration (a suite file, or a procedure's own), reviewed like code;
run values are bound by name (``%(start)s``), never pasted in.
"""

from __future__ import annotations

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.stores.postgres import dicts


def run_empty_query(ctx, check: s.EmptyQuery) -> CheckResult:
    query = f"SELECT *, count(*) OVER () AS opsbook_rows FROM ({check.query}) q LIMIT {SAMPLE_ROWS}"
    rows = dicts(ctx.conn, query, ctx.params or None)
    count = rows[0]["opsbook_rows"] if rows else 0
    for row in rows:
        row.pop("opsbook_rows")
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, count > 0),
        f"{count:,} rows break it",
        check.description or "no row breaks the rule",
        failing=rows[:SAMPLE_ROWS],
        failing_count=count,
        message=f"{count:,} rows break {check.description or check.name}" if count else "",
    )


register("empty_query", run=run_empty_query)
