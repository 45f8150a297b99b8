"""Load a dataset's source files into PostgreSQL, one year partition at a time.

Each year is replaced in one transaction: if anything fails, the year keeps its previous
contents. Rows that cannot be read are quarantined with file, line, field and reason; a year
whose files, spec and table are unchanged since its last load is verified and skipped
(``force=true`` reloads it). The work is :mod:`opsbook.toronto.tickets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook import standins
from opsbook.errors import CheckFailed, ProcedureFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Years, format_years

if TYPE_CHECKING:
    from opsbook.toronto.tickets import LoadJob, YearResult

SOURCE_KIND = "toronto_parking_tickets"
REJECT_SAMPLE = 20


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``load``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="dataset spec in params/datasets/")
    source: standins.source_field(SOURCE_KIND) = Field(
        standins.DEFAULT_SOURCE, description="folder or gs:// prefix with the City's files, or a stand-in source"
    )
    years: Years = Field(
        "2016-2018",
        description="years to (re)load: 2017, 2016-2018, 2011,2015-2016, or latest (the newest the source holds)",
    )
    force: bool = Field(False, description="reload years whose files and table are unchanged")
    max_rejected_ratio: float = Field(
        0.01, ge=0, le=1, description="a year with a larger share of rejected rows (or bytes) is not swapped in"
    )
    max_shrink_ratio: float = Field(
        0.10, ge=0, le=1, description="a year that would lose a larger share of the rows it holds is refused"
    )
    allow_shrink: bool = Field(False, description="replace a year with markedly fewer rows (a real correction)")


def locks(params: Params) -> list[str]:
    """None probed up front: each year takes its own lock while it loads (a held year fails alone)."""
    return []


@dataclass
class Plan:
    params: Params
    location: str  # the folder or prefix read (a stand-in's folder for a stand-in source)
    job: LoadJob

    @property
    def years(self) -> list[int]:
        return self.job.years


def plan(ctx: RunContext) -> Plan:
    """Resolve the source and list the files of each year; refuse when a year has none."""
    from opsbook import datasets
    from opsbook.toronto import tickets

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    location = standins.resolve(SOURCE_KIND, params.source, years=None if params.years.latest else list(params.years))
    job = tickets.plan(
        spec,
        location,
        params.years,
        params.source,
        params.force,
        params.max_rejected_ratio,
        params.max_shrink_ratio,
        params.allow_shrink,
    )
    return Plan(params, location, job)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Load every year of the plan; one failing year does not stop the others."""
    import time

    from opsbook.toronto import tickets

    started = time.monotonic()
    years = tickets.load_years(plan.job, ctx.run_id, progress=ctx.progress("Loading", total=len(plan.years)))
    return Result(plan, years, ctx.run_id, time.monotonic() - started)


