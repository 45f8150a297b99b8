"""Land weather observations, transform them to core, check them, and refresh the marts.

The weather warehouse of the DW runbook, raw -> core -> mart, in four steps the notebook shows
one by one (each safe to run again); :func:`run` does them all. The work is
:mod:`opsbook.warehouse`.

1. Land: every source file is staged for the run exactly as it came, with its SHA-256.
2. Transform, in one transaction: the staged files go into ``raw.weather_observations`` (the
   same bytes again add nothing), are parsed and checked in SQL, and are upserted into
   ``core.location`` and ``core.weather`` (a row is rewritten only when a value changed).
   Malformed files and hours go to ``raw.weather_rejected`` with the file, field and reason;
   when more than ``max_rejected_ratio`` of the files have a rejection, nothing is written.
3. Checkpoint: core must meet the runbook's expectations over the window (ranges, keys,
   referential integrity, 24 observations per location and day). A failure stops the run
   here, exit 1, and the marts are left as they were.
4. Marts: the materialized views are refreshed CONCURRENTLY (a plain REFRESH the first time,
   when a view was never populated), only if the checkpoint passed on the core they read.

``window=2024-11-01..2024-11-07`` reruns those dates only: their core rows and raw files are
deleted and reloaded from the source in one transaction, and no other date is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook import standins
from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict
from opsbook.windows import Days

if TYPE_CHECKING:
    from opsbook.warehouse.checkpoint import Checkpoint
    from opsbook.warehouse.land import Found, Landed
    from opsbook.warehouse.marts import MartRefresh
    from opsbook.warehouse.transform import Transformed

SOURCE_KIND = "weather_observations"


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``refresh_marts``."""

    source: standins.source_field(SOURCE_KIND) = Field(
        standins.DEFAULT_SOURCE,
        description="folder or gs:// prefix of <location>/<YYYY-MM-DD>.json files, or a stand-in source",
    )
    window: Days = Field(
        "", description="dates to rerun, e.g. 2024-11-01..2024-11-07 (empty: every date in the source)"
    )
    max_rejected_ratio: float = Field(
        0.1, ge=0, le=1, description="fail, writing nothing, when more of the files than this have a rejection"
    )
    max_incomplete_days: float = Field(
        0.1, ge=0, le=1, description="share of location-days allowed fewer than 24 observations"
    )


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel: one warehouse run at a time."""
    from opsbook.warehouse import schema

    return [schema.LOCK]


@dataclass(frozen=True)
class Plan:
    params: Params
    location: str  # the folder or prefix read (a stand-in's folder for a stand-in source)
    found: Found

    @property
    def rerun(self) -> bool:
        """A window rerun (delete and reload) rather than an upsert of the whole source."""
        return bool(self.params.window)

    @property
    def replacing(self) -> Days:
        """The dates a rerun deletes before it reloads them (empty otherwise)."""
        return self.params.window


def plan(ctx: RunContext) -> Plan:
    """Resolve the source and list its files (of the window); SourceError when there are none."""
    from opsbook.warehouse import land

    params: Params = ctx.params
    location = standins.resolve(SOURCE_KIND, params.source)
    return Plan(params, location, land.find(location, params.window))


@dataclass(frozen=True)
class Result:
    """What the steps did so far; each step returns a new one."""

    plan: Plan
    landed: Landed | None = None
    transformed: Transformed | None = None
    checkpoint: Checkpoint | None = None
    marts: tuple[MartRefresh, ...] = ()
    daily: tuple[dict, ...] = ()  # mart rows of the window, for the chart

    @property
    def params(self) -> Params:
        return self.plan.params

    @property
    def rerun(self) -> bool:
        return self.plan.rerun

    @property
    def stopped(self) -> str:
        """``rejects`` or ``checkpoint`` when the run stopped before the marts; else empty."""
        if self.transformed is not None and self.transformed.rolled_back:
            return "rejects"
        if self.checkpoint is not None and not self.checkpoint.passed:
            return "checkpoint"
        return ""

    @property
    def window_text(self) -> str:
        return str(self.plan.found.days) or "(no dates)"

    def _marts_left(self) -> str:
        parts = []
        for m in self.marts:
            b = m.before
            state = f"{b.rows:,} rows, {b.first}..{b.last}" if b.populated else "never populated"
            parts.append(f"{m.view} {state}")
        return "; ".join(parts)

    def verdict(self) -> Verdict:
        t = self.transformed
        figures = {
            "files": self.landed.files,
            "new files": self.landed.new,
            "files quarantined": t.files_rejected,
            "observations": t.hours - t.hours_rejected,
            "inserted": t.inserted,
            "updated": t.updated,
        }
        # rows out: the observations core holds for this run's files, rewritten or found unchanged
        # (an idempotent rerun stands behind as many rows as the first run, as load's does)
        counts = {
            "rows_in": t.hours,
            "rows_out": t.inserted + t.updated + t.unchanged,
            "rows_rejected": t.hours_rejected,
        }
        limit = self.params.max_rejected_ratio
        if self.stopped == "rejects":
            counts["rows_out"] = 0  # nothing was written
            return Verdict.failed(
                f"{t.files_rejected} of {t.files} files have rejections ({t.rejected_ratio:.1%}, limit {limit:.0%}): "
                f"nothing was written to raw, core or the marts; the marts were left as they were "
                f"({self._marts_left()})",
                figures,
                "rejected",
                CheckFailed,
                **counts,
            )
        failed = self.checkpoint.failed
        figures["checks failed"] = len(failed)
        if self.stopped == "checkpoint":
            what = "; ".join(f"{c.name}: {c.message or c.observed}" for c in failed)
            return Verdict.failed(
                f"data-quality checkpoint failed over {self.window_text} ({what}); the marts were NOT refreshed "
                f"and were left as they were ({self._marts_left()})",
                figures,
                "checkpoint",
                CheckFailed,
                **counts,
            )
        refreshed = "; ".join(
            f"{m.view} {m.mode}: {m.before.rows or 0:,} -> {m.after.rows:,} rows in {m.seconds:.2f} s"
            for m in self.marts
        )
        tolerated = self.checkpoint.warnings
        within = (
            " (within tolerance: " + "; ".join(f"{c.name}: {c.message or c.observed}" for c in tolerated) + ")"
            if tolerated
            else ""
        )
        return Verdict(
            "pass",
            f"{self.window_text}: landed {self.landed.files} files ({self.landed.new} new), "
            f"{t.hours - t.hours_rejected:,} observations in core ({t.inserted:,} inserted, {t.updated:,} updated, "
            f"{t.unchanged:,} unchanged); quarantined {t.files_rejected} of {t.files} files ({t.files_refused} "
            f"whole, {t.hours_rejected} single hours; {t.rejected_ratio:.1%}, limit {limit:.0%}); "
            f"checkpoint passed {len(self.checkpoint.checks)} checks{within}; refreshed {refreshed}",
            figures,
            **counts,
        )


# --- the steps -------------------------------------------------------------------------------


def land(ctx: RunContext, plan: Plan) -> Result:
    """1. Stage the plan's files for this run, as they came (raw and core are not touched)."""
    from opsbook.warehouse import land as landing
    from opsbook.warehouse import schema

    files = plan.found.files
    progress = ctx.progress(f"Landing {len(files):,} files from {plan.location}")
    with schema.session(ctx.run_id) as conn:
        landed = landing.stage(conn, files, plan.location, ctx.run_id, plan.replacing, progress)
    return Result(plan, landed=landed)


