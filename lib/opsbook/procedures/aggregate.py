"""Build the Toronto yearly tables per location, one year at a time, idempotently.

``parking_ticket_yearly_locations`` from the tickets table; ``red_light_yearly_locations`` and
``ase_yearly_locations`` from the camera charges files (a folder, a gs:// prefix or a stand-in
source; empty skips the cameras). Each year is replaced in one transaction: a failing year
keeps its previous rows. A year whose inputs are unchanged since its last build (the same load
of that year, the same camera files) is skipped; ``force=true`` rebuilds it. The work is
:mod:`opsbook.toronto.yearly`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook import standins
from opsbook.errors import ProcedureFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Years, format_years

if TYPE_CHECKING:
    from opsbook.toronto.yearly import CameraFile, YearInput, YearResult

CAMERAS_KIND = "toronto_camera_charges"


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``aggregate``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset aggregated")
    years: Years = Field(
        "2011-2023",
        description="years to (re)build: 2017, 2016-2018, 2011,2015-2016, latest (the newest loaded) "
        "or empty (every loaded year)",
    )
    cameras: standins.source_field(CAMERAS_KIND, optional=True) = Field(
        standins.DEFAULT_SOURCE,
        description='folder or gs:// prefix with the camera charges CSVs, or a stand-in source; "" skips',
    )
    force: bool = Field(False, description="rebuild years whose inputs are unchanged")


def locks(params: Params) -> list[str]:
    """None probed up front: each year takes its own lock while it builds."""
    return []


@dataclass
class Plan:
    params: Params
    table: str  # the tickets table the yearly tables are built from
    cameras: str | None  # where the camera charges are read (None: no cameras)
    camera_files: list[CameraFile]
    inputs: list[YearInput]

    @property
    def years(self) -> list[int]:
        return [i.year for i in self.inputs]


def plan(ctx: RunContext) -> Plan:
    """Resolve the window and the camera source; list what each year's build would read
    (nothing changes yet)."""
    from opsbook import datasets
    from opsbook.stores import postgres
    from opsbook.toronto import yearly

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    cameras = standins.resolve(CAMERAS_KIND, params.cameras) if params.cameras else None
    with postgres.connection(autocommit=True, purpose=f"aggregate {ctx.run_id}") as conn:
        years = list(params.years.resolve(yearly.loaded_years(conn, params.dataset)))
        files = yearly.camera_files(conn, cameras) if cameras is not None else []
        inputs = yearly.year_inputs(conn, params.dataset, years)
    return Plan(params, spec.table, cameras, files, inputs)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Load changed camera files, then build every year; one failing year does not stop the others."""
    import time

    from opsbook.toronto import yearly

    started = time.monotonic()
    p = plan.params
    years, cameras = yearly.build_years(
        p.dataset,
        plan.table,
        plan.years,
        plan.cameras,
        ctx.run_id,
        p.force,
        progress=ctx.progress("Building", total=len(plan.years)),
    )
    return Result(plan, years, cameras, time.monotonic() - started)


@dataclass
class Result:
    plan: Plan
    years: list[YearResult]
    cameras: dict[str, str]  # program -> digest of the charges loaded
    seconds: float

    @property
    def rows(self) -> int:
        return sum(y.rows for y in self.years)

    def verdict(self) -> Verdict:
        failed = [y for y in self.years if y.status == "failed"]
        built = sum(1 for y in self.years if y.status == "built")
        unchanged = sum(1 for y in self.years if y.status == "unchanged")
        figures = {"years built": built, "years unchanged": unchanged, "years failed": len(failed), "rows": self.rows}
        summary = f"built {built} year(s), {unchanged} unchanged: {self.rows:,} rows in the yearly tables"
        if not self.years:
            return Verdict("pass", f"nothing to build: no loaded year matches years={self.plan.params.years}", figures)
        if failed:
            rerun = format_years(y.year for y in failed)
            reasons = "; ".join(f"{y.year}: {shorten(y.error or 'failed', 300)}" for y in failed[:3])
            summary = (
                f"{len(failed)} year(s) failed ({rerun}) and kept their previous rows: {reasons}. "
                f"Otherwise {summary}. Rerun only them with -p years={rerun}"
            )
            return Verdict.failed(summary, figures, "aggregate-years", ProcedureFailed, rows_out=self.rows)
        return Verdict("pass", summary, figures, rows_out=self.rows)


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The inputs: the camera files (changed since loaded or not) and each year's load."""
    from opsbook import report

    years = report.table(
        [
            {
                "year": i.year,
                "tickets loaded": i.tickets_rows,
                "load run": i.tickets_run or "never loaded",
                "last build": i.last_build or "never built",
                "rows then": i.last_rows,
            }
            for i in plan.inputs
        ],
        caption=f"{len(plan.inputs)} year(s) from {plan.table}: {format_years(plan.years) or 'none'}",
        element_id="aggregate-inputs",
    )
    if plan.cameras is None:
        return report.stack(years, report.note("cameras='': the camera tables are left as they are."))
    files = report.table(
        [
            {"program": f.program, "file": f.uri, "bytes": f.bytes, "sha256": f.digest, "since last load": f.loaded}
            for f in plan.camera_files
        ],
        caption=f"Camera charges in {plan.cameras} (a changed file is loaded again)",
        element_id="aggregate-cameras",
    )
    return report.stack(files, years)


def show_years(result: Result):
    """One row per year: what happened and the rows, tickets and revenue of each yearly table."""
    from opsbook import report

    rows = []
    for y in result.years:
        row = {"year": y.year, "status": y.status}
        for table, totals in y.tables.items():
            short = table.replace("_yearly_locations", "").replace("_ticket", "")
            row[f"{short} locations"] = totals["rows"]
            row[f"{short} tickets"] = totals["tickets"]
            row[f"{short} revenue"] = float(totals["revenue"])
        row["seconds"] = round(y.seconds, 2)
        row["note"] = y.error or ""
        rows.append(row)
    return report.table(rows, caption="Yearly tables per year", status_column="status", element_id="aggregate-years")


def show_totals_chart(result: Result):
    """Tickets per year in each yearly table."""
    from opsbook import report

    built = [y for y in result.years if y.tables]
    if not built:
        return report.note("No year was built.")
    import plotly.graph_objects as go

    fig = go.Figure()
    for table in built[0].tables:
        fig.add_bar(x=[str(y.year) for y in built], y=[y.tables[table]["tickets"] for y in built], name=table)
    fig.update_layout(
        title="Tickets per year in the yearly tables",
        barmode="group",
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
    )
    return report.chart(fig, element_id="aggregate-chart")
