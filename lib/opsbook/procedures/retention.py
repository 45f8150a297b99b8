"""Retention: plan, then apply, the removal of data older than a policy keeps.

A policy (``params/policies/<name>.yaml``) lists rules, one per table: drop the range
partitions whose upper bound is on or before the cutoff, or delete the rows older than it. The
plan counts what would go, in one read-only snapshot, and changes nothing; ``run`` applies it
only when ``apply=true``, refusing a plan over ``max_rows`` before it touches anything. The
work is :mod:`opsbook.ops.retention`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field

from opsbook.errors import CheckFailed
from opsbook.ops.policy import PolicyChoice
from opsbook.run.context import RunContext
from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict
from opsbook.windows import Days

if TYPE_CHECKING:
    from opsbook.ops.lifecycle import BucketPlan
    from opsbook.ops.retention import Applied, RulePlan


def _one_day(value: Days) -> Days:
    if value and value.first != value.last:
        raise ValueError(f"{value} is a window: as_of is one date, YYYY-MM-DD (or today, yesterday, today-7)")
    return value


class Params(ProcedureParams):
    """Parameters of ``retention``."""

    policy: PolicyChoice = Field(
        "trafficsafety", description="a policy in params/policies/ (its name) or the path of a policy file"
    )
    as_of: Annotated[Days, AfterValidator(_one_day)] = Field(
        "", description='the date the cutoffs count back from, YYYY-MM-DD ("": today, UTC)'
    )
    apply: bool = Field(False, description="remove what the plan shows (false: plan only, nothing changes)")
    max_rows: int = Field(1_000_000, ge=0, description="refuse to apply a plan that removes more rows than this")
    vacuum: bool = Field(True, description="VACUUM ANALYZE each table rows were deleted from (ANALYZE after drops)")


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel: one per table when applying; a plan takes none."""
    from opsbook.ops.retention import table_lock

    return [table_lock(rule.table) for rule in params.policy.policy.rules] if params.apply else []


@dataclass(frozen=True)
class Plan:
    params: Params
    as_of: dt.date
    rules: list[RulePlan]
    buckets: list[BucketPlan] = field(default_factory=list)  # the lifecycle rules of the lake's and archive's buckets

    @property
    def policy(self):
        return self.params.policy.policy

    @property
    def remove_rows(self) -> int:
        return sum(r.remove_rows for r in self.rules)

    @property
    def remove_bytes(self) -> int:
        return sum(r.remove_bytes for r in self.rules)

    @property
    def remove_partitions(self) -> int:
        return sum(len(r.dropping) for r in self.rules)

    @property
    def errors(self) -> list[RulePlan]:
        return [r for r in self.rules if r.status == "error"]


def plan(ctx: RunContext) -> Plan:
    """What the policy would remove as of the date, counted in one read-only snapshot: changes nothing."""
    from opsbook.ops import lifecycle, retention

    params: Params = ctx.params
    as_of = params.as_of.first or dt.datetime.now(dt.UTC).date()
    policy = params.policy.policy
    return Plan(params, as_of, retention.plan(policy, as_of), lifecycle.plan(policy, as_of))


def run(ctx: RunContext, plan: Plan) -> Result:
    """Apply the plan when ``apply=true`` and it fits the database (else leave everything as it is)."""
    from opsbook.ops import lifecycle, retention

    params: Params = ctx.params
    if not params.apply or plan.errors or any(b.status == "error" for b in plan.buckets):
        return Result(plan)
    done = retention.apply(plan.rules, ctx.run_id, params.max_rows, params.vacuum, ctx.progress("Applying"))
    if not done.refused:
        lifecycle.apply(plan.buckets)
    return Result(plan, done.applied, done.refused, done.seconds)


