"""Camera datasets: GeoJSON and summaries of the red-light and ASE camera sites, on the lake.

Reads the yearly camera tables the aggregate procedure builds, turns each site into a point
(EPSG:4326), and writes per program ``<program>_locations.geojson`` and
``<program>_summary.json`` to ``<lake>/cameras`` (or ``out``: a folder or a gs:// prefix), each
file whole or not at all. A site without valid coordinates inside Toronto is left off the map
and listed (a WARN), never silently dropped. Each GeoJSON file is read back and the check
engine compares its totals with PostgreSQL. The work is :mod:`opsbook.toronto.cameras`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook.checks import errors_of
from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.toronto.cameras import PROGRAMS  # light: the domain module imports geopandas lazily
from opsbook.windows import Years, names

if TYPE_CHECKING:
    from opsbook.checks import CheckResult
    from opsbook.toronto.cameras import Program


class Params(ProcedureParams):
    """Parameters of ``camera_datasets``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset the cameras belong to")
    years: Years = Field("2011-2023", description="years in the datasets: 2017, 2011-2023 or 2011,2015-2016")
    programs: names(tuple(PROGRAMS), "program") = Field("red_light,ase", description="camera programs: red_light, ase")
    out: str = Field("", description='where the files go: a folder or gs://bucket/prefix; "" is <lake>/cameras')


@dataclass
class Plan:
    params: Params
    out: str
    built_at: str
    years: list[int]  # the window, resolved against the tables
    programs: list[Program]


def plan(ctx: RunContext) -> Plan:
    """Read each program's sites from PostgreSQL and build its files (nothing is written yet)."""
    import datetime as dt

    from opsbook.toronto import cameras

    params: Params = ctx.params
    built_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    years, programs = cameras.build(params.programs, params.years, built_at, ctx.run_id)
    return Plan(params, cameras.output_root(params.out), built_at, years, programs)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Write the files, read each GeoJSON back, and fetch the streets drawn under the map."""
    import time

    from opsbook.toronto import cameras

    started = time.monotonic()
    programs = cameras.write_and_read_back(plan.programs, plan.out)
    checks = cameras.verify(programs)
    streets = cameras.street_points() if any(p.features for p in programs) else []
    return Result(plan, programs, streets, time.monotonic() - started, checks)


@dataclass
class Result:
    plan: Plan
    programs: list[Program] = field(default_factory=list)
    streets: list[tuple[float, float]] = field(default_factory=list)  # background of the map
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)  # each file read back against PostgreSQL

    def status_of(self, program: Program) -> str:
        return next((c.status for c in self.checks if c.name == program.check_name), "not checked")

    @property
    def out(self) -> str:
        return self.plan.out

    def verdict(self) -> Verdict:
        figures = {
            "features": sum(p.features for p in self.programs),
            "excluded": sum(len(p.excluded) for p in self.programs),
            **{p.name: p.features for p in self.programs},
        }
        wrong = errors_of(self.checks)
        if wrong:
            detail = "; ".join(f"{c.name}: {c.message or c.observed}" for c in wrong)
            return Verdict.failed(
                shorten(f"the camera files disagree with PostgreSQL: {detail}"), figures, wrong[0].anchor, CheckFailed
            )
        empty = [p.name for p in self.programs if not p.sites]
        if empty:
            return Verdict.failed(
                f"no camera sites for {', '.join(empty)} in {self.plan.params.years}: run aggregate with cameras first",
                figures,
                "programs",
                CheckFailed,
            )
        excluded = [e for p in self.programs for e in p.excluded]
        written = ", ".join(f"{p.name} {p.features:,} sites" for p in self.programs)
        if excluded:
            return Verdict(
                "warn",
                f"wrote {written} to {self.out}; {len(excluded)} site(s) left off the map (see excluded sites)",
                figures,
                rows_out=figures["features"],
                rows_rejected=len(excluded),
                anchor="excluded",
            )
        return Verdict(
            "pass",
            f"wrote {written} to {self.out}; each file read back matches PostgreSQL",
            figures,
            rows_out=figures["features"],
            rows_rejected=0,
        )


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """Per program: the sites in PostgreSQL, how many go on the map, the files to write."""
    from opsbook import report

    rows = [
        {
            "program": p.name,
            "sites in PostgreSQL": p.sites,
            "sites mapped": p.mapped,
            "left off the map": len(p.excluded),
            "tickets": p.db_tickets,
            "revenue": p.db_revenue,
            "bytes to write": sum(len(d) for d in p.documents.values()),
        }
        for p in plan.programs
    ]
    return report.table(rows, caption=f"Sites for {plan.params.years}, to write to {plan.out}", element_id="sites")


def show_excluded(plan: Plan):
    """Sites left off the map, with the reason."""
    from opsbook import report

    rows = [{"program": p.name, **e} for p in plan.programs for e in p.excluded]
    if not rows:
        return report.note("Every site has valid coordinates inside Toronto: none was left off the map.")
    return report.table(rows, caption="Sites left off the map, with the reason", element_id="excluded")


def show_programs(result: Result):
    """Per program: PostgreSQL's figures against the file read back."""
    from opsbook import report

    rows = [
        {
            "program": p.name,
            "sites in PostgreSQL": p.sites,
            "features written": p.features,
            "excluded": len(p.excluded),
            "tickets in PostgreSQL": p.db_tickets,
            "tickets read back": p.tickets,
            "revenue in PostgreSQL": p.db_revenue,
            "revenue read back": p.revenue,
            "status": result.status_of(p),
        }
        for p in result.programs
    ]
    return report.stack(
        report.table(
            rows,
            caption=f"Built at {result.plan.built_at} for {result.plan.params.years}",
            status_column="status",
            element_id="programs",
        ),
        report.check_report(
            result.checks, caption="Each GeoJSON file read back as a map client reads it, against PostgreSQL"
        ),
    )


