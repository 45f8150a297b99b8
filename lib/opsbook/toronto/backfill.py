"""Toronto backfill: each year (partition) runs its steps, load then aggregate, under one lock.

- One backfill per dataset at a time: the advisory lock ``opsbook.backfill:<dataset>``, held
  from :func:`start` until :func:`run_partitions` returns.
- The partition ledger (``opsbook.partitions``) records every step of every partition; a run
  killed outright leaves entries 'running' whose partition lock is free: :func:`start` marks
  them 'interrupted' before it decides what to run.
- :func:`decide`: ``resume`` skips partitions whose steps are all done with the same parameters
  and inputs; ``only_failed`` runs only failed and interrupted ones; ``force`` redoes all.
- Partitions run here one after another, on a local process pool, or as tasks on a Dask
  cluster. Every step is transactional (:func:`opsbook.toronto.tickets.load_year`,
  :func:`opsbook.toronto.yearly.build_year`), so redoing one gives exactly the rows of an
  uninterrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opsbook.errors import LockHeld, OpsbookError, UsageError

if TYPE_CHECKING:
    from opsbook.history import ledger

# the procedure imports STEPS to validate its parameters: nothing heavy at module level
# (psycopg and the history load inside the functions)

STEPS = ("load", "aggregate")  # in dependency order
MODES = ("all", "resume", "only_failed", "force")


def lock_key(dataset: str) -> str:
    """The lock one backfill of ``dataset`` holds for its whole run."""
    from opsbook.history import locks

    return locks.key("backfill", dataset)


# --- tasks (run here, in a pool worker, or on a Dask worker) ----------------------------------


@dataclass
class StepOutcome:
    step: str
    status: str  # loaded | built | unchanged | failed | rejected-too-many | refused | not run
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PartitionTask:
    """One year's steps; picklable, so pool and Dask workers get one."""

    dataset: str
    year: int
    steps: tuple[str, ...]
    run_id: str
    load_job: Any  # opsbook.toronto.tickets.LoadJob, when "load" is a step
    tickets_table: str
    cameras: dict[str, str]  # the cameras' fingerprint for the aggregate step
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
    from opsbook.toronto import tickets, yearly

    t0 = time.monotonic()
    outcome = PartitionOutcome(task.year, "success", worker=f"{socket.gethostname()}:{os.getpid()}")
    with postgres.connection(autocommit=True, purpose=f"backfill {task.run_id} {task.year}") as control:
        for step in task.steps:
            if outcome.status == "failed":
                outcome.steps.append(StepOutcome(step, "not run"))
                continue
            try:
                if step == "load":
                    r = tickets.load_year(control, task.load_job, task.year, task.run_id)
                else:
                    r = yearly.build_year(
                        control, task.dataset, task.tickets_table, task.year, task.cameras, task.run_id, task.force
                    )
                done = StepOutcome(step, r.status, r.rows, r.seconds, r.error)
            except LockHeld as exc:
                done = StepOutcome(step, "failed", error=str(exc))
            except Exception as exc:  # any other failure ends this year, not the backfill
                done = StepOutcome(step, "failed", error=f"{type(exc).__name__}: {exc}")
            outcome.steps.append(done)
            if done.status in ("failed", "rejected-too-many", "refused"):
                outcome.status = "failed"
    outcome.seconds = time.monotonic() - t0
    return outcome


# --- start: lock, recover, decide -------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a backfill is asked to do (the procedure builds it from its parameters)."""

    dataset: str
    window: Any  # opsbook.windows.Years
    steps: tuple[str, ...]
    mode: str  # one of MODES
    source: str | None  # where the load step reads (resolved), None without a load step
    source_label: str  # what the ledger records as the load's origin (the parameter as given)
    cameras: str | None  # where the aggregate step reads the camera charges (None: no cameras)
    max_rejected_ratio: float
    max_shrink_ratio: float = 0.10
    allow_shrink: bool = False

    @property
    def force(self) -> bool:
        return self.mode == "force"


@dataclass
class YearPlan:
    year: int
    action: str  # run | skip
    reason: str


@dataclass
class Started:
    """A started backfill: it holds the dataset's lock until :func:`run_partitions` returns."""

    request: Request
    run_id: str
    control: Any  # the connection holding the lock
    years: list[YearPlan]
    interrupted: list[ledger.Entry]
    tasks: list[PartitionTask]
    lock: str

    def release(self) -> None:
        from opsbook.history import locks
        from opsbook.stores import postgres

        try:
            locks.unlock(self.control, self.lock)
        finally:
            postgres.close(self.control)


def start(request: Request, run_id: str) -> Started:
    """Take the dataset's lock (LockHeld names the holder), mark dead runs' partitions
    interrupted, prepare each step's tables, and decide for each year whether it runs."""
    from opsbook import datasets
    from opsbook.history import ledger, locks, schema
    from opsbook.stores import postgres
    from opsbook.toronto import tickets, yearly

    control = postgres.connect(autocommit=True, purpose=f"backfill {run_id}")
    key = lock_key(request.dataset)
    try:
        schema.ensure_schema(control)
        locks.try_lock(control, key, f"run {run_id}")
        interrupted = ledger.recover_interrupted(control, request.dataset)
        spec = datasets.get(request.dataset)
        job = None
        if "load" in request.steps:
            job = tickets.plan(
                spec,
                request.source,
                request.window,
                request.source_label,
                request.force,
                request.max_rejected_ratio,
                request.max_shrink_ratio,
                request.allow_shrink,
            )
            tickets.prepare(control, spec)
            years = job.years
        elif request.window.values:
            years = list(request.window)
        else:  # latest or every year: of those loaded
            years = list(request.window.resolve(yearly.loaded_years(control, request.dataset)))
            if not years:
                raise UsageError(f"window={str(request.window) or '(empty)'}: no year of {request.dataset} is loaded")
        cameras: dict[str, str] = {}
        if "aggregate" in request.steps:
            cameras = yearly.prepare(control, request.cameras)
        plans, tasks = [], []
        for year in years:
            action, reason = decide(control, request, year, job, cameras)
            plans.append(YearPlan(year, action, reason))
            if action == "run":
                tasks.append(
                    PartitionTask(request.dataset, year, request.steps, run_id, job, spec.table, cameras, request.force)
                )
        return Started(request, run_id, control, plans, interrupted, tasks, key)
    except BaseException:
        postgres.close(control)  # releases the lock
        raise