@dataclass
class Result:
    plan: Plan
    applied: list[Applied] = field(default_factory=list)
    refused: str | None = None
    seconds: float = 0.0

    def verdict(self) -> Verdict:
        p = self.plan
        figures = {
            "rules": len(p.rules),
            "absent": sum(r.status == "absent" for r in p.rules),
            "rows planned": p.remove_rows,
            "partitions planned": p.remove_partitions,
            "bytes planned": p.remove_bytes,
        }
        where = f"policy {p.policy.name} as of {p.as_of}"
        broken = [b for b in p.buckets if b.status == "error"]
        if broken:
            problems = "; ".join(f"{b.bucket}/{b.prefix}: {b.note}" for b in broken)
            return Verdict.failed(
                f"{where}: {len(broken)} bucket rule(s) could not be planned or set: {problems}",
                figures,
                "retention-buckets",
                CheckFailed,
            )
        if p.errors:
            problems = "; ".join(f"{r.table}: {r.note}" for r in p.errors)
            return Verdict.failed(
                f"{where}: {len(p.errors)} rule(s) do not fit the database, nothing changed: {problems}",
                figures,
                "retention-plan",
                CheckFailed,
            )
        if self.refused:
            return Verdict.failed(self.refused, figures, "retention-apply", CheckFailed)
        absent = sum(r.status == "absent" for r in p.rules)
        absent_text = f"; {absent} table(s) absent" if absent else ""
        absent_text += _buckets_text(p.buckets, p.params.apply)
        if not p.params.apply:
            if not p.remove_rows and not p.remove_partitions:
                return Verdict("pass", f"plan only: {where} finds nothing older than its cutoffs{absent_text}", figures)
            partitions = f"{p.remove_partitions} partition(s), " if p.remove_partitions else ""
            return Verdict(
                "pass",
                f"plan only, nothing changed: {where} would remove {p.remove_rows:,} rows ({partitions}about "
                f"{human_bytes(p.remove_bytes)}) from {sum(r.status == 'to remove' for r in p.rules)} table(s)"
                f"{absent_text}; run with -p apply=true to remove them",
                figures,
            )
        removed = sum(a.removed_rows for a in self.applied)
        dropped = sum(len(a.dropped) for a in self.applied)
        freed = sum((a.bytes_before or 0) - (a.bytes_after or 0) for a in self.applied if a.bytes_before is not None)
        figures.update({"rows removed": removed, "partitions dropped": dropped, "bytes freed": freed})
        partitions = f" ({dropped} partition(s))" if dropped else ""
        tables = sum(a.status == "removed" for a in self.applied)
        freed_text = f"; {human_bytes(freed)} returned to the disk{absent_text}"
        off = [a for a in self.applied if a.status == "removed" and not a.as_planned]
        if off:
            detail = "; ".join(f"{a.table}: {a.removed_rows:,} removed, {a.planned_rows:,} planned" for a in off)
            return Verdict(
                "warn",
                f"{where}: removed {removed:,} rows{partitions} from {tables} table(s), not as planned: the data "
                f"changed between plan and apply ({detail}){freed_text}",
                figures,
                rows_out=removed,
            )
        return Verdict(
            "pass",
            f"{where}: removed {removed:,} rows{partitions} from {tables} table(s), as planned{freed_text}",
            figures,
            rows_out=removed,
        )


def _buckets_text(buckets: list[BucketPlan], applied: bool) -> str:
    """The bucket lifecycle part of a verdict ("" when the policy has none for a bucket)."""
    real = [b for b in buckets if b.bucket]
    if not real:
        return ""
    missing = [b for b in real if b.status == "to set"]
    if applied:
        return f"; bucket lifecycle: {len(real)} rule(s) in place"
    if not missing:
        return f"; bucket lifecycle: its {len(real)} rule(s) already set"
    acted = sum(b.objects for b in missing)
    return f"; bucket lifecycle: {len(missing)} rule(s) to set (GCS would then act on {acted:,} object(s))"


# --- presentation ----------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TB"


def _cutoff_text(value: dt.date | dt.datetime | None) -> str:
    if value is None:
        return "unused, any age"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M") + (" UTC" if value.tzinfo else "")
    return value.isoformat()


def show_plan(plan: Plan):
    """Per rule: the cutoff, what would go (rows, partitions, bytes) and what stays."""
    from opsbook import report

    rows = [
        {
            "table": r.table,
            "action": r.rule.action.replace("_", " "),
            "aged by": r.column or r.rule.column or "",
            "keep days": r.rule.keep_days,
            "cutoff": _cutoff_text(r.cutoff),
            "rows now": r.rows if r.status != "absent" else None,
            "rows to remove": r.remove_rows,
            "partitions to drop": len(r.dropping) if r.rule.action in ("drop_partitions", "drop_staging") else None,
            "bytes to remove": ""
            if r.status in ("absent", "error")
            else human_bytes(r.remove_bytes) + (" (est.)" if r.rule.action == "delete_rows" and r.remove_bytes else ""),
            "rows kept": r.kept_rows if r.status != "absent" else None,
            "table size": human_bytes(r.table_bytes) if r.status != "absent" else "",
            "status": r.status,
            "note": r.note,
        }
        for r in plan.rules
    ]
    partitions_text = (
        f"{plan.remove_partitions} partition(s), "
        if any(r.rule.action == "drop_partitions" for r in plan.rules)
        else ""
    )
    caption = (
        f"Policy {plan.policy.name} ({plan.params.policy.path.name}) as of {plan.as_of}: {plan.remove_rows:,} rows, "
        f"{partitions_text}about {human_bytes(plan.remove_bytes)} to remove"
    )
    parts = [report.table(rows, caption=caption, status_column="status", element_id="retention-plan")]
    partitions = [
        {
            "table": r.table,
            "partition": p.name,
            "bounds": p.bound.removeprefix("FOR VALUES "),
            "rows": p.rows,
            "size": human_bytes(p.bytes),
            "ledger": ", ".join(f"{step} {ds} {part}" for ds, part, step in p.ledger),
            "status": "drop" if p.drop else "keep",
        }
        for r in plan.rules
        for p in r.partitions
    ]
    if partitions:
        parts.append(
            report.table(
                partitions,
                caption="Partitions (bounds from the catalog): dropped when the upper bound is on or before the cutoff",
                status_column="status",
                element_id="retention-partitions",
            )
        )
    return report.stack(*parts)


