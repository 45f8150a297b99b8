"""``expected_totals``: counts and sums per partition against a reference, within a tolerance.

A partition the reference has no figure for (a year the repository holds no published figures
of) cannot be judged: it is reported as "no reference" and makes the check WARN, never FAIL.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.scan import fmt, label, roll_up, signed


def _aggregates(ctx, check: s.ExpectedTotals, scan) -> dict[str, str]:
    return {
        m.reference_column: scan.add(sql.SQL("sum({})").format(sql.Identifier(m.column)))
        for m in check.measures
        if m.measure == "sum"
    }


def _expected(ctx, check: s.ExpectedTotals) -> tuple[dict[tuple, dict[str, Any]], s.Tolerance, str]:
    from opsbook.checks import references

    if check.grain == "all":
        return {(): dict(check.expected or {})}, check.tolerance, "inline values"
    reference = ctx.reference_frame()
    tolerance = references.tolerance(ctx.suite, ctx.reference) or check.tolerance
    key_columns = ["year"] if check.grain == "year" else ["year", "month"]
    grouped = reference.groupby(key_columns, as_index=False).sum(numeric_only=True)
    by_key = {tuple(int(record[k]) for k in key_columns): record for record in grouped.to_dict("records")}
    return by_key, tolerance, f"reference {ctx.reference!r}"


def _evaluate(ctx, check: s.ExpectedTotals, scan, rows, aliases) -> CheckResult:
    expected_by_key, tolerance, source = _expected(ctx, check)
    observed: dict[str, dict[tuple, Any]] = {}
    for m in check.measures:
        alias = "n" if m.measure == "count" else aliases[m.reference_column]
        observed[m.reference_column] = roll_up(scan, rows, check.grain, alias)
    if check.grain == "month" and scan.table == ctx.table:
        for m in check.measures:
            if m.measure == "count":
                for key, record in expected_by_key.items():
                    ctx.month_expected[key] = int(record[m.reference_column])
    failing, unreferenced = [], []
    compared = 0
    for key in sorted(set(expected_by_key) | set(observed[check.measures[0].reference_column])):
        record = expected_by_key.get(key)
        for m in check.measures:
            got = observed[m.reference_column].get(key, 0 if m.measure == "count" else Decimal(0))
            if record is None:
                if got and label(key) not in unreferenced:
                    unreferenced.append(label(key))
                continue
            want = _as_number(record[m.reference_column], got)
            compared += 1
            if not tolerance.allows(float(got), float(want)):
                failing.append(
                    {
                        "partition": label(key),
                        "measure": m.title,
                        "observed": fmt(got),
                        "expected": fmt(want),
                        "difference": signed(got - want),
                    }
                )
    shown = "; ".join(
        f"{f['partition']} {f['measure']}: {f['observed']}, expected {f['expected']} (off by {f['difference']})"
        for f in failing[:10]
    ) + (" ..." if len(failing) > 10 else "")
    status = outcome(check, bool(failing))
    if status == "pass" and unreferenced:
        status = "warn"  # nothing contradicts the reference, but some partitions could not be judged
    notes = [shown] if failing else []
    if unreferenced:
        notes.append(f"no reference for {', '.join(unreferenced)} in {source}: not compared")
    rows_out = failing + [
        {"partition": p, "measure": "", "observed": "", "expected": "no reference", "difference": ""}
        for p in unreferenced
    ]
    return CheckResult(
        name=check.name,
        type=check.type,
        severity=check.severity,
        status=status,
        observed=f"{compared - len(failing)} of {compared} totals match"
        + (f"; {len(unreferenced)} partition(s) without reference" if unreferenced else ""),
        expected=f"{source}, tolerance abs {tolerance.abs:g} rel {tolerance.rel:g}",
        failing=rows_out[:SAMPLE_ROWS],
        failing_count=len(rows_out),
        message="; ".join(notes),
    )


def _as_number(value: Any, like: Any) -> Any:
    if isinstance(like, Decimal):
        return Decimal(str(value))
    return int(value) if float(value).is_integer() else float(value)


register("expected_totals", aggregates=_aggregates, evaluate=_evaluate)
