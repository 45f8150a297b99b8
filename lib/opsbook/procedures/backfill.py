"""Backfill a window of years: each year (partition) runs its steps (load, then aggregate).

- One backfill per dataset at a time: a PostgreSQL advisory lock, held for the whole run; a
  second one exits 4 at once, naming the holder (run id, host, pid, start).
- The partition ledger (``opsbook.partitions``) records every step of every partition:
  parameters hash, input fingerprint, status, rows, run id, timings, heartbeat.
- ``resume=true`` skips partitions whose steps are all done with the same parameters and
  inputs; ``only_failed=true`` runs only failed and interrupted ones; ``force=true`` redoes all.
- A run killed outright (kill -9) leaves its entries 'running'; each step holds a per-partition
  lock while it works, so the next backfill finds entries whose lock is free and marks them
  'interrupted' before it plans. Every step is transactional, so redoing one gives exactly the
  rows of an uninterrupted run.
- Partitions run one after another, on a local process pool (``workers=N``), or as tasks on a
  Dask cluster (``executor=dask://host:port``). One failing partition does not stop the others
  unless ``fail_fast=true``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator, model_validator

from opsbook import runlog
from opsbook.errors import LockHeld, OpsbookError
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.windows import Years, format_years, known_subset, year_list
from opsbook.procedures import aggregate, load
from opsbook.run.verdict import Verdict

NOTEBOOK = "backfill.ipynb"
SUMMARY = "Load and aggregate a window of years: partition ledger, resume, lock, parallel workers or Dask"
STEPS = ("load", "aggregate")


class Params(ProcedureParams):
    """Parameters of ``backfill``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="dataset spec in params/datasets/")
    source: str = Field("demo", description='folder or gs:// prefix with the files; "demo" builds demo files')
    window: Years = Field("2011-2022", description="years to backfill: 2017, 2011-2022 or 2011,2015-2016")
    steps: str = Field("load,aggregate", description="steps per year, in order: load, aggregate")
    resume: bool = Field(False, description="skip years whose steps are done with the same parameters and inputs")
    only_failed: bool = Field(False, description="run only the years with a failed or interrupted step")
    force: bool = Field(False, description="redo every year, unchanged ones too")
    workers: int = Field(1, ge=1, le=32, description="years run at once on a local process pool")
    executor: str = Field("", description="empty: this machine; dask://host:port: a Dask scheduler")
    fail_fast: bool = Field(False, description="stop starting years after the first failure")
    cameras: str = Field("demo", description="camera charges folder for the aggregate step (as in aggregate)")
    max_rejected_ratio: float = Field(0.01, ge=0, le=1, description="as in load")

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, value: str) -> str:
        return known_subset(value, STEPS, "step")  # always in dependency order

    _source = field_validator("source")(lambda v: load.resolve_source(v))
    _cameras = field_validator("cameras")(lambda v: aggregate.resolve_cameras(v))

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
    def step_list(self) -> list[str]:
        return self.steps.split(",")


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel, so a second backfill exits 4 at once."""
    return [lock_key(params.dataset)]


def lock_key(dataset: str) -> str:
    return f"opsbook.backfill:{dataset}"


# --- tasks (run here, in a pool worker, or on a Dask worker) ----------------------------------


@dataclass
class StepOutcome:
    step: str
    status: str  # loaded | built | unchanged | failed | rejected-too-many | not run
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PartitionTask:
    dataset: str
    year: int
    steps: list[str]
    run_id: str
    load_plan: Any  # load.Plan, when "load" is a step
    cameras: dict
    force: bool


@dataclass
class PartitionOutcome:
    year: int
    status: str  # success | failed
    steps: list[StepOutcome] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = ""

    @property
    def rows(self) -> int:
        return next((s.rows for s in self.steps if s.step == "load" and s.status != "not run"), 0) or sum(
            s.rows for s in self.steps
        )

    @property
    def error(self) -> str | None:
        return next((f"{s.step}: {s.error}" for s in self.steps if s.error), None)


def run_partition(task: PartitionTask) -> PartitionOutcome:
    """Every step of one year, in order; a failed step stops the later ones for that year."""
    import socket

    from opsbook.stores import postgres

    t0 = time.monotonic()
    outcome = PartitionOutcome(task.year, "success", worker=f"{socket.gethostname()}:{os.getpid()}")
    with postgres.connection(autocommit=True, purpose=f"backfill {task.run_id} {task.year}") as control:
        for step in task.steps:
            if outcome.status == "failed":
                outcome.steps.append(StepOutcome(step, "not run", error=None))
                continue
            try:
                if step == "load":
                    files = task.load_plan.found.by_year[task.year]
                    r = load.load_year(control, task.load_plan, task.year, files, task.run_id)
                    done = StepOutcome(step, r.status, r.rows, r.seconds, r.error)
                else:
                    r = aggregate.build_year(control, task.dataset, task.year, task.cameras, task.run_id, task.force)
                    done = StepOutcome(step, r.status, r.rows, r.seconds, r.error)
            except LockHeld as exc:
                done = StepOutcome(step, "failed", error=str(exc))
            except Exception as exc:  # any other failure ends this year, not the backfill
                done = StepOutcome(step, "failed", error=f"{type(exc).__name__}: {exc}")
            outcome.steps.append(done)
            if done.status in ("failed", "rejected-too-many"):
                outcome.status = "failed"
    outcome.seconds = time.monotonic() - t0
    return outcome


# --- plan ------------------------------------------------------------------------------------


@dataclass
class YearPlan:
    year: int
    action: str  # run | skip
    reason: str


@dataclass
class Backfill:
    """A started backfill: it holds the dataset's lock until :func:`run` returns."""

    params: Params
    run_id: str
    control: Any  # the connection holding the lock
    years: list[YearPlan]
    interrupted: list[runlog.LedgerEntry]
    tasks: list[PartitionTask]
    lock_key: str
    started: float = field(default_factory=time.monotonic)