@dataclass
class Result:
    plan: Plan
    years: list[YearResult]
    run_id: str
    seconds: float

    @property
    def rows(self) -> int:
        return sum(y.rows for y in self.years if y.status in ("loaded", "unchanged"))

    @property
    def rejected(self) -> int:
        return sum(y.rejected for y in self.years if y.status in ("loaded", "unchanged"))

    def verdict(self) -> Verdict:
        failed = [y for y in self.years if y.status in ("failed", "rejected-too-many", "refused")]
        loaded = [y.year for y in self.years if y.status == "loaded"]
        unchanged = [y.year for y in self.years if y.status == "unchanged"]
        figures = {
            "rows": self.rows,
            "rejected": self.rejected,
            "years loaded": len(loaded),
            "years unchanged": len(unchanged),
            "years failed": len(failed),
        }
        counts = dict(rows_in=sum(y.lines for y in self.years), rows_out=self.rows, rows_rejected=self.rejected)
        parts = []
        if loaded:
            parts.append(f"loaded {len(loaded)} year(s)")
        if unchanged:
            parts.append(f"{len(unchanged)} unchanged")
        summary = f"{', '.join(parts) or 'nothing loaded'}: {self.rows:,} rows, {self.rejected:,} quarantined"
        # a year whose table was changed behind the ledger's back was put back as the files have it
        repaired = [y for y in self.years if y.status == "loaded" and y.reason and "the table" in y.reason]
        if repaired:
            summary += "; " + "; ".join(f"{y.year} reloaded because {y.reason}" for y in repaired)
        if failed:
            rerun = format_years(y.year for y in failed)
            reasons = "; ".join(shorten(y.error or y.status, 300) for y in failed)
            summary = (
                f"{len(failed)} year(s) failed ({rerun}) and kept their previous contents: {reasons}. "
                f"Otherwise {summary}. Rerun only them with -p years={rerun}"
            )
            # the years' common reason decides the exit code (all waited on a lock: 4, all refused
            # their input: 1); mixed reasons are a failed procedure (3)
            kinds = {y.error_type for y in failed}
            if len(kinds) == 1 and None not in kinds:
                error_type = kinds.pop()
            elif all(k is not None and issubclass(k, CheckFailed) for k in kinds):
                error_type = CheckFailed
            else:
                error_type = ProcedureFailed
            return Verdict.failed(summary, figures, "load-years", error_type, **counts)
        return Verdict("pass", summary, figures, **counts)


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The files found for each year."""
    from opsbook import report
    from opsbook.toronto.tickets import some

    found = plan.job.found
    rows = [{"year": year, "file": f.name, "bytes": f.size} for year in plan.years for f in found.found[year]]
    caption = f"{len(rows)} file(s) in {plan.location} for {format_years(plan.years)}"
    if found.ignored:
        caption += f" ({len(found.ignored)} other file(s) ignored: {some(found.ignored, 5)})"
    return report.table(rows, caption=caption)


UNCHANGED_NOTE = "files, spec and table unchanged since the last load"


def show_years(result: Result):
    """One row per year: what happened, rows loaded, rows quarantined, encodings, time."""
    from opsbook import report

    rows = []
    for y in result.years:
        rows.append(
            {
                "year": y.year,
                "status": y.status,
                "rows": y.rows,
                "quarantined": y.rejected,
                "rows held before": y.previous_rows,
                "files": len(y.files),
                "parts": len(y.parts) if y.parts else None,
                "encoding": y.encodings if y.parts else "",
                "seconds": round(y.seconds, 2),
                "note": y.error or (UNCHANGED_NOTE if y.status == "unchanged" else _why(y)),
            }
        )
    return report.table(
        rows, caption=f"{result.plan.job.spec.table}: per year", status_column="status", element_id="load-years"
    )


def _why(y) -> str:
    """Why a year was loaded, and what the table held before."""
    if not y.reason:
        return ""
    held = f"; the table held {y.previous_rows:,} rows before" if y.previous_rows is not None else ""
    return f"loaded because {y.reason}{held}"


def show_rejected(result: Result):
    """Quarantined rows: counts per year and field, and a sample with file, line and raw text."""
    from opsbook import report

    fields = sorted({name for y in result.years for name in y.reject_reasons})
    counts = [
        {"year": y.year, **{name: y.reject_reasons.get(name, 0) for name in fields}, "total": y.rejected}
        for y in result.years
        if y.rejected
    ]
    sample = [
        {
            "year": y.year,
            "file": r.source_file,
            "line": r.line_number,
            "field": r.field or "(row)",
            "reason": r.reason,
            "raw text": r.raw[:300],
        }
        for y in result.years
        for r in y.reject_sample
    ][:REJECT_SAMPLE]
    table = result.plan.job.spec.rejected_table
    return report.stack(
        report.table(
            counts,
            caption=f"Quarantined rows per year, by the field that failed ('row': wrong "
            f"column count or unreadable bytes); all of them are in {table}",
            element_id="rejected-counts",
        ),
        report.table(
            sample,
            caption=f"Sample of quarantined rows (first {REJECT_SAMPLE})",
            raw_columns=["raw text"],
            element_id="rejected-sample",
        ),
    )
