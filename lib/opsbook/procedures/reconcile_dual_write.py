"""Check that the dual-write agrees: the lake against PostgreSQL, the archive against the ledger.

The steps, each a notebook cell an analyst can stop after:

1. :func:`compare`: rows per day, then the exact differing keys, each classified (missing in
   PostgreSQL, missing in the lake, value drift beyond a column's tolerance, timestamp shifted,
   duplicate key): pass 1 joins key and row hash, pass 2 compares the differing keys' values;
2. :func:`check_writes`: pending writes, and the archive's objects against the write ledger;
3. :func:`plan_repair`: what a repair from ``source_of_truth`` would change (nothing changes yet);
4. :func:`repair` (``repair=true`` only): retry the pending writes, then apply the plan;
5. :func:`check_again`: compare again after a repair. Exit 1 when differences remain.

``plan(ctx)`` is steps 1-3 and ``run(ctx, plan)`` steps 4-5. The work is
:mod:`opsbook.trafficsafety` (:mod:`.compare`, :mod:`.archive`, :mod:`.repair`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict
from opsbook.windows import Days, format_days

if TYPE_CHECKING:
    from opsbook.trafficsafety.compare import Comparison
    from opsbook.trafficsafety.repair import Repaired, RepairPlan

SAMPLES = 20
COLOURS = {
    "missing in postgres": "#cf222e",
    "missing in lake": "#bf8700",
    "value drift": "#8250df",
    "timestamp shifted": "#0969da",
    "duplicate key": "#57606a",
}


def _some_days(window: Days) -> Days:
    if not window:
        raise ValueError("give the days to compare, e.g. 2025-11-01..2025-11-07, 2025-11-03 or today-7..today-1")
    return window


class Params(ProcedureParams):
    """Parameters of ``reconcile_dual_write``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    window: Annotated[Days, AfterValidator(_some_days)] = Field(
        "2025-11-01..2025-11-07", description="UTC days to compare: 2025-11-01..2025-11-07, today-7..today-1"
    )
    repair: bool = Field(False, description="re-apply the source of truth to the differing keys, then check again")
    source_of_truth: Literal["lake", "postgres"] = Field("lake", description="which side a repair copies from")
    row_limit: int = Field(5_000_000, ge=0, description="above this many rows, compare bucketed checksums first")
    horizon_policy: str = Field(
        "",
        description="retention policy whose rule on the dataset's table says which days PostgreSQL keeps: "
        "days of the window before its cutoff are left out (the runbook's: trafficsafety)",
    )

    @field_validator("horizon_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from opsbook.errors import UsageError
        from opsbook.ops.policy import load_policy

        if value.strip():
            try:
                load_policy(value.strip())
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value.strip()


@dataclass(frozen=True)
class Horizon:
    """The days of the window both sides are meant to hold, and those left out and why."""

    window: Days | None  # None: no day of the window is within the horizon
    left_out: list  # days of the window before the cutoff
    reason: str = ""

    @classmethod
    def of(cls, params: Params, today: dt.date | None = None) -> Horizon:
        from opsbook import datasets
        from opsbook.ops.policy import load_policy
        from opsbook.ops.retention import cutoff_of

        window = params.window
        if not params.horizon_policy:
            return cls(window, [])
        table = datasets.get(params.dataset).table
        policy, _ = load_policy(params.horizon_policy)
        rule = next((r for r in policy.rules if r.table == table and r.keep_days), None)
        if rule is None:
            return cls(window, [], f"policy {policy.name} removes nothing by age from {table}")
        cutoff = cutoff_of(today or dt.datetime.now(dt.UTC).date(), rule.keep_days, "date")
        left_out = [d for d in window.days if d < cutoff]
        reason = (
            f"{table} keeps {rule.keep_days} day(s) (policy {policy.name}): rows before {cutoff} are purged "
            "on purpose, so those days are not compared"
        )
        kept = Days(max(window.first, cutoff), window.last) if window.last >= cutoff else None
        return cls(kept, left_out, reason)


def locks(params: Params) -> list[str]:
    """A repair writes the dual-write's targets and ledger: it waits for no dual_write, it is refused."""
    from opsbook.trafficsafety import write_lock

    return [write_lock(params.dataset)] if params.repair else []


@dataclass
class Writes:
    """Pending writes and archive findings."""

    pending: list[dict[str, Any]]
    archive: list[dict[str, Any]]


@dataclass
class Plan:
    params: Params
    comparison: Comparison
    writes: Writes
    repair: RepairPlan  # what a repair would change; applied only with repair=true
    horizon: Horizon | None = None  # the days compared and those left out


# --- the steps -------------------------------------------------------------------------------


def _horizon(ctx: RunContext) -> Horizon:
    """The run's horizon, as of the day the run started (UTC): a run that passes midnight
    keeps one cutoff for its comparison and its repair."""
    return Horizon.of(ctx.params, today=ctx.started.astimezone(dt.UTC).date())


def compare(ctx: RunContext) -> Comparison:
    """Step 1: the lake against PostgreSQL over the window (bucketed checksums past ``row_limit``)."""
    from opsbook import datasets
    from opsbook.trafficsafety import compare as comparing

    params: Params = ctx.params
    horizon = _horizon(ctx)
    spec = datasets.get(params.dataset)
    if horizon.window is None:  # every day is before the horizon: an empty comparison says so
        return comparing.Comparison(days=[], lake_rows={}, postgres_rows={}, differences=[], method="nothing compared")
    return comparing.compare(spec, horizon.window, row_limit=params.row_limit)


def per_intersection(ctx: RunContext, comparison: Comparison) -> list[dict[str, Any]]:
    """The validation report's per-intersection statistics (Task 6.3): rows and the average
    combined index (EB) per intersection on each side over the days compared, within the
    column's tolerance. The row-by-row comparison above already names every differing key."""
    from opsbook import datasets
    from opsbook.trafficsafety import sides

    params: Params = ctx.params
    horizon = _horizon(ctx)
    if horizon.window is None:
        return []
    spec = datasets.get(params.dataset)
    return sides.per_intersection(spec, horizon.window, sides.lake_files(spec, horizon.window))


def check_writes(ctx: RunContext) -> Writes:
    """Step 2: the write ledger's pending writes, and the archive's objects against the ledger."""
    from opsbook import datasets
    from opsbook.stores import postgres
    from opsbook.trafficsafety import archive, dualwrite

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    with postgres.connection(autocommit=True, purpose="reconcile") as control:
        dualwrite.ensure_tables(control, spec)
        return Writes(dualwrite.pending_writes(control, spec), archive.findings(control, spec, params.window))


def plan_repair(ctx: RunContext, comparison: Comparison, writes: Writes) -> Plan:
    """Step 3: what a repair from the source of truth would change; nothing is changed."""
    from opsbook.trafficsafety import repair as repairing

    params: Params = ctx.params
    horizon = _horizon(ctx)
    # a repair covers the days compared only: never a day PostgreSQL purged on purpose
    window = horizon.window or Days()
    return Plan(params, comparison, writes, repairing.plan(comparison, window, params.source_of_truth), horizon)


def plan(ctx: RunContext) -> Plan:
    """Steps 1-3: compare, check the writes, plan the repair."""
    return plan_repair(ctx, compare(ctx), check_writes(ctx))


def repair(ctx: RunContext, plan: Plan) -> Repaired | None:
    """Step 4 (``repair=true``): retry the pending writes, then apply the repair (planned again
    when a retried write changed a side); None without ``repair``."""
    from opsbook import datasets
    from opsbook.trafficsafety import repair as repairing

    params: Params = ctx.params
    if not params.repair:
        return None
    spec = datasets.get(params.dataset)
    return repairing.run(spec, plan.repair, ctx.run_id, locks(params)[0], params.row_limit)


def check_again(ctx: RunContext, plan: Plan, repaired: Repaired | None) -> Result:
    """Step 5: after a repair, compare and check the writes again; else the plan's findings
    stand. The findings are written to the dataset's quality log."""
    if repaired is None:
        result = Result(plan, None, None, plan.writes)
    else:
        result = Result(plan, repaired, compare(ctx), check_writes(ctx))
    _log(ctx, result)
    return result


def _log(ctx: RunContext, result: Result) -> None:
    """One quality-log row per difference class found, for the pending writes and the archive."""
    from opsbook import datasets
    from opsbook.stores import postgres
    from opsbook.trafficsafety import schema

    spec = datasets.get(ctx.params.dataset)
    counts = result.final.counts()
    findings = [
        {
            "check_name": f"dual-write {klass}",
            "status": "fail" if counts.get(klass) else "pass",
            "observed": f"{counts.get(klass, 0)} key(s) over {ctx.params.window}",
        }
        for klass in ("missing in postgres", "missing in lake", "value drift", "timestamp shifted", "duplicate key")
    ]
    findings.append(
        {
            "check_name": "pending writes",
            "status": "fail" if result.pending else "pass",
            "observed": len(result.pending),
        }
    )
    findings.append(
        {"check_name": "archive against the ledger", "status": "fail" if result.archive else "pass",
         "observed": len(result.archive)}
    )  # fmt: skip
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        schema.ensure(conn, spec)
        schema.log_findings(conn, spec, ctx.run_id, "reconcile_dual_write", findings)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Steps 4-5: repair (with ``repair=true``) and check again."""
    return check_again(ctx, plan, repair(ctx, plan))


@dataclass
class Result:
    plan: Plan
    repaired: Repaired | None
    after: Comparison | None
    writes: Writes

    @property
    def before(self) -> Comparison:
        return self.plan.comparison

    @property
    def final(self) -> Comparison:
        return self.after or self.before

    @property
    def pending(self) -> list[dict[str, Any]]:
        return self.writes.pending

    @property
    def archive(self) -> list[dict[str, Any]]:
        return self.writes.archive

    def verdict(self) -> Verdict:
        params = self.plan.params
        counts = self.final.counts()
        remaining = len(self.final.differences)
        figures = {
            "differences": remaining,
            **{k: v for k, v in counts.items() if v},
            "pending writes": len(self.pending),
            "archive findings": len(self.archive),
            "rows compared": sum(self.final.lake_rows.values()) + sum(self.final.postgres_rows.values()),
        }
        repaired = ""
        if self.repaired is not None:
            done = ", ".join(f"{k} {v}" for k, v in self.repaired.done.items() if v) or "nothing to do"
            retried = f"{self.repaired.retried} pending batch(es) retried, " if self.repaired.retried else ""
            repaired = (
                f"{retried}repair from {params.source_of_truth} answered {self.repaired.plan.differences} "
                f"difference(s) ({done}); "
            )
        horizon = self.plan.horizon or Horizon(params.window, [])
        compared = horizon.window
        left_out = (
            f"; {len(horizon.left_out)} day(s) left out ({format_days(horizon.left_out)}): {horizon.reason}"
            if horizon.left_out
            else ""
        )
        if compared is None and not (self.pending or self.archive):
            return Verdict("warn", f"nothing compared{left_out}", figures, anchor="reconcile-days")
        if remaining or self.pending or self.archive:
            parts = [f"{v:,} {k}" for k, v in counts.items() if v]
            if self.pending:
                parts.append(f"{len(self.pending)} pending write(s)")
            if self.archive:
                parts.append(f"{len(self.archive)} archive finding(s)")
            hint = "" if params.repair else "; -p repair=true re-applies the source of truth and retries pending writes"
            summary = f"{repaired}the dual-write disagrees over {compared or params.window}: {', '.join(parts)}{hint}"
            summary += left_out
            return Verdict.failed(summary, figures, self._anchor(), CheckFailed)
        rows = sum(self.final.lake_rows.values())
        return Verdict(
            "pass",
            f"{repaired}lake and PostgreSQL agree over {compared}: {rows:,} rows, "
            f"{self.final.method}; archive complete{left_out}",
            figures,
        )

    def _anchor(self) -> str:
        """The report element that shows the first disagreement."""
        after = self.after is not None
        if self.final.differences:
            return "reconcile-after" if after else "reconcile-days"
        return ("pending-writes" if self.pending else "archive-findings") + ("-after" if after else "")


# --- presentation ----------------------------------------------------------------------------


def show_days(comparison: Comparison, element_id: str = "reconcile-days"):
    """Per day (UTC): rows on each side and the differences of each class."""
    from opsbook import report
    from opsbook.trafficsafety.compare import CLASSES

    per_day: dict = {d: {c: 0 for c in CLASSES} for d in comparison.days}
    for d in comparison.differences:
        per_day.setdefault(d["day"], {c: 0 for c in CLASSES})[d["class"]] += 1
    rows = []
    for day in comparison.days:
        found = sum(per_day[day].values())
        rows.append(
            {
                "day": day.isoformat(),
                "status": "pass" if not found else "fail",
                "lake rows": comparison.lake_rows.get(day, 0),
                "postgres rows": comparison.postgres_rows.get(day, 0),
                **per_day[day],
            }
        )
    caption = (
        f"per day (UTC): {comparison.method}, {comparison.lake_files} lake files, "
        f"{comparison.fetched_rows:,} rows compared row by row, {comparison.seconds:.1f}s"
    )
    return report.table(rows, caption=caption, status_column="status", element_id=element_id)


def show_chart(comparison: Comparison):
    """Differences by day and class, stacked."""
    import plotly.graph_objects as go

    from opsbook import report
    from opsbook.trafficsafety.compare import CLASSES

    days = [d.isoformat() for d in comparison.days]
    fig = go.Figure()
    for klass in CLASSES:
        counts = [
            sum(1 for d in comparison.differences if d["class"] == klass and d["day"].isoformat() == day)
            for day in days
        ]
        fig.add_bar(x=days, y=counts, name=klass, marker_color=COLOURS[klass])
    fig.update_layout(
        title="Differences by day and class",
        barmode="stack",
        height=340,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
        yaxis={"title": "keys"},
    )
    return report.chart(fig, element_id="reconcile-chart")


def show_samples(comparison: Comparison):
    """Up to 20 keys of each class, lake and PostgreSQL values side by side."""
    from opsbook import report
    from opsbook.trafficsafety.compare import CLASSES

    if not comparison.differences:
        return report.note("No difference: nothing to show.")
    parts = []
    for klass in CLASSES:
        found = [d for d in comparison.differences if d["class"] == klass]
        if not found:
            continue
        rows = []
        for d in found[:SAMPLES]:
            row = {"key": ", ".join(str(k) for k in d["key"]), "detail": d.get("detail", "")}
            if d.get("columns"):
                row["columns"] = ", ".join(d["columns"])
                for column in d["columns"][:3]:
                    row[f"lake {column}"] = d["lake"][column]
                    row[f"postgres {column}"] = d["postgres"][column]
            rows.append(row)
        parts.append(
            report.table(
                rows,
                caption=f"{klass}: {len(found):,} key(s), first {min(len(found), SAMPLES)}",
                element_id=f"class-{klass.replace(' ', '-')}",
            )
        )
    return report.stack(*parts)


def show_intersections(stats: list[dict[str, Any]]):
    """Rows and average index per intersection on each side (Task 6.3's statistics)."""
    from opsbook import report

    return report.table(
        stats,
        caption="Per intersection over the days compared: rows and average combined index (EB) on each side, "
        "within the column's tolerance",
        status_column="status",
        element_id="reconcile-intersections",
    )


def show_writes(writes: Writes, suffix: str = ""):
    """Pending writes, and the archive against the write ledger."""
    from opsbook import report

    return report.stack(
        report.table(writes.pending, caption="Pending writes (opsbook.writes)", element_id=f"pending-writes{suffix}")
        if writes.pending
        else report.note("No pending write."),
        report.table(writes.archive, caption="Archive against the write ledger", element_id=f"archive-findings{suffix}")
        if writes.archive
        else report.note("Every archive object the ledger records is there, and no other."),
    )


def show_repair_plan(plan: Plan):
    """What a repair would change, and whether this run applies it."""
    from opsbook import report

    params = plan.params
    planned = plan.repair
    retry = f" {len(plan.writes.pending)} pending write(s) are retried first." if plan.writes.pending else ""
    if planned.empty and not plan.writes.pending:
        return report.note("Nothing to repair: the lake and PostgreSQL agree and no write is pending.")
    if not params.repair:
        what = "With -p repair=true, this run would make these changes." + retry
    else:
        what = f"repair=true: these changes are made next, from the {params.source_of_truth}.{retry}" + (
            " The retried writes change a side, so the repair is planned again after them." if retry else ""
        )
    if planned.empty:
        return report.note(what)
    return report.stack(
        report.note(what),
        report.table(
            planned.actions(),
            caption=f"Repair from the {params.source_of_truth}: {planned.differences} difference(s), the other "
            "keys and days untouched",
            element_id="repair-plan",
        ),
    )


def show_repair(repaired: Repaired | None):
    """What the repair did."""
    from opsbook import report

    if repaired is None:
        return report.note("repair=false: nothing was changed.")
    rows = [{"change": k, "count": v} for k, v in repaired.done.items()]
    rows.insert(0, {"change": "pending batches retried", "count": repaired.retried})
    caption = "Repair" + (" (planned again after the retried writes)" if repaired.replanned else "")
    return report.table(rows, caption=caption, element_id="repair")


def show_after(result: Result):
    """After a repair: the comparison again, with what is still pending; without one, a note."""
    from opsbook import report

    if result.after is None:
        return report.note("No repair was made: the comparison of step 1 is the result.")
    return report.stack(show_days(result.after, "reconcile-after"), show_writes(result.writes, "-after"))