def start(params: Params, run_id: str) -> Backfill:
    """Take the dataset's lock, mark dead runs' partitions interrupted, and plan each year."""
    from opsbook.stores import postgres

    control = postgres.connect(autocommit=True, purpose=f"backfill {run_id}")
    key = lock_key(params.dataset)
    try:
        runlog.ensure_schema(control)
        runlog.try_lock(control, key, f"run {run_id}")
        interrupted = runlog.recover_interrupted(control, params.dataset)
        years = year_list(params.window)
        load_plan = None
        if "load" in params.step_list:
            load_plan = load.plan(
                load.Params(
                    dataset=params.dataset,
                    source=params.source,
                    years=params.window,
                    force=params.force,
                    max_rejected_ratio=params.max_rejected_ratio,
                )
            )
            load.prepare(control, load_plan.spec)
        cameras: dict = {}
        if "aggregate" in params.step_list:
            folder = aggregate.camera_folder(
                aggregate.Params(dataset=params.dataset, years=params.window, cameras=params.cameras)
            )
            cameras = aggregate.prepare(control, folder)
        plans, tasks = [], []
        for year in years:
            action, reason = _decide(control, params, year, load_plan, cameras)
            plans.append(YearPlan(year, action, reason))
            if action == "run":
                tasks.append(
                    PartitionTask(params.dataset, year, params.step_list, run_id, load_plan, cameras, params.force)
                )
        return Backfill(params, run_id, control, plans, interrupted, tasks, key)
    except BaseException:
        control.close()  # releases the lock
        raise