def transform(ctx: RunContext, landed: Result) -> Result:
    """2. Raw and core from the staged files, all or nothing."""
    from opsbook.warehouse import schema
    from opsbook.warehouse import transform as transforming

    with schema.session(ctx.run_id) as conn:
        done = transforming.transform(
            conn, ctx.run_id, landed.plan.replacing, landed.params.max_rejected_ratio, ctx.progress("Transforming")
        )
    return Result(landed.plan, landed.landed, done)


def checkpoint(ctx: RunContext, transformed: Result) -> Result:
    """3. The expectations on core over the window (skipped when the transform rolled back)."""
    from opsbook.warehouse import checkpoint as checks
    from opsbook.warehouse import schema

    if transformed.stopped:
        return transformed
    with schema.session(ctx.run_id) as conn:
        checked = checks.checkpoint(conn, transformed.plan.found.days, transformed.params.max_incomplete_days)
    failing = [c.name for c in checked.failed]
    ctx.progress("Checkpoint")("checkpoint " + (f"FAILED: {', '.join(failing)}" if failing else "passed"))
    return dataclasses.replace(transformed, checkpoint=checked, marts=(), daily=())


def refresh(ctx: RunContext, checked: Result) -> Result:
    """4. Refresh the marts when the checkpoint passed on the core they read; whatever happened
    before, the run's staged files are removed."""
    from opsbook.errors import ProcedureFailed
    from opsbook.warehouse import land as landing
    from opsbook.warehouse import marts, schema

    if checked.checkpoint is None and not checked.stopped:
        raise ProcedureFailed("the marts are refreshed only after a checkpoint: run the checkpoint step first")
    with schema.session(ctx.run_id) as conn:
        landing.drop_staged(conn, ctx.run_id)
        if checked.stopped:
            return dataclasses.replace(checked, marts=tuple(marts.left_alone(conn)), daily=())
        progress = ctx.progress("Refreshing the marts")
        verified, views = marts.refresh_checked(conn, checked.checkpoint, checked.params.max_incomplete_days, progress)
        days = checked.plan.found.days
        daily = marts.daily_rows(conn, days.first, days.last) if days and verified.passed else []
    return dataclasses.replace(checked, checkpoint=verified, marts=tuple(views), daily=tuple(daily))


