"""How every procedure shows the outcome of its checks (:class:`opsbook.checks.CheckResult`):
one table with each check's status, observed against expected, and the failing rows of each
check that did not pass. validate, the warehouse checkpoint, rollups and the read-backs of
camera_datasets and push_cache show theirs the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opsbook.report.display import Html, heading, note, stack, table


def check_table(results: Sequence[Any], caption: str = "", element_id: str = "checks") -> Html:
    """One row per check: status, what was observed against what was expected; each row is
    anchored (``check-<name>``) for the verdict to link to."""
    rows = [
        {
            "check": r.name,
            "type": r.type,
            "severity": r.severity,
            "status": r.status,
            "observed": r.observed,
            "expected": r.expected,
            "engine": r.engine,
        }
        for r in results
    ]
    return table(
        rows, caption=caption, status_column="status", element_id=element_id, row_ids=[r.anchor for r in results]
    )


def check_failures(
    results: Sequence[Any], all_passed: str = "Every check passed: no failing rows to show.", level: int = 3
) -> Html:
    """Each check that did not pass: what is wrong, and its failing rows or partitions (a sample)."""
    failed = [r for r in results if not r.passed]
    if not failed:
        return note(all_passed)
    parts = []
    for r in failed:
        parts.append(heading(f"{r.name}: {r.status.upper()}", element_id=f"{r.anchor}-failures", level=level))
        parts.append(note(r.message or r.observed))
        if r.failing:
            shown = f"{len(r.failing)} of {r.failing_count:,}" if r.failing_count else f"{len(r.failing)}"
            parts.append(table(r.failing, caption=f"failing rows or partitions ({shown})"))
    return stack(*parts)


def check_report(results: Sequence[Any], caption: str = "", element_id: str = "checks", level: int = 3) -> Html:
    """The table of the checks, then the failing rows of those that did not pass (nothing more
    when all passed)."""
    shown = check_table(results, caption, element_id)
    if all(r.passed for r in results):
        return shown
    return stack(shown, check_failures(results, level=level))