def _decide(control, params: Params, year: int, load_plan, cameras: dict) -> tuple[str, str]:
    entries = {s: runlog.ledger_get(control, params.dataset, str(year), s) for s in params.step_list}
    if params.force:
        return "run", "force"
    if params.only_failed:
        bad = [f"{s} {e.status}" for s, e in entries.items() if e and e.status in ("failed", "interrupted")]
        return ("run", ", ".join(bad)) if bad else ("skip", "no failed or interrupted step")
    if params.resume:
        pending = [s for s in params.step_list if not _done(control, params, year, s, entries[s], load_plan, cameras)]
        if not pending:
            runs = sorted({e.run_id for e in entries.values() if e})
            return "skip", f"already done (run {', '.join(runs)})"
        return "run", f"{', '.join(pending)} not done"
    return "run", "every year of the window (unchanged steps verify and skip themselves)"


def _done(control, params: Params, year: int, step: str, entry, load_plan, cameras: dict) -> bool:
    """Done = the ledger says success, with the parameters and inputs this run would use."""

    if entry is None or entry.status != "success":
        return False
    if step == "load":
        return entry.params_hash == load.params_hash(load_plan.spec) and entry.input_fingerprint == (
            load.input_fingerprint(load_plan.found.by_year[year])
        )
    return entry.input_fingerprint == aggregate.year_fingerprint(control, params.dataset, year, cameras)


# --- run -------------------------------------------------------------------------------------


@dataclass
class Result:
    params: Params
    run_id: str
    years: list[YearPlan]
    outcomes: list[PartitionOutcome]
    interrupted: list[runlog.LedgerEntry]
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
        years = sorted({o.year for o in self.failed} | set(self.not_started))
        p = self.params
        return (
            f"python run_notebook.py backfill -p dataset={p.dataset} -p source={p.source} "
            f"-p window={format_years(years)} -p steps={p.steps} -p only_failed=true"
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
                else (f"nothing to do: no partition of {self.params.window} matched")
            )
            return Verdict("pass", summary, figures, rows_out=0)
        summary = (
            f"{len(self.outcomes)} of {len(self.years)} partitions ran ({len(skipped)} skipped), "
            f"{rows:,} rows, {self.seconds:.1f}s on {self.executor}"
        )
        if self.failed or self.not_started:
            detail = "; ".join(f"{o.year} {o.error}" for o in self.failed[:3])
            summary = (
                f"{len(self.failed)} partition(s) failed"
                + (f": {detail}" if detail else "")
                + (f"; {len(self.not_started)} not started (fail_fast)" if self.not_started else "")
                + f". {summary}. Rerun only them: {self.rerun_command()}"
            )
            return Verdict.failed(summary, figures, "backfill-failures", PartitionsFailed, rows_out=rows)
        return Verdict("pass", summary, figures, rows_out=rows)


def run(backfill: Backfill, progress: Callable[..., None] | None = None) -> Result:
    """Run the planned partitions; release the dataset's lock at the end, however it ends."""
    from opsbook.run import progress as progress_lines

    notify = progress or (lambda message, transient=False: None)
    total = len(backfill.tasks)
    outcomes: list[PartitionOutcome] = []
    t0 = time.monotonic()

    def done(outcome: PartitionOutcome) -> None:
        outcomes.append(outcome)
        elapsed = time.monotonic() - t0
        line = (
            f"{len(outcomes)}/{total} {outcome.year} {outcome.status}: {outcome.rows:,} rows, "
            f"{outcome.seconds:.1f}s; elapsed {elapsed:.0f}s, ETA {progress_lines.eta(len(outcomes), total, elapsed)}"
            + (f" ({outcome.error})" if outcome.error else "")
        )
        progress_lines.emit(line)
        notify(line)

    try:
        executor = _run_tasks(backfill, done)
    finally:
        runlog.unlock(backfill.control, backfill.lock_key)
        backfill.control.close()
    outcomes.sort(key=lambda o: o.year)
    return Result(
        backfill.params,
        backfill.run_id,
        backfill.years,
        outcomes,
        backfill.interrupted,
        time.monotonic() - t0,
        executor,
    )