def decide(control, request: Request, year: int, job, cameras: dict[str, str]) -> tuple[str, str]:
    """Whether ``year`` runs, and why."""
    from opsbook.history import ledger

    entries = {s: ledger.get(control, request.dataset, str(year), s) for s in request.steps}
    if request.mode == "force":
        return "run", "force"
    if request.mode == "only_failed":
        bad = [f"{s} {e.status}" for s, e in entries.items() if e and e.status in ("failed", "interrupted")]
        return ("run", ", ".join(bad)) if bad else ("skip", "no failed or interrupted step")
    if request.mode == "resume":
        pending = [s for s in request.steps if not _done(control, request, year, s, entries[s], job, cameras)]
        if not pending:
            runs = sorted({e.run_id for e in entries.values() if e})
            return "skip", f"already done (run {', '.join(runs)})"
        return "run", f"{', '.join(pending)} not done"
    return "run", "every year of the window (unchanged steps verify and skip themselves)"


def _done(control, request: Request, year: int, step: str, entry, job, cameras: dict[str, str]) -> bool:
    """Done = the ledger says success, with the parameters and inputs this run would use."""
    from opsbook.toronto import tickets, yearly

    if entry is None or entry.status != "success":
        return False
    if step == "load":
        return entry.params_hash == tickets.params_hash(job.spec) and entry.input_fingerprint == (
            tickets.input_fingerprint(job.found.found[year])
        )
    return entry.input_fingerprint == yearly.year_fingerprint(control, request.dataset, year, cameras)


# --- run -------------------------------------------------------------------------------------


def run_partitions(
    started: Started,
    executor: str = "",
    workers: int = 1,
    fail_fast: bool = False,
    progress: Callable[..., None] | None = None,
) -> tuple[list[PartitionOutcome], str, float]:
    """Run the planned partitions here, on a local pool (``workers`` > 1) or on Dask
    (``executor`` ``dask://host:port``); release the dataset's lock at the end, however it ends.
    Returns the outcomes by year, where they ran, and the seconds it took."""
    from opsbook.run.progress import eta

    notify = progress or (lambda message, transient=False: None)
    total = len(started.tasks)
    outcomes: list[PartitionOutcome] = []
    t0 = time.monotonic()

    def done(outcome: PartitionOutcome) -> None:
        outcomes.append(outcome)
        elapsed = time.monotonic() - t0
        notify(
            f"{len(outcomes)}/{total} {outcome.year} {outcome.status}: {outcome.rows:,} rows, "
            f"{outcome.seconds:.1f}s; elapsed {elapsed:.0f}s, ETA {eta(len(outcomes), total, elapsed)}"
            + (f" ({outcome.error})" if outcome.error else "")
        )

    try:
        if executor:
            where = _run_on_dask(executor, started.tasks, fail_fast, done)
        elif workers > 1 and total > 1:
            where = _run_on_pool(workers, started.tasks, fail_fast, done)
        else:
            where = "this process"
            for task in started.tasks:
                outcome = run_partition(task)
                done(outcome)
                if outcome.status == "failed" and fail_fast:
                    break
    finally:
        started.release()
    outcomes.sort(key=lambda o: o.year)
    return outcomes, where, time.monotonic() - t0


def _run_on_pool(workers: int, tasks: list[PartitionTask], fail_fast: bool, done) -> str:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from opsbook.run import process

    # spawn, not fork: the kernel has threads, and a forked copy of a lock held by one would hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=process.watch_coordinator, initargs=(os.getpid(),)
    ) as pool:
        pending = {pool.submit(run_partition, task): task for task in tasks}
        stop = False
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task = pending.pop(future)
                outcome = _outcome_of(future, task)
                done(outcome)
                stop = stop or (outcome.status == "failed" and fail_fast)
            if stop:
                for future in pending:
                    future.cancel()
                pending = {f: t for f, t in pending.items() if not f.cancelled()}
    return f"a local pool of {workers} processes"


def _run_on_dask(executor: str, tasks: list[PartitionTask], fail_fast: bool, done) -> str:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise OpsbookError(
            "executor=dask://... needs the distributed package: pip install 'dask[distributed]'"
        ) from exc
    address = "tcp://" + executor.removeprefix("dask://")
    try:
        client = Client(address, timeout="15s")
    except OSError as exc:
        raise OpsbookError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = [
            client.submit(run_partition, task, pure=False, key=f"opsbook-{task.run_id}-{task.year}") for task in tasks
        ]
        index = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        for future in as_completed(futures):
            outcome = _outcome_of(future, index[future.key])
            done(outcome)
            if outcome.status == "failed" and fail_fast:
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
