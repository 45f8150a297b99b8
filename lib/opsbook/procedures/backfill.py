"""Backfill a window of years: each year (partition) runs its steps, load then aggregate.

One backfill per dataset at a time (a second one exits 4 at once, naming the holder). The
partition ledger records every step of every year: ``resume=true`` skips years whose steps are
done with the same parameters and inputs, ``only_failed=true`` runs only failed and interrupted
ones, ``force=true`` redoes all. A run killed outright leaves entries 'running'; the next
backfill marks them interrupted. Years run one after another, on a local process pool
(``workers=N``), or on a Dask cluster (``executor=dask://host:port``); one failing year does
not stop the others unless ``fail_fast=true``. The work is :mod:`opsbook.toronto.backfill`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from opsbook import standins
from opsbook.errors import PartitionsFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.toronto.backfill import STEPS  # light: the domain module loads the history lazily
from opsbook.windows import Years, format_years, names

if TYPE_CHECKING:
    from opsbook.history.ledger import Entry
    from opsbook.toronto.backfill import PartitionOutcome, Started, YearPlan

SOURCE_KIND = "toronto_parking_tickets"
CAMERAS_KIND = "toronto_camera_charges"


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``backfill``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="dataset spec in params/datasets/")
    source: standins.source_field(SOURCE_KIND) = Field(
        standins.DEFAULT_SOURCE, description="folder or gs:// prefix with the City's files, or a stand-in source"
    )
    window: Years = Field("2011-2022", description="years to backfill: 2017, 2011-2022, 2011,2015-2016 or latest")
    steps: names(STEPS, "step") = Field("load,aggregate", description="steps per year, in order: load, aggregate")
    resume: bool = Field(False, description="skip years whose steps are done with the same parameters and inputs")
    only_failed: bool = Field(False, description="run only the years with a failed or interrupted step")
    force: bool = Field(False, description="redo every year, unchanged ones too")
    workers: int = Field(1, ge=1, le=32, description="years run at once on a local process pool")
    executor: str = Field("", description="empty: this machine; dask://host:port: a Dask scheduler")
    fail_fast: bool = Field(False, description="stop starting years after the first failure")
    cameras: standins.source_field(CAMERAS_KIND, optional=True) = Field(
        standins.DEFAULT_SOURCE,
        description='camera charges for the aggregate step, as in aggregate; "" skips the cameras',
    )
    max_rejected_ratio: float = Field(0.01, ge=0, le=1, description="as in load")
    max_shrink_ratio: float = Field(0.10, ge=0, le=1, description="as in load")
    allow_shrink: bool = Field(False, description="as in load: replace years with markedly fewer rows")

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        if value and not (value.startswith("dask://") and ":" in value.removeprefix("dask://")):
            raise ValueError(f"{value!r}: give dask://host:port, or leave it empty to run here")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> Params:
        chosen = [n for n in ("resume", "only_failed", "force") if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} contradict each other: choose one")
        return self

    @property
    def mode(self) -> str:
        return next((n for n in ("resume", "only_failed", "force") if getattr(self, n)), "all")


def locks(params: Params) -> list[str]:
    """The runner probes the dataset's backfill lock before it starts a kernel: a second
    backfill exits 4 at once."""
    from opsbook.toronto.backfill import lock_key

    return [lock_key(params.dataset)]


def plan(ctx: RunContext) -> Started:
    """Take the dataset's lock (held until :func:`run` returns), mark the partitions a dead run
    left 'running' as interrupted, and decide for each year whether it runs."""
    from opsbook.toronto import backfill

    params: Params = ctx.params
    load = "load" in params.steps
    aggregate = "aggregate" in params.steps and params.cameras
    hint = list(params.window) if params.window.values else None
    request = backfill.Request(
        dataset=params.dataset,
        window=params.window,
        steps=params.steps,
        mode=params.mode,
        source=standins.resolve(SOURCE_KIND, params.source, years=hint) if load else None,
        source_label=params.source,
        cameras=standins.resolve(CAMERAS_KIND, params.cameras) if aggregate else None,
        max_rejected_ratio=params.max_rejected_ratio,
        max_shrink_ratio=params.max_shrink_ratio,
        allow_shrink=params.allow_shrink,
    )
    return backfill.start(request, ctx.run_id)


def run(ctx: RunContext, plan: Started) -> Result:
    """Run the planned partitions; the dataset's lock is released at the end, however it ends."""
    from opsbook.toronto import backfill

    params: Params = ctx.params
    outcomes, executor, seconds = backfill.run_partitions(
        plan,
        executor=params.executor,
        workers=params.workers,
        fail_fast=params.fail_fast,
        progress=ctx.progress("Partitions", total=len(plan.tasks)),
    )
    return Result(params, plan.run_id, plan.years, outcomes, plan.interrupted, seconds, executor)