def _run_tasks(backfill: Backfill, done: Callable[[PartitionOutcome], None]) -> str:
    params, tasks = backfill.params, backfill.tasks
    if params.executor:
        return _run_on_dask(params, tasks, done)
    if params.workers > 1 and len(tasks) > 1:
        return _run_on_pool(params, tasks, done)
    for task in tasks:
        outcome = run_partition(task)
        done(outcome)
        if outcome.status == "failed" and params.fail_fast:
            break
    return "this process"


def _run_on_pool(params: Params, tasks: list[PartitionTask], done) -> str:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: the kernel has threads, and a forked copy of a lock held by one would hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=params.workers, mp_context=context, initializer=runlog.watch_coordinator, initargs=(os.getpid(),)
    ) as pool:
        pending = {pool.submit(run_partition, task): task for task in tasks}
        stop = False
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task = pending.pop(future)
                outcome = _outcome_of(future, task)
                done(outcome)
                stop = stop or (outcome.status == "failed" and params.fail_fast)
            if stop:
                for future in pending:
                    future.cancel()
                pending = {f: t for f, t in pending.items() if not f.cancelled()}
    return f"a local pool of {params.workers} processes"


def _run_on_dask(params: Params, tasks: list[PartitionTask], done) -> str:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise OpsbookError(
            "executor=dask://... needs the distributed package: pip install 'dask[distributed]'"
        ) from exc
    address = "tcp://" + params.executor.removeprefix("dask://")
    try:
        client = Client(address, timeout="15s")
    except OSError as exc:
        raise OpsbookError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = [
            client.submit(run_partition, task, pure=False, key=f"opsbook-{task.run_id}-{task.year}") for task in tasks
        ]
        index = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        batch = as_completed(futures)
        for future in batch:
            outcome = _outcome_of(future, index[future.key])
            done(outcome)
            if outcome.status == "failed" and params.fail_fast:
                for other in futures:
                    if not other.done():
                        other.cancel()
                break
    return f"Dask at {address}"


def _outcome_of(future, task: PartitionTask) -> PartitionOutcome:
    try:
        return future.result()
    except Exception as exc:  # the worker died, or the task could not be shipped
        return PartitionOutcome(
            task.year, "failed", [StepOutcome(task.steps[0], "failed", error=f"{type(exc).__name__}: {exc}")]
        )


# --- presentation ----------------------------------------------------------------------------


def show_plan(backfill: Backfill):
    from opsbook import report

    rows = [{"year": y.year, "action": y.action, "why": y.reason} for y in backfill.years]
    parts = [
        report.table(
            rows,
            caption=f"Plan: {sum(y.action == 'run' for y in backfill.years)} of {len(rows)} "
            f"partitions to run, steps {backfill.params.steps}",
            element_id="backfill-plan",
        )
    ]
    if backfill.interrupted:
        parts.append(
            report.table(
                [
                    {"partition": e.partition, "step": e.step, "run": e.run_id, "started": e.started_at}
                    for e in backfill.interrupted
                ],
                caption="Left 'running' by a run that died: marked interrupted",
                element_id="backfill-interrupted",
            )
        )
    return report.stack(*parts)


def show_partitions(result: Result):
    from opsbook import report

    rows = []
    for y in result.years:
        outcome = next((o for o in result.outcomes if o.year == y.year), None)
        row: dict[str, Any] = {
            "year": y.year,
            "status": outcome.status if outcome else ("skipped" if y.action == "skip" else "not started"),
        }
        for step in result.params.step_list:
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
    from opsbook import report

    if not result.failed and not result.not_started:
        return report.note("No partition failed.")
    rows = [{"year": o.year, "step": s.step, "error": s.error} for o in result.failed for s in o.steps if s.error]
    rows += [{"year": y, "step": "", "error": "not started (fail_fast)"} for y in result.not_started]
    return report.stack(
        report.table(rows, caption="Failed partitions", element_id="backfill-failures"),
        report.note(f"Rerun only them: {result.rerun_command()}"),
    )
