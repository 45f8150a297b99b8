"""Land weather observations, transform them to core, check them, and refresh the marts.

The weather warehouse of the DW runbook, raw -> core -> mart (see ``opsbook.warehouse.weather``):

1. Land: every source file goes into ``raw.weather_observations`` exactly as it came, with
   its SHA-256, so landing the same file again adds nothing.
2. Transform: the landed payloads are parsed and checked in SQL and upserted into
   ``core.location`` and ``core.weather`` (a row is rewritten only when a value changed).
   Malformed files and hours go to ``raw.weather_rejected`` with the file, field and reason;
   when more than ``max_rejected_ratio`` of the files have a rejection, nothing is written.
3. Checkpoint: core must meet the runbook's expectations over the window (ranges, keys,
   referential integrity, 24 observations per location and day). A failure stops the run
   here, exit 1, and the marts are left as they were.
4. Marts: the materialized views are refreshed CONCURRENTLY (a plain REFRESH the first time,
   when a view was never populated).

``window=2024-11-01..2024-11-07`` reruns those dates only: their core rows and raw files are
deleted and reloaded from the source in one transaction, and no other date is touched.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict

NOTEBOOK = "refresh_marts.ipynb"
SUMMARY = "Weather warehouse: land raw JSON, upsert core, data-quality checkpoint, refresh the mart views"
LOCK = "opsbook.refresh_marts:weather"


def parse_window(spec: str) -> tuple[dt.date, dt.date] | None:
    """``"2024-11-01..2024-11-07"`` -> (first, last); ``"2024-11-03"`` -> that day; ``""`` -> None."""
    from opsbook.trafficsafety import reconcile

    if not spec.strip():
        return None
    window = reconcile.parse_window(spec)
    return window.first, window.last


class Params(ProcedureParams):
    """Parameters of ``refresh_marts``."""

    source: str = Field(
        "demo", description="'demo' (seeded files in the state folder) or a folder of <location>/<YYYY-MM-DD>.json"
    )
    window: str = Field("", description="dates to rerun, e.g. 2024-11-01..2024-11-07 (empty: every date in the source)")
    max_rejected_ratio: float = Field(
        0.1, ge=0, le=1, description="fail, writing nothing, when more of the files than this have a rejection"
    )
    max_incomplete_days: float = Field(
        0.1, ge=0, le=1, description="share of location-days allowed fewer than 24 observations"
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value.strip()

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("source is empty: give 'demo' or a folder")
        return value.strip()


def locks(params: Params) -> list[str]:
    """Locks the runner probes before it starts a kernel: one warehouse run at a time."""
    return [LOCK]


@dataclass
class Result:
    params: Params
    source: str = ""
    first: dt.date | None = None  # the window worked on
    last: dt.date | None = None
    rerun: bool = False  # a window rerun (delete and reload) rather than an upsert of the source
    landed: object = None  # warehouse.Landed
    transformed: object = None  # warehouse.Transformed
    checkpoint: object = None  # warehouse.Checkpoint
    marts: list = field(default_factory=list)  # warehouse.MartRefresh, one per view
    daily: list[dict] = field(default_factory=list)  # mart rows of the window, for the chart
    stopped: str = ""  # "rejects" or "checkpoint" when the run stopped before the marts
    seconds: float = 0.0

    @property
    def window_text(self) -> str:
        return f"{self.first}..{self.last}" if self.first else "(no dates)"

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
            what = "; ".join(f"{c.name}: {c.failing:,} of {c.checked:,} ({c.rule})" for c in failed)
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
        return Verdict(
            "pass",
            f"{self.window_text}: landed {self.landed.files} files ({self.landed.new} new), "
            f"{t.hours - t.hours_rejected:,} observations in core ({t.inserted:,} inserted, {t.updated:,} updated, "
            f"{t.unchanged:,} unchanged); quarantined {t.files_rejected} of {t.files} files ({t.files_refused} "
            f"whole, {t.hours_rejected} single hours; {t.rejected_ratio:.1%}, limit {limit:.0%}); "
            f"checkpoint passed {len(self.checkpoint.checks)} checks; refreshed {refreshed}",
            figures,
            **counts,
        )


def resolve_source(source: str) -> Path:
    from opsbook.demo import weather as weatherdata
    from opsbook.errors import SourceError

    if source == "demo":
        return weatherdata.ensure_demo()
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise SourceError(f"source folder {folder} does not exist (give 'demo' or a folder of JSON files)")
    return folder


def run(params: Params, run_id: str) -> Result:
    """Land, transform, check and refresh; see the module docstring for each step."""
    import psycopg

    from opsbook import runlog
    from opsbook.run import progress
    from opsbook.warehouse.weather import weather as warehouse
    from opsbook.errors import SourceError
    from opsbook.stores import postgres

    def say(line: str) -> None:
        progress.emit(f"refresh_marts: {line}")

    started = time.monotonic()
    folder = resolve_source(params.source)
    result = Result(params, source=str(folder))
    files = warehouse.list_files(folder)
    if not files:
        raise SourceError(f"no *.json files under {folder} (expected <location>/<YYYY-MM-DD>.json)")
    window = parse_window(params.window)
    if window:
        result.first, result.last = window
        result.rerun = True
        files = [f for f in files if f.day and window[0] <= f.day <= window[1]]
        if not files:
            raise SourceError(f"no files under {folder} are dated within {params.window}")
    else:
        days = [f.day for f in files if f.day]
        result.first, result.last = (min(days), max(days)) if days else (None, None)

    with postgres.connection(autocommit=True, purpose=f"refresh_marts {run_id}") as control:
        runlog.ensure_schema(control)
        runlog.try_lock(control, LOCK, f"run {run_id}")  # released when this connection closes
        warehouse.ensure_schema(control)
        befores = {name: warehouse.mart_state(control, name) for name in warehouse.MARTS}
        result.marts = [warehouse.MartRefresh(name, state) for name, state in befores.items()]

        with postgres.connection(autocommit=True, purpose=f"refresh_marts {run_id}") as conn:
            # one transaction: a window's delete and reload, or the upsert, commit together or not at all
            with conn.transaction() as tx:
                core_deleted = raw_deleted = 0
                if window:
                    core_deleted, raw_deleted = warehouse.delete_window(conn, *window)
                    say(f"window {params.window}: deleted {core_deleted:,} core rows and {raw_deleted:,} raw files")
                say(f"landing {len(files):,} files from {folder}")
                result.landed = warehouse.land(conn, files, str(folder), run_id, say)
                result.landed.raw_deleted = raw_deleted
                say(f"landed {result.landed.new:,} new files, {result.landed.already:,} already in raw")
                result.transformed = warehouse.transform(conn, run_id, params.max_rejected_ratio, say)
                result.transformed.core_deleted = core_deleted
                if result.transformed.rejected_ratio > params.max_rejected_ratio:
                    result.stopped = "rejects"
                    raise psycopg.Rollback(tx)  # leaves raw and core as they were
            if result.stopped:
                say("too many rejections: rolled back")
                result.seconds = time.monotonic() - started
                return result

            if result.first is not None:
                result.checkpoint = warehouse.checkpoint(conn, result.first, result.last, params.max_incomplete_days)
            else:
                result.checkpoint = warehouse.Checkpoint(None, None)
        failing = [c.name for c in result.checkpoint.failed]
        say("checkpoint " + (f"FAILED: {', '.join(failing)}" if failing else "passed"))
        if failing:
            result.stopped = "checkpoint"
            result.seconds = time.monotonic() - started
            return result

        for index, mart in enumerate(result.marts):
            result.marts[index] = warehouse.refresh(control, mart.view, mart.before)
            done = result.marts[index]
            say(f"refreshed {done.view} ({done.mode}): {done.after.rows:,} rows in {done.seconds:.2f} s")
        if result.first is not None:
            result.daily = warehouse.daily_rows(control, result.first, result.last)
    result.seconds = time.monotonic() - started
    return result


# --- presentation ----------------------------------------------------------------------------


def show_landing(result: Result):
    from opsbook import report

    landed = result.landed
    rows = [
        {"figure": "source", "value": result.source},
        {
            "figure": "window",
            "value": result.window_text + (" (rerun: deleted, then reloaded)" if result.rerun else ""),
        },
        {"figure": "files read", "value": landed.files},
        {"figure": "bytes read", "value": landed.bytes},
        {"figure": "new in raw.weather_observations", "value": landed.new},
        {"figure": "already landed (same file, same SHA-256)", "value": landed.already},
    ]
    if result.rerun:
        rows.append({"figure": "raw files of the window deleted first", "value": landed.raw_deleted})
    parts = [report.table(rows, caption="Landing: each file stored as it came", element_id="landing")]
    if result.stopped == "rejects":
        parts.append(report.note("This landing was rolled back with the rest of the run: too many rejections."))
    return report.stack(*parts)


def show_core(result: Result):
    from opsbook import report

    t = result.transformed
    over = t.rejected_ratio > result.params.max_rejected_ratio
    rows = [
        {"figure": "files parsed", "value": t.files, "status": ""},
        {
            "figure": "files with rejections",
            "value": f"{t.files_rejected} ({t.rejected_ratio:.1%}; limit {result.params.max_rejected_ratio:.0%})",
            "status": "fail" if over else ("warn" if t.files_rejected else "pass"),
        },
        {"figure": "files rejected whole", "value": t.files_refused, "status": ""},
        {"figure": "hours read from accepted files", "value": t.hours, "status": ""},
        {"figure": "hours rejected", "value": t.hours_rejected, "status": ""},
        {"figure": "core.weather inserted", "value": t.inserted, "status": ""},
        {"figure": "core.weather updated (a value changed)", "value": t.updated, "status": ""},
        {"figure": "core.weather unchanged (not rewritten)", "value": t.unchanged, "status": ""},
        {"figure": "core.location inserted / updated", "value": f"{t.locations_inserted} / {t.locations_updated}"},
    ]
    if result.rerun:
        rows.append({"figure": "core rows of the window deleted first", "value": t.core_deleted, "status": ""})
    parts = [report.table(rows, caption="Transform to core.location and core.weather", status_column="status")]
    caption = (
        "Quarantined (raw.weather_rejected)" if not over else "Rejections found (not written: the run was rolled back)"
    )
    parts.append(report.heading(caption, element_id="rejected"))
    parts.append(
        report.table(
            [{**r, "status": "rejected"} for r in t.rejects],
            status_column="status",
            raw_columns=("raw text",),
        )
    )
    if len(t.rejects) < t.files_refused + t.hours_rejected:
        parts.append(report.note(f"The first {len(t.rejects)} shown; raw.weather_rejected holds them all."))
    return report.stack(*parts)


def show_checkpoint(result: Result):
    from opsbook import report

    if result.checkpoint is None:
        return report.note("Not run: the transform was rolled back (too many rejections).")
    cp = result.checkpoint
    rows = [
        {"check": c.name, "rule": c.rule, "checked": c.checked, "failing": c.failing, "status": c.status}
        for c in cp.checks
    ]
    parts = [
        report.table(
            rows,
            caption=f"Expectations on core over {cp.first}..{cp.last}",
            status_column="status",
            element_id="checkpoint",
        )
    ]
    for c in cp.checks:
        if c.samples:
            parts.append(report.heading(f"{c.name}: first failing rows", level=4))
            parts.append(report.table([{k: _plain(v) for k, v in s.items()} for s in c.samples]))
    return report.stack(*parts)


def _plain(value):
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


def show_coverage_chart(result: Result):
    """Observations per location and day in core over the window (24 expected)."""
    import plotly.graph_objects as go

    from opsbook import report

    coverage = result.checkpoint.coverage if result.checkpoint else []
    if not coverage:
        return report.note("No observations in core for the window.")

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
            "the data-quality checkpoint failed (see section 3)"
            if result.stopped == "checkpoint"
            else "too many rejections (see section 2)"
        )
        parts.append(report.note(f"The marts were NOT refreshed and were left as they were: {why}."))
    return report.stack(*parts)


def show_temperature_chart(result: Result):
    """Daily average temperature per location from the refreshed mart."""
    import plotly.graph_objects as go

    from opsbook import report

    daily = result.daily
    if not daily:
        return report.note("No chart: the marts were not refreshed." if result.stopped else "No mart rows.")

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