@dataclass
class Result:
    params: Params
    run_id: str
    years: list[YearPlan]
    outcomes: list[PartitionOutcome]
    interrupted: list[Entry]
    seconds: float
    executor: str

    @property
    def failed(self) -> list[PartitionOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def not_started(self) -> list[int]:
        ran = {o.year for o in self.outcomes}
        return [y.year for y in self.years if y.action == "run" and y.year not in ran]

    def rerun_command(self) -> str:
        """The command that reruns only the failed and not started years, with this run's inputs."""
        p = self.params
        years = sorted({o.year for o in self.failed} | set(self.not_started))
        values: dict[str, Any] = {
            "dataset": p.dataset,
            "source": p.source,
            "window": format_years(years),
            "steps": ",".join(p.steps),
        }
        defaults = Params.model_fields
        for name in ("cameras", "max_rejected_ratio", "max_shrink_ratio", "allow_shrink"):
            if getattr(p, name) != defaults[name].default:
                values[name] = getattr(p, name)
        values["only_failed"] = "true"
        values.update(standins.flags(p))
        return "python run_notebook.py backfill " + " ".join(
            f"-p {shlex.quote(f'{name}={value}')}" for name, value in values.items()
        )

    def verdict(self) -> Verdict:
        skipped = [y for y in self.years if y.action == "skip"]
        rows = sum(o.rows for o in self.outcomes)
        figures = {
            "partitions": len(self.years),
            "ran": len(self.outcomes),
            "skipped": len(skipped),
            "failed": len(self.failed),
            "interrupted before": len(self.interrupted),
            "rows": rows,
        }
        if not self.outcomes and not self.not_started:
            summary = (
                f"nothing to do: all {len(self.years)} partitions already done"
                if self.params.resume
                else f"nothing to do: no partition of {self.params.window} matched"
            )
            return Verdict("pass", summary, figures, rows_out=0)
        summary = (
            f"{len(self.outcomes)} of {len(self.years)} partitions ran ({len(skipped)} skipped), "
            f"{rows:,} rows, {self.seconds:.1f}s on {self.executor}"
        )
        if self.failed or self.not_started:
            detail = "; ".join(f"{o.year} {shorten(o.error or 'failed', 300)}" for o in self.failed[:3])
            summary = (
                f"{len(self.failed)} partition(s) failed"
                + (f": {detail}" if detail else "")
                + (f"; {len(self.not_started)} not started (fail_fast)" if self.not_started else "")
                + f". {summary}. Rerun only them: {self.rerun_command()}"
            )
            return Verdict.failed(summary, figures, "backfill-failures", PartitionsFailed, rows_out=rows)
        return Verdict("pass", summary, figures, rows_out=rows)


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Started):
    """Each year: runs or is skipped, and why; the partitions a dead run left behind."""
    from opsbook import report

    rows = [{"year": y.year, "action": y.action, "why": y.reason} for y in plan.years]
    parts = [
        report.table(
            rows,
            caption=f"Plan: {sum(y.action == 'run' for y in plan.years)} of {len(rows)} "
            f"partitions to run, steps {','.join(plan.request.steps)}",
            element_id="backfill-plan",
        )
    ]
    if plan.interrupted:
        parts.append(
            report.table(
                [
                    {"partition": e.partition, "step": e.step, "run": e.run_id, "started": e.started_at}
                    for e in plan.interrupted
                ],
                caption="Left 'running' by a run that died: marked interrupted",
                element_id="backfill-interrupted",
            )
        )
    return report.stack(*parts)


def show_partitions(result: Result):
    """Each year: its status, each step's status, rows, time and the worker it ran on."""
    from opsbook import report

    rows = []
    for y in result.years:
        outcome = next((o for o in result.outcomes if o.year == y.year), None)
        row: dict[str, Any] = {
            "year": y.year,
            "status": outcome.status if outcome else ("skipped" if y.action == "skip" else "not started"),
        }
        for step in result.params.steps:
            s = next((s for s in outcome.steps if s.step == step), None) if outcome else None
            row[step] = s.status if s else ""
        row["rows"] = outcome.rows if outcome else None
        row["seconds"] = round(outcome.seconds, 2) if outcome else None
        row["worker"] = outcome.worker if outcome else ""
        row["note"] = (outcome.error if outcome else y.reason) or ""
        rows.append(row)
    return report.table(
        rows, caption=f"Partitions ({result.executor})", status_column="status", element_id="backfill-partitions"
    )


def show_chart(result: Result):
    """Rows and time per partition."""
    from opsbook import report

    if not result.outcomes:
        return report.note("No partition ran.")
    import plotly.graph_objects as go

    colours = ["#2da44e" if o.status == "success" else "#cf222e" for o in result.outcomes]
    fig = go.Figure(
        go.Bar(
            x=[str(o.year) for o in result.outcomes],
            y=[o.rows for o in result.outcomes],
            marker_color=colours,
            text=[f"{o.seconds:.1f}s" for o in result.outcomes],
        )
    )
    fig.update_layout(
        title="Rows per partition (red: failed; labels: duration)",
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
    )
    return report.chart(fig, element_id="backfill-chart")


def show_failures(result: Result):
    """Each failed step with its error, and the command that reruns only those years."""
    from opsbook import report

    if not result.failed and not result.not_started:
        return report.note("No partition failed.")
    rows = [{"year": o.year, "step": s.step, "error": s.error} for o in result.failed for s in o.steps if s.error]
    rows += [{"year": y, "step": "", "error": "not started (fail_fast)"} for y in result.not_started]
    return report.stack(
        report.table(rows, caption="Failed partitions", element_id="backfill-failures"),
        report.note(f"Rerun only them: {result.rerun_command()}"),
    )
