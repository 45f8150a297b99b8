"""Write incoming traffic-safety batches three ways: the Parquet lake, PostgreSQL, the GCS archive.

The source is a folder or ``gs://`` prefix of incoming batches, one Parquet file per batch;
``window`` picks the batches whose days overlap it (empty: every batch). A batch the write
ledger has in every target is not written again (``force=true`` writes it anyway). Each batch
is staged, then written to every target; the ledger records each batch x target. A target that
fails (GCS down, a full disk) leaves its batch pending, never only logged, and does not stop the
others; ``retry_pending=true`` writes every pending batch again from its staged copy. An
``intersections.csv`` at the source's root is upserted first. The work is
:mod:`opsbook.trafficsafety.dualwrite`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook import standins
from opsbook.errors import CheckFailed, SourceError
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.trafficsafety import TARGETS
from opsbook.windows import Days, names

if TYPE_CHECKING:
    from opsbook.trafficsafety.dualwrite import BatchResult, WritePlan, Written

SOURCE_KIND = "safety_indices"


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``dual_write``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    source: standins.source_field(SOURCE_KIND) = Field(
        standins.DEFAULT_SOURCE,
        description="folder or gs:// prefix of incoming batches (one Parquet file each), or a stand-in source",
    )
    window: Days = Field(
        "", description="UTC days whose batches to write: 2025-11-01..2025-11-07, 2025-11-03, yesterday; empty: all"
    )
    targets: names(TARGETS, "target") = Field("lake,postgres,archive", description="where each batch goes")
    retry_pending: bool = Field(False, description="write no new batch: retry every pending batch x target")
    force: bool = Field(False, description="write again batches the write ledger has in every target")

    def reads_sources(self) -> bool:
        """A retry writes the staged copies of pending batches: the source is not read."""
        return not self.retry_pending


def locks(params: Params) -> list[str]:
    """One writer of a dataset's dual-write at a time (a dual_write, or a reconcile's repair)."""
    from opsbook.trafficsafety import write_lock

    return [write_lock(params.dataset)]


@dataclass
class Plan:
    params: Params
    location: str | None  # the folder or prefix read (None when retrying pending writes)
    writes: WritePlan | None  # None when retrying
    pending: list[dict]  # retrying: the pending writes to retry


def plan(ctx: RunContext) -> Plan:
    """Find the batches of the window and what the ledger already has; nothing is written.

    Retrying (``retry_pending=true``) plans the pending writes instead.
    """
    from opsbook import datasets
    from opsbook.trafficsafety import dualwrite

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    if params.retry_pending:
        from opsbook.history import schema
        from opsbook.stores import postgres

        with postgres.connection(autocommit=True, purpose="dual-write plan") as conn:
            schema.ensure_schema(conn)
            pending = dualwrite.pending_writes(conn, spec)
        return Plan(params, None, None, pending)
    location = standins.resolve(SOURCE_KIND, params.source, window=params.window)
    return Plan(params, location, dualwrite.plan(spec, location, params.window, params.targets, params.force), [])


def run(ctx: RunContext, plan: Plan) -> Result:
    """Write the planned batches (or retry the pending writes)."""
    from opsbook import config, datasets
    from opsbook.trafficsafety import dualwrite

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    started = time.monotonic()
    lock = locks(params)[0]
    if params.retry_pending:
        written = dualwrite.retry(spec, ctx.run_id, lock, ctx.progress("Retrying pending writes"))
    else:
        written = dualwrite.write(spec, plan.writes, ctx.run_id, lock, ctx.progress("Writing batches"))
    return Result(plan, written, time.monotonic() - started, config.lake_url(), config.archive_url())


@dataclass
class Result:
    plan: Plan
    written: Written
    seconds: float
    lake: str
    archive: str

    @property
    def batches(self) -> list[BatchResult]:
        return self.written.batches

    @property
    def pending(self) -> list[dict]:
        return self.written.pending

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches if b.error is None)

    @property
    def held(self) -> int:
        """The window's rows now in every target: written by this run, or before it (a rerun
        that finds everything written is not a drop in the morning check's trend)."""
        return self.rows + (sum(b.rows for b in self.plan.writes.done) if self.plan.writes else 0)

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        """(file or batch, reason) of every batch that could not be read, in the plan or while writing."""
        found = list(self.plan.writes.found.unreadable) if self.plan.writes else []
        return found + [(b.batch_id, b.error) for b in self.batches if b.error]

    def verdict(self) -> Verdict:
        params = self.plan.params
        targets = list(params.targets)
        done = {t: sum(1 for b in self.batches if t in b.targets and b.targets[t].status == "success") for t in targets}
        already = len(self.plan.writes.done) if self.plan.writes else 0
        figures = {
            "batches": len(self.batches),
            "rows": self.rows,
            "pending writes": len(self.pending),
            **{f"{t} written": n for t, n in done.items()},
            "already written": already,
            "unreadable": len(self.unreadable),
        }
        action = "retried" if params.retry_pending else "wrote"
        summary = f"{action} {len(self.batches)} batch(es), {self.rows:,} rows, to {', '.join(targets)}"
        if already:
            summary += f"; {already} batch(es) already in every target (force=true writes them again)"
        if self.written.intersections is not None:
            summary += f"; {self.written.intersections} intersection(s) upserted"
        problems = []
        if self.unreadable:
            name, reason = self.unreadable[0]
            problems.append(
                f"{len(self.unreadable)} batch file(s) could not be read and were not written "
                f"(first: {name}: {shorten(reason, 300)})"
            )
        if self.pending:
            kinds = sorted({p["target"] for p in self.pending})
            extra = "".join(f" -p {name}={value}" for name, value in standins.flags(params).items())
            problems.append(
                f"{len(self.pending)} batch write(s) pending ({', '.join(kinds)}; first error: "
                f"{self.pending[0]['last_error']}); the other targets are written and the batches are staged. "
                f"Once the target is back: python run_notebook.py dual_write -p dataset={params.dataset} "
                f"-p source={params.source}{extra} -p retry_pending=true"
            )
        if problems:
            error = SourceError if self.unreadable else CheckFailed
            anchor = "dual-write-targets" if self.unreadable else "pending-writes"
            return Verdict.failed(f"{'; '.join(problems)}. {summary}", figures, anchor, error, rows_out=self.held)
        return Verdict("pass", summary, figures, rows_out=self.held)


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The batches of the window per first day: found, to write, already in every target."""
    from opsbook import report

    if plan.writes is None:
        if not plan.pending:
            return report.note("No write is pending: nothing to retry.")
        return report.table(
            [{k: v for k, v in p.items() if k != "updated_at"} for p in plan.pending],
            caption=f"{len(plan.pending)} pending write(s) to retry from their staged copies",
            element_id="plan",
        )
    writes = plan.writes
    days: dict = {}
    for item in writes.work:
        row = days.setdefault(item.batch.first_day, {"to write": 0, "already written": 0, "rows": 0})
        row["to write"] += 1
        row["rows"] += item.batch.rows
    for batch in writes.done:
        days.setdefault(batch.first_day, {"to write": 0, "already written": 0, "rows": 0})["already written"] += 1
    rows = [{"first day": str(day or "(empty)"), **counts} for day, counts in sorted(days.items(), key=_by_day)]
    window = plan.params.window
    caption = (
        f"{len(writes.work)} batch(es) to write, {len(writes.done)} already in every target, from {plan.location}"
        f" ({f'days overlapping {window}' if window else 'every batch'}; {len(writes.found.outside)} outside)"
    )
    parts = [report.table(rows, caption=caption, element_id="plan")]
    notes = []
    if writes.found.intersections:
        notes.append("intersections.csv is upserted into intersections first.")
    if writes.found.ignored:
        notes.append(f"{len(writes.found.ignored)} other file(s) ignored: {', '.join(writes.found.ignored[:5])}")
    if notes:
        parts.append(report.note(" ".join(notes)))
    if writes.found.unreadable:
        parts.append(
            report.table(
                [{"file": name, "reason": reason} for name, reason in writes.found.unreadable],
                caption="Batch files that cannot be read (not written)",
                element_id="unreadable",
            )
        )
    return report.stack(*parts)


def _by_day(item):
    day = item[0]
    return (day is None, day or 0)


def show_batches(result: Result):
    """Per target: where, batches written and pending, time spent."""
    from collections import Counter

    from opsbook import report

    rows = []
    for target in result.plan.params.targets:
        states = Counter(b.targets[target].status for b in result.batches if target in b.targets)
        where = {"lake": result.lake, "archive": result.archive, "postgres": result.plan.params.dataset}[target]
        rows.append(
            {
                "target": target,
                "where": where,
                "written": states.get("success", 0),
                "pending": states.get("pending", 0),
                "seconds": round(sum(b.targets[target].seconds for b in result.batches if target in b.targets), 2),
            }
        )
    caption = f"{len(result.batches)} batch(es), {result.rows:,} rows, {result.seconds:.1f}s"
    if result.written.intersections is not None:
        caption += f"; {result.written.intersections} intersection(s) upserted"
    parts = [report.table(rows, caption=caption, element_id="dual-write-targets")]
    failed = [{"batch": b.batch_id, "reason": b.error} for b in result.batches if b.error]
    if failed:
        parts.append(report.table(failed, caption="Batches not read (not written)", element_id="unread-batches"))
    return report.stack(*parts)


def show_pending(result: Result):
    """Every pending write of the dataset (the ledger's rows), or a note that there is none."""
    from opsbook import report

    if not result.pending:
        return report.note("No write is pending: every batch is in every target.")
    return report.table(
        [{k: v for k, v in p.items() if k != "updated_at"} for p in result.pending],
        caption="Pending writes (kept in opsbook.writes; the batches are staged until written)",
        element_id="pending-writes",
    )
