"""``read_back``: totals read back from a written artifact against what the source holds.

The caller reads the artifact as its client would (a GeoJSON file through a map library, a
payload decoded as the site decodes it) and gives both mappings; this check compares them,
name by name, within a tolerance. A name on one side only is a difference.
"""

from __future__ import annotations

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.scan import fmt, signed


def run_read_back(ctx, check: s.ReadBack) -> CheckResult:
    names = list(dict.fromkeys([*check.expected, *check.observed]))
    failing = []
    for name in names:
        got, want = check.observed.get(name), check.expected.get(name)
        if got is None or want is None or not check.tolerance.allows(float(got), float(want)):
            failing.append(
                {
                    "total": name,
                    "read back": got,
                    "expected": want,
                    "difference": signed(got - want) if got is not None and want is not None else "",
                }
            )
    shown = "; ".join(
        f"{f['total']}: {_text(f['read back'])} read back, {_text(f['expected'])} in {check.source}"
        + (f" (off by {f['difference']})" if f["difference"] else "")
        for f in failing[:10]
    )
    tolerance = check.tolerance
    within = f", within abs {tolerance.abs:g} rel {tolerance.rel:g}" if tolerance.abs or tolerance.rel else ""
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, bool(failing)),
        f"{len(names) - len(failing)} of {len(names)} totals match",
        f"{check.artifact} holds {', '.join(check.expected)} as in {check.source}{within}",
        failing=failing[:SAMPLE_ROWS],
        failing_count=len(failing) or None,
        engine="read back",
        message=f"{check.artifact}: {shown}" if failing else "",
    )


def _text(value) -> str:
    return "nothing" if value is None else fmt(value)


register("read_back", run=run_read_back)
