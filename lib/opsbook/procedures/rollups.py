"""Build hourly and daily rollups of the traffic-safety indices, with the peak hour of each day.

The window's local days (``timezone``) of ``safety_indices_hourly`` and ``safety_indices_daily``
are rebuilt in one transaction, so a rerun gives the same tables: the hours from their
15-minute readings, the days from their hours; then checked with independent queries. Hours and
days whose readings are gone (purged after 48 hours, or never arrived) keep their rows, and the
run says which days (WARN). Missing intervals are expected: each day says how many of its
intervals were present (WARN below ``min_coverage``). The work is
:mod:`opsbook.trafficsafety.rollups`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field

from opsbook.checks import errors_of
from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams, TimeZoneName
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Days, format_days

if TYPE_CHECKING:
    from opsbook.checks import CheckResult


def _some_days(window: Days) -> Days:
    if not window:
        raise ValueError("give the days to build, e.g. 2025-11-01..2025-11-07, 2025-11-03 or yesterday")
    return window


class Params(ProcedureParams):
    """Parameters of ``rollups``."""

    dataset: DatasetName = Field("safety_indices", description="the 15-minute readings rolled up")
    window: Annotated[Days, AfterValidator(_some_days)] = Field(
        "2025-11-01..2025-11-07", description="local days to (re)build: 2025-11-01..2025-11-07, 2025-11-03, yesterday"
    )
    timezone: TimeZoneName = Field("America/Toronto", description="time zone of the days and of the peak hour")
    high_risk: float = Field(75.0, description="an interval is high risk above this combined index")
    min_coverage: float = Field(0.5, ge=0, le=1, description="WARN for a day with less of its intervals present")
    partitions_ahead: int = Field(
        7, ge=0, le=366, description="make the realtime table's partitions of today and this many days after (UTC)"
    )


def locks(params: Params) -> list[str]:
    """Probed by the runner before it starts a kernel: one rollup of a dataset at a time."""
    from opsbook.trafficsafety.rollups import lock_key

    return [lock_key(params.dataset)]  # the lock the build itself takes


def run(ctx: RunContext, plan: None) -> Result:
    """Rebuild the window and check it against the readings."""
    from opsbook import datasets
    from opsbook.trafficsafety import rollups

    params: Params = ctx.params
    started = time.monotonic()
    built = rollups.build(
        datasets.get(params.dataset),
        params.window,
        params.timezone,
        params.high_risk,
        ctx.run_id,
        params.partitions_ahead,
    )
    days = rollups.coverage(built.daily, params.window, params.min_coverage)
    return Result(
        params,
        built.readings,
        built.hourly_rows,
        built.daily_rows,
        days,
        built.daily,
        built.hourly,
        built.checks,
        time.monotonic() - started,
        built.kept_days,
        built.partitions_created,
        built.partitions_ahead,
    )


@dataclass
class Result:
    params: Params
    readings: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    days: list[dict] = field(default_factory=list)  # coverage per local day
    daily: list[dict] = field(default_factory=list)  # the daily rows built
    hourly: list[dict] = field(default_factory=list)  # intersection, hour, avg_si (for the chart)
    checks: list[CheckResult] = field(default_factory=list)  # the rollups against the readings
    seconds: float = 0.0
    kept_days: list = field(default_factory=list)  # days without readings whose rollups were left as they were
    partitions_created: list = field(default_factory=list)  # realtime partitions made ahead by this run
    partitions_ahead: list = field(default_factory=list)  # realtime partitions from today (UTC) on

    @property
    def partitions_line(self) -> str:
        made = f"made {format_days(self.partitions_created)}" if self.partitions_created else "none missing"
        held = format_days(self.partitions_ahead) if self.partitions_ahead else "none"
        return f"realtime partitions from today: {held} ({made})"

    def verdict(self) -> Verdict:
        figures = {
            "readings": self.readings,
            "hourly rows": self.hourly_rows,
            "daily rows": self.daily_rows,
            "partitions made": len(self.partitions_created),
        }
        counts = {"rows_in": self.readings, "rows_out": self.hourly_rows + self.daily_rows}
        wrong = errors_of(self.checks)
        if wrong:
            detail = "; ".join(
                f"{c.name}: {c.failing_count:,} row(s) disagree" if c.status == "fail" else f"{c.name}: {c.message}"
                for c in wrong
            )
            return Verdict.failed(
                shorten(f"the rollups disagree with the readings: {detail}"), figures, "checks", CheckFailed
            )
        kept = (
            f"{len(self.kept_days)} day(s) without readings kept their rollups as they were "
            f"({format_days(self.kept_days)}: purged by retention, or never arrived)"
            if self.kept_days
            else ""
        )
        if not self.readings and self.kept_days:
            return Verdict("warn", f"nothing rebuilt: {kept}", figures, anchor="coverage", **counts)
        if not self.readings:
            return Verdict.failed(
                f"no {self.params.dataset} readings in {self.params.window} ({self.params.timezone}): "
                "run dual_write for those days first",
                figures,
                "coverage",
                CheckFailed,
            )
        low = [d for d in self.days if d["status"] == "warn"]
        built = (
            f"built {self.hourly_rows:,} hourly and {self.daily_rows:,} daily rows from {self.readings:,} readings "
            f"over {self.params.window} ({self.params.timezone})"
        )
        if kept:
            built = f"{built}; {kept}"
        if low:
            names = ", ".join(f"{d['day']} ({d['coverage']:.0%})" for d in low)
            return Verdict("warn", f"{built}; low coverage on {names}", figures, anchor="coverage", **counts)
        if kept:
            return Verdict("warn", built, figures, anchor="coverage", **counts)
        return Verdict("pass", f"{built}; every check against the readings passes", figures, **counts)


# --- presentation ----------------------------------------------------------------------------


def show_coverage(result: Result):
    """Intervals present per local day against those the day should have."""
    from opsbook import report

    rows = [{**d, "coverage": f"{d['coverage']:.1%}"} for d in result.days]
    return report.table(
        rows,
        caption=f"Intervals present per local day ({result.params.timezone}); WARN below "
        f"{result.params.min_coverage:.0%} of the day's intervals",
        status_column="status",
        element_id="coverage",
    )


def show_daily(result: Result):
    from opsbook import datasets, report
    from opsbook.trafficsafety import schema

    daily = schema.names(datasets.get(result.params.dataset)).daily
    return report.table(
        result.daily,
        caption=f"{daily}: one row per intersection and local day; peak hour in {result.params.timezone} time",
        element_id="daily",
    )


def show_checks(result: Result):
    """Each check of the rollups against the readings, and the rows that disagree."""
    from opsbook import report

    return report.check_report(
        result.checks, caption="The rollups checked against the readings, computed apart from the build"
    )


def hourly_chart(result: Result):
    """Hourly average index per intersection, with each day's peak hour marked."""
    import plotly.graph_objects as go

    from opsbook import report
    from opsbook.trafficsafety.rollups import peak_moments

    fig = go.Figure()
    for ident in sorted({r["intersection_id"] for r in result.hourly}):
        rows = [r for r in result.hourly if r["intersection_id"] == ident]
        fig.add_trace(
            go.Scatter(
                x=[r["local_hour"] for r in rows],
                y=[r["avg_si"] for r in rows],
                mode="lines",
                name=str(ident),
                line={"width": 1},
            )
        )
    peaks = peak_moments(result.daily, result.params.timezone)
    fig.add_trace(
        go.Scatter(
            x=[moment for moment, _ in peaks],
            y=[value for _, value in peaks],
            mode="markers",
            name="daily peak",
            marker={"symbol": "triangle-up", "size": 8, "color": "#222"},
        )
    )
    fig.update_layout(
        title="Hourly average combined index (EB) per intersection",
        xaxis_title=f"hour ({result.params.timezone})",
        yaxis_title="avg_si",
        height=420,
        margin={"l": 50, "r": 10, "t": 50, "b": 40},
    )
    return report.chart(fig, "hourly-chart")