def run(ctx: RunContext, plan: Plan) -> Result:
    """The four steps in order; a step that stops the run leaves the next ones nothing to do."""
    return refresh(ctx, checkpoint(ctx, transform(ctx, land(ctx, plan))))


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The files per location, with the dates they cover."""
    from opsbook import report

    per_location: dict[str, dict] = {}
    for f in plan.found.files:
        row = per_location.setdefault(
            f.location or "(no folder)", {"location": f.location or "(no folder)", "files": 0, "bytes": 0, "days": []}
        )
        row["files"] += 1
        row["bytes"] += f.size
        if f.day:
            row["days"].append(f.day)
    rows = [
        {
            "location": r["location"],
            "files": r["files"],
            "bytes": r["bytes"],
            "first date": min(r["days"]).isoformat() if r["days"] else "",
            "last date": max(r["days"]).isoformat() if r["days"] else "",
        }
        for r in per_location.values()
    ]
    found = plan.found
    caption = f"{len(found.files):,} file(s) in {plan.location} over {found.days or '(no dates)'}"
    if plan.rerun:
        caption += f" (window rerun: {found.outside:,} file(s) outside it left alone)"
    return report.table(rows, caption=caption, element_id="plan")


def show_landing(result: Result):
    from opsbook import report

    landed = result.landed
    rows = [
        {"figure": "source", "value": result.plan.location},
        {
            "figure": "window",
            "value": result.window_text + (" (rerun: deleted, then reloaded)" if result.plan.rerun else ""),
        },
        {"figure": "files read", "value": landed.files},
        {"figure": "bytes read", "value": landed.bytes},
        {"figure": "new to raw.weather_observations", "value": landed.new},
        {"figure": "already landed (same file, same SHA-256)", "value": landed.already},
    ]
    if result.plan.rerun:
        rows.append({"figure": "raw files of the window the transform deletes first", "value": landed.replaced})
    parts = [report.table(rows, caption="Landing: each file staged as it came", element_id="landing")]
    if result.stopped == "rejects":
        parts.append(
            report.note("Nothing of this landing reached raw: the transform rolled back (too many rejections).")
        )
    return report.stack(*parts)


def show_core(result: Result):
    from opsbook import report

    t = result.transformed
    limit = result.params.max_rejected_ratio
    rows = [
        {"figure": "files parsed", "value": t.files, "status": ""},
        {"figure": "files new to raw.weather_observations", "value": t.raw_inserted, "status": ""},
        {
            "figure": "files with rejections",
            "value": f"{t.files_rejected} ({t.rejected_ratio:.1%}; limit {limit:.0%})",
            "status": "fail" if t.rolled_back else ("warn" if t.files_rejected else "pass"),
        },
        {"figure": "files rejected whole", "value": t.files_refused, "status": ""},
        {"figure": "hours read from accepted files", "value": t.hours, "status": ""},
        {"figure": "hours rejected", "value": t.hours_rejected, "status": ""},
        {"figure": "core.weather inserted", "value": t.inserted, "status": ""},
        {"figure": "core.weather updated (a value changed)", "value": t.updated, "status": ""},
        {"figure": "core.weather unchanged (not rewritten)", "value": t.unchanged, "status": ""},
        {"figure": "core.location inserted / updated", "value": f"{t.locations_inserted} / {t.locations_updated}"},
    ]
    if result.plan.rerun:
        rows.append({"figure": "core rows of the window deleted first", "value": t.core_deleted, "status": ""})
        rows.append({"figure": "raw files of the window deleted first", "value": t.raw_deleted, "status": ""})
    caption = "Transform to core.location and core.weather" + (", rolled back" if t.rolled_back else "")
    parts = [report.table(rows, caption=caption, status_column="status")]
    heading = (
        "Rejections found (not written: the transform was rolled back)"
        if t.rolled_back
        else "Quarantined (raw.weather_rejected)"
    )
    parts.append(report.heading(heading, element_id="rejected"))
    parts.append(
        report.table(
            [{**r, "status": "rejected"} for r in t.rejects], status_column="status", raw_columns=("raw text",)
        )
    )
    if len(t.rejects) < t.files_refused + t.hours_rejected:
        parts.append(report.note(f"The first {len(t.rejects)} shown; raw.weather_rejected holds them all."))
    return report.stack(*parts)


def show_checkpoint(result: Result):
    """Each expectation on core: status, observed against expected, and the failing rows (with
    the location's name beside its id)."""
    from opsbook import report

    if result.checkpoint is None:
        return report.note("Not run: the transform was rolled back (too many rejections).")
    cp = result.checkpoint
    caption = f"Expectations on core over {cp.days or '(no dates)'} ({cp.suite.seconds:.2f}s)"
    if cp.repeated:
        caption += " (checked again before the refresh: another run had changed core)"
    names = cp.locations()
    shown = [dataclasses.replace(c, failing=[_named(row, names) for row in c.failing]) for c in cp.checks]
    return report.stack(
        report.check_table(shown, caption=caption, element_id="checkpoint"),
        report.check_failures(shown, "Every expectation holds: no failing rows to show.", level=4),
    )


def _named(row: dict, names: dict) -> dict:
    """A failing row with its location's name first, when it has a location_id core knows."""
    if "location_id" not in row or row["location_id"] not in names:
        return row
    return {"location": names[row["location_id"]], **row}


def show_coverage_chart(result: Result):
    """Observations per location and day in core over the window (24 expected)."""
    from opsbook import report

    coverage = result.checkpoint.coverage if result.checkpoint else []
    if not coverage:
        return report.note("No observations in core for the window.")
    import plotly.graph_objects as go

    locations = sorted({c["location"] or str(c["location_id"]) for c in coverage})
    dates = sorted({c["date"] for c in coverage})
    grid = {(c["location"] or str(c["location_id"]), c["date"]): c["observations"] for c in coverage}
    fig = go.Figure(
        go.Heatmap(
            x=[d.isoformat() for d in dates],
            y=locations,
            z=[[grid.get((loc, d), 0) for d in dates] for loc in locations],
            zmin=0,
            zmax=24,
            colorscale="Blues",
            text=[[str(grid.get((loc, d), 0)) for d in dates] for loc in locations],
            texttemplate="%{text}",
            colorbar={"title": "obs"},
        )
    )
    fig.update_layout(title="Observations per location and day in core (24 expected)", height=140 + 30 * len(locations))
    return report.chart(fig, "coverage-chart")


def show_marts(result: Result):
    from opsbook import report

    rows = []
    for m in result.marts:
        b, a = m.before, m.after
        rows.append(
            {
                "view": m.view,
                "rows before": b.rows if b.populated else "never populated",
                "dates before": f"{b.first}..{b.last}" if b.populated and b.rows else "",
                "rows after": a.rows if a else "",
                "dates after": f"{a.first}..{a.last}" if a and a.rows else "",
                "refresh": m.mode or "not refreshed",
                "seconds": round(m.seconds, 3) if a else "",
                "status": "refreshed" if a else "skipped",
            }
        )
    parts = [report.table(rows, caption="Materialized views", status_column="status", element_id="marts")]
    if result.stopped:
        why = (
            "the data-quality checkpoint failed (see section 4)"
            if result.stopped == "checkpoint"
            else "too many rejections (see section 3)"
        )
        parts.append(report.note(f"The marts were NOT refreshed and were left as they were: {why}."))
    return report.stack(*parts)


def show_temperature_chart(result: Result):
    """Daily average temperature per location from the refreshed mart."""
    from opsbook import report

    daily = result.daily
    if not daily:
        return report.note("No chart: the marts were not refreshed." if result.stopped else "No mart rows.")
    import plotly.graph_objects as go

    fig = go.Figure()
    for location in sorted({d["location"] for d in daily}):
        mine = [d for d in daily if d["location"] == location]
        fig.add_trace(
            go.Scatter(
                x=[d["date"].isoformat() for d in mine],
                y=[d["avg_temperature_celsius"] for d in mine],
                mode="lines+markers",
                name=location,
                customdata=[[d["min_temperature_celsius"], d["max_temperature_celsius"]] for d in mine],
                hovertemplate="%{x}: avg %{y:.1f} °C (min %{customdata[0]:.1f}, max %{customdata[1]:.1f})",
            )
        )
    fig.update_layout(
        title="Daily average temperature per location (mart.daily_weather_aggregates)",
        yaxis_title="°C",
        height=380,
    )
    return report.chart(fig, "temperature-chart")