def show_files(result: Result):
    from opsbook import report

    rows = [f for p in result.programs for f in p.files]
    return report.table(rows, caption=f"Files written to {result.out}", element_id="files")


def show_map(result: Result):
    """The sites read back on a map drawn without a tile server: parking-ticket locations sketch
    the streets."""
    import plotly.graph_objects as go

    from opsbook import report

    fig = go.Figure()
    if result.streets:
        fig.add_trace(
            go.Scattergl(
                x=[s[0] for s in result.streets],
                y=[s[1] for s in result.streets],
                mode="markers",
                marker={"size": 3, "color": "#d0d4da"},
                name="parking-ticket locations",
                hoverinfo="skip",
            )
        )
    colours = {"red_light": "#c0392b", "ase": "#2471a3"}
    for p in result.programs:
        frame = p.frame
        if frame is None or not len(frame):
            continue
        top = max(int(frame["ticket_count"].max()), 1)
        fig.add_trace(
            go.Scatter(
                x=frame.geometry.x,
                y=frame.geometry.y,
                mode="markers",
                name=f"{p.name} ({len(frame)} sites)",
                marker={"size": 6 + 18 * frame["ticket_count"] / top, "color": colours.get(p.name), "opacity": 0.8},
                text=[
                    f"{c} {loc}<br>{t:,} tickets"
                    for c, loc, t in zip(frame["site_code"], frame["location"], frame["ticket_count"], strict=True)
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title="Camera sites (size: tickets over the years)",
        height=560,
        margin={"l": 40, "r": 10, "t": 50, "b": 40},
        plot_bgcolor="white",
        legend={"orientation": "h", "y": -0.08},
    )
    fig.update_xaxes(title="longitude", showgrid=False)
    # one degree of longitude is cos(43.7°) ≈ 0.72 of a degree of latitude in Toronto
    fig.update_yaxes(title="latitude", showgrid=False, scaleanchor="x", scaleratio=1 / 0.723)
    return report.chart(fig, "camera-map")