def show_plan_chart(plan: Plan):
    """Rows and bytes to remove per table (tables with nothing to remove shown at zero)."""
    from opsbook import report

    present = [r for r in plan.rules if r.status not in ("absent", "error")]
    if not present:
        return report.note("No table of the policy exists yet: nothing to chart.")
    from plotly.subplots import make_subplots

    tables = [r.table for r in present]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rows to remove / kept", "MB to remove"))
    fig.add_bar(x=tables, y=[r.remove_rows for r in present], name="to remove", marker_color="#cf222e", row=1, col=1)
    fig.add_bar(x=tables, y=[r.kept_rows for r in present], name="kept", marker_color="#2da44e", row=1, col=1)
    fig.add_bar(
        x=tables,
        y=[r.remove_bytes / 2**20 for r in present],
        name="MB to remove",
        marker_color="#bf8700",
        showlegend=False,
        row=1,
        col=2,
    )
    fig.update_layout(
        title=f"Retention plan: policy {plan.policy.name} as of {plan.as_of}",
        barmode="stack",
        height=360,
        margin={"l": 50, "r": 20, "t": 70, "b": 60},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return report.chart(fig, element_id="retention-chart")


def show_applied(result: Result):
    """Planned against removed, per rule, with the table sizes before and after."""
    from opsbook import report

    p = result.plan
    if not p.params.apply:
        return report.note("plan only: nothing changed; run with -p apply=true to remove what the plan shows.")
    if p.errors:
        return report.note("Not applied: the policy does not fit the database (see the plan); nothing changed.")
    if not result.applied:
        return report.stack(report.heading("Refused", element_id="retention-apply"), report.note(result.refused or ""))
    rows = [
        {
            "table": a.table,
            "action": a.action.replace("_", " "),
            "rows planned": a.planned_rows,
            "rows removed": a.removed_rows,
            "partitions planned": len(a.planned_partitions) if a.action == "drop_partitions" else None,
            "partitions dropped": ", ".join(a.dropped),
            "size before": human_bytes(a.bytes_before),
            "size after": human_bytes(a.bytes_after),
            "maintenance": a.maintenance,
            "status": a.status,
            "note": a.note,
        }
        for a in result.applied
    ]
    parts = [
        report.table(
            rows,
            caption=f"Applied in {result.seconds:.1f}s (each rule in one transaction)",
            status_column="status",
            element_id="retention-apply",
        )
    ]
    if result.refused:
        parts.append(report.note(result.refused))
    forgotten = [
        {"dataset": ds, "partition": part, "step": step, "table": a.table}
        for a in result.applied
        for ds, part, step in a.ledger_removed
    ]
    if forgotten:
        parts.append(
            report.table(
                forgotten,
                caption="Ledger entries removed with their partitions: a later load of these loads them again",
            )
        )
    if any(a.maintenance == "VACUUM ANALYZE" for a in result.applied):
        parts.append(
            report.note(
                "VACUUM makes the space of deleted rows reusable by the table; the file shrinks only where "
                "whole pages at its end became empty. Dropped partitions return their space at once."
            )
        )
    return report.stack(*parts)


def show_buckets(plan_or_result):
    """The lifecycle rules of the lake's and archive's buckets: set, to set, or not applicable."""
    from opsbook import report

    plan = plan_or_result.plan if isinstance(plan_or_result, Result) else plan_or_result
    rows = [
        {
            "bucket": f"gs://{b.bucket}" if b.bucket else b.root,
            "prefix": b.prefix,
            "action": b.rule.action.replace("_", " ") + (f" {b.rule.storage_class}" if b.rule.storage_class else ""),
            "age (days)": b.rule.age_days,
            "objects already that old": b.objects if b.bucket else None,
            "bytes": human_bytes(b.bytes) if b.bucket else "",
            "status": b.status,
            "note": b.note,
        }
        for b in plan.buckets
    ]
    return report.table(
        rows,
        caption="Bucket lifecycle rules (enforced by GCS by each object's age once set; set with apply=true)",
        status_column="status",
        element_id="retention-buckets",
    )
