"""Row rules answered by the shared scan: row_count, coverage, not_null, accepted_values, range,
row_condition, freshness."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.scan import bounds, expected_partitions, fmt, label, list_message, roll_up, sample, within


def _base(check) -> dict:
    return dict(name=check.name, type=check.type, severity=check.severity)


def _window_label(ctx) -> str:
    return ctx.window_label() if ctx.years else "all rows"


# --- row_count ---------------------------------------------------------------------------------


def _row_count(ctx, check: s.RowCount, scan, rows, aliases) -> CheckResult:
    total = sum(r["n"] for r in rows)
    if check.per:
        counts = roll_up(scan, rows, check.per, "n")
        keys = sorted(set(expected_partitions(ctx, check.per)) | set(counts)) if scan.column else [()]
        bad = [
            {"partition": label(k), "rows": counts.get(k, 0)}
            for k in keys
            if not within(counts.get(k, 0), check.min, check.max)
        ]
        observed = f"{len(keys) - len(bad)} of {len(keys)} {check.per}s in bounds"
    else:
        bad = [] if within(total, check.min, check.max) else [{"partition": "all", "rows": total}]
        observed = f"{total:,} rows"
    return CheckResult(
        **_base(check),
        status=outcome(check, bool(bad)),
        observed=observed,
        expected=bounds(check.min, check.max, check.per),
        failing=bad[:SAMPLE_ROWS],
        failing_count=len(bad),
        message=list_message(bad, "partition", "rows outside bounds"),
    )


# --- coverage ----------------------------------------------------------------------------------


def _coverage(ctx, check: s.Coverage, scan, rows, aliases) -> CheckResult:
    counts = roll_up(scan, rows, check.grain, "n")
    expected = expected_partitions(ctx, check.grain)
    missing = [k for k in expected if not counts.get(k)]
    failing = [{"missing partition": label(k)} for k in missing]
    message = f"missing {check.grain}s: {', '.join(label(k) for k in missing)}" if missing else ""
    return CheckResult(
        **_base(check),
        status=outcome(check, bool(missing)),
        observed=f"{len(expected) - len(missing)} of {len(expected)} {check.grain}s present",
        expected=f"every {check.grain} of {_window_label(ctx)}",
        failing=failing[:SAMPLE_ROWS],
        failing_count=len(missing),
        message=message,
    )


# --- not_null ----------------------------------------------------------------------------------


def _not_null_aggregates(ctx, check: s.NotNull, scan) -> dict[str, str]:
    ctx.column_types(scan.table)  # fail early on a missing table
    return {c: scan.add(sql.SQL("count({})").format(sql.Identifier(c))) for c in check.columns}


def _not_null(ctx, check: s.NotNull, scan, rows, aliases) -> CheckResult:
    total = sum(r["n"] for r in rows)
    nulls = {c: total - sum(r[a] or 0 for r in rows) for c, a in aliases.items()}
    bad = {c: n for c, n in nulls.items() if n}
    failing = (
        sample(ctx, check, sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(sql.Identifier(c)) for c in bad))
        if bad
        else []
    )
    return CheckResult(
        **_base(check),
        status=outcome(check, bool(bad)),
        observed=", ".join(f"{c}: {n:,} NULL" for c, n in nulls.items()) + f" (of {total:,} rows)",
        expected="no NULL in " + ", ".join(check.columns),
        failing=failing,
        failing_count=sum(bad.values()),
        message=", ".join(f"{n:,} of {total:,} rows with {c} NULL" for c, n in bad.items()),
    )


# --- accepted_values, range, row_condition: a count of violating rows -------------------------------


def _accepted_violation(check: s.AcceptedValues) -> sql.Composable:
    return sql.SQL("{c} IS NOT NULL AND {c}::text <> ALL({v}::text[])").format(
        c=sql.Identifier(check.column), v=sql.Literal([str(v) for v in check.values])
    )


def _range_violation(check: s.Range) -> sql.Composable:
    c = sql.Identifier(check.column)
    parts = []
    if check.min is not None:
        parts.append(sql.SQL("{} < {}").format(c, sql.Literal(check.min)))
    if check.max is not None:
        parts.append(sql.SQL("{} > {}").format(c, sql.Literal(check.max)))
    return sql.SQL(" OR ").join(parts) if parts else sql.SQL("FALSE")


def _condition_violation(check: s.RowCondition) -> sql.Composable:
    return sql.SQL("({}) IS NOT TRUE").format(sql.SQL(check.condition))


_VIOLATIONS = {"accepted_values": _accepted_violation, "range": _range_violation, "row_condition": _condition_violation}


def _violation_aggregates(ctx, check, scan) -> dict[str, str]:
    aliases = {"bad": scan.add(sql.SQL("count(*) FILTER (WHERE {})").format(_VIOLATIONS[check.type](check)))}
    if check.type == "range":
        aliases["min"] = scan.add(sql.SQL("min({})").format(sql.Identifier(check.column)))
        aliases["max"] = scan.add(sql.SQL("max({})").format(sql.Identifier(check.column)))
    return aliases


def _violations(ctx, check, scan, rows, aliases) -> CheckResult:
    bad = sum(r[aliases["bad"]] or 0 for r in rows)
    of = f"{bad:,} of {sum(r['n'] for r in rows):,} rows"
    if check.type == "accepted_values":
        expected, observed = f"{check.column} in {check.values}", f"{of} outside"
    elif check.type == "range":
        expected = f"{check.column} {bounds(check.min, check.max)}"
        lows = [r[aliases["min"]] for r in rows if r[aliases["min"]] is not None]
        highs = [r[aliases["max"]] for r in rows if r[aliases["max"]] is not None]
        span = f"min {fmt(min(lows))}, max {fmt(max(highs))}" if lows else "no values"
        observed = f"{of} out of range ({span})"
    else:
        expected, observed = check.condition, f"{of} fail"
    return CheckResult(
        **_base(check),
        status=outcome(check, bad > 0),
        observed=observed,
        expected=expected,
        failing=sample(ctx, check, _VIOLATIONS[check.type](check)) if bad else [],
        failing_count=bad,
        message=f"{of} violate {expected}" if bad else "",
    )


# --- freshness ---------------------------------------------------------------------------------


def _freshness_aggregates(ctx, check: s.Freshness, scan) -> dict[str, str]:
    return {"newest": scan.add(sql.SQL("max({})").format(sql.Identifier(check.column)))}


def _freshness(ctx, check: s.Freshness, scan, rows, aliases) -> CheckResult:
    values = [r[aliases["newest"]] for r in rows if r[aliases["newest"]] is not None]
    expected = f"newest within {check.max_age_hours:g} h"
    if not values:
        return CheckResult(
            **_base(check),
            status=outcome(check, True),
            observed="no rows",
            expected=expected,
            message="the table has no rows",
        )
    newest = max(values)
    moment = newest if isinstance(newest, dt.datetime) else dt.datetime.combine(newest, dt.time())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    age = (dt.datetime.now(dt.UTC) - moment).total_seconds() / 3600
    stale = age > check.max_age_hours
    return CheckResult(
        **_base(check),
        status=outcome(check, stale),
        observed=f"newest {newest} ({age:,.1f} h ago)",
        expected=expected,
        message=f"the newest {check.column} is {age:,.1f} hours old" if stale else "",
    )


register("row_count", evaluate=_row_count)  # the row count every scan has
register("coverage", evaluate=_coverage)
register("not_null", aggregates=_not_null_aggregates, evaluate=_not_null)
for _name in _VIOLATIONS:
    register(_name, aggregates=_violation_aggregates, evaluate=_violations)
register("freshness", aggregates=_freshness_aggregates, evaluate=_freshness)
