"""Check that the dual-write agrees: the lake against PostgreSQL, the archive against the ledger.

Counts per day, then the exact differing keys, each classified (missing in PostgreSQL, missing
in the lake, value drift beyond each column's tolerance, timestamp shifted, duplicate key);
pending writes and archive objects missing from the ledger's point of view. ``repair=true``
first retries pending writes, then re-applies the source of truth (``source_of_truth=lake`` or
``postgres``) to the differing keys only, and checks again. Exit 1 when differences remain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from opsbook.trafficsafety import reconcile
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict

NOTEBOOK = "reconcile_dual_write.ipynb"
SUMMARY = "Compare the Parquet lake with PostgreSQL and the GCS archive with the write ledger; repair on request"
SAMPLES = 20


class Params(ProcedureParams):
    """Parameters of ``reconcile_dual_write``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    window: str = Field("2025-11-01..2025-11-07", description="days to compare, UTC: 2025-11-01..2025-11-07")
    repair: bool = Field(False, description="re-apply the source of truth to the differing keys, then check again")
    source_of_truth: Literal["lake", "postgres"] = Field("lake", description="which side a repair copies from")
    row_limit: int = Field(5_000_000, ge=0, description="above this many rows, compare bucketed checksums first")

    @field_validator("window")
    @classmethod
    def _days(cls, value: str) -> str:
        reconcile.parse_window(value)
        return value


@dataclass
class Result:
    params: Params
    before: reconcile.Comparison
    after: reconcile.Comparison | None
    archive: list[dict[str, Any]]
    pending: list[dict[str, Any]]
    repaired: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    seconds: float = 0.0

    @property
    def final(self) -> reconcile.Comparison:
        return self.after or self.before

    def verdict(self) -> Verdict:
        counts = self.final.counts()
        remaining = len(self.final.differences)
        figures = {
            "differences": remaining,
            **{k: v for k, v in counts.items() if v},
            "pending writes": len(self.pending),
            "archive findings": len(self.archive),
            "rows compared": sum(self.final.lake_rows.values()) + sum(self.final.postgres_rows.values()),
        }
        repaired = ""
        if self.after is not None:
            repaired = (
                f"repair from {self.params.source_of_truth} fixed {len(self.before.differences)} difference(s) "
                f"({', '.join(f'{k} {v}' for k, v in self.repaired.items() if v) or 'nothing to do'}); "
            )
        if remaining or self.pending or self.archive:
            parts = [f"{v:,} {k}" for k, v in counts.items() if v]
            if self.pending:
                parts.append(f"{len(self.pending)} pending write(s)")
            if self.archive:
                parts.append(f"{len(self.archive)} archive finding(s)")
            summary = f"{repaired}the dual-write disagrees over {self.params.window}: {', '.join(parts)}"
            return Verdict.failed(summary, figures, "reconcile-days", CheckFailed)
        rows = sum(self.final.lake_rows.values())
        return Verdict(
            "pass",
            f"{repaired}lake and PostgreSQL agree over {self.params.window}: {rows:,} rows, "
            f"{self.final.method}; archive complete",
            figures,
        )


def run(params: Params) -> Result:
    from opsbook import datasets
    from opsbook.trafficsafety import dualwrite
    from opsbook.stores import postgres

    t0 = time.monotonic()
    spec = datasets.get(params.dataset)
    window = reconcile.parse_window(params.window)
    with postgres.connection(autocommit=True, purpose="reconcile") as control:
        dualwrite.ensure_tables(control, spec)
        retried = 0
        if params.repair:
            retried = len(dualwrite.retry_pending(control, spec))
        before = reconcile.compare(spec, window, row_limit=params.row_limit)
        after, repaired = None, {}
        if params.repair:
            repaired = reconcile.repair(spec, window, before, params.source_of_truth)
            after = reconcile.compare(spec, window, row_limit=params.row_limit)
        archive = reconcile.archive_findings(control, spec, window)
        pending = dualwrite.pending_writes(control, spec)
    return Result(params, before, after, archive, pending, repaired, retried, time.monotonic() - t0)


# --- presentation ----------------------------------------------------------------------------


def show_days(result: Result):
    from opsbook import report

    comparison = result.final
    per_day: dict = {d: {c: 0 for c in reconcile.CLASSES} for d in comparison.days}
    for d in comparison.differences:
        per_day.setdefault(d["day"], {c: 0 for c in reconcile.CLASSES})[d["class"]] += 1
    rows = []
    for day in comparison.days:
        lake, pg = comparison.lake_rows.get(day, 0), comparison.postgres_rows.get(day, 0)
        found = sum(per_day[day].values())
        rows.append(
            {
                "day": day.isoformat(),
                "status": "pass" if not found else "fail",
                "lake rows": lake,
                "postgres rows": pg,
                **per_day[day],
            }
        )
    caption = (
        f"{result.params.dataset} per day (UTC), {comparison.method}, {comparison.lake_files} lake files, "
        f"{comparison.fetched_rows:,} rows compared row by row"
    )
    if result.after is not None:
        caption = f"after the repair: {caption}"
    return report.table(rows, caption=caption, status_column="status", element_id="reconcile-days")


def show_chart(result: Result):
    from opsbook import report

    comparison = result.before
    import plotly.graph_objects as go

    days = [d.isoformat() for d in comparison.days]
    fig = go.Figure()
    colours = {
        "missing in postgres": "#cf222e",
        "missing in lake": "#bf8700",
        "value drift": "#8250df",
        "timestamp shifted": "#0969da",
        "duplicate key": "#57606a",
    }
    for klass in reconcile.CLASSES:
        counts = [
            sum(1 for d in comparison.differences if d["class"] == klass and d["day"].isoformat() == day)
            for day in days
        ]
        fig.add_bar(x=days, y=counts, name=klass, marker_color=colours[klass])
    title = "Differences by day and class" + (" (before the repair)" if result.after is not None else "")
    fig.update_layout(
        title=title,
        barmode="stack",
        height=340,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
        yaxis={"title": "keys"},
    )
    return report.chart(fig, element_id="reconcile-chart")


def show_samples(result: Result):
    """Up to 20 keys of each class, lake and PostgreSQL values side by side."""
    from opsbook import report

    comparison = result.before
    if not comparison.differences:
        return report.note("No difference: nothing to show.")
    parts = []
    for klass in reconcile.CLASSES:
        found = [d for d in comparison.differences if d["class"] == klass]
        if not found:
            continue
        rows = []
        for d in found[:SAMPLES]:
            row = {"key": ", ".join(str(k) for k in d["key"]), "detail": d.get("detail", "")}
            if d.get("columns"):
                row["columns"] = ", ".join(d["columns"])
                for column in d["columns"][:3]:
                    row[f"lake {column}"] = d["lake"][column]
                    row[f"postgres {column}"] = d["postgres"][column]
            rows.append(row)
        parts.append(
            report.table(
                rows,
                caption=f"{klass}: {len(found):,} key(s), first {min(len(found), SAMPLES)}",
                element_id=f"class-{klass.replace(' ', '-')}",
            )
        )
    return report.stack(*parts)


def show_writes(result: Result):
    from opsbook import report

    parts = []
    if result.retried:
        parts.append(report.note(f"Retried {result.retried} pending batch(es) before comparing."))
    parts.append(
        report.table(result.pending, caption="Pending writes (opsbook.writes)", element_id="pending-writes")
        if result.pending
        else report.note("No pending write.")
    )
    parts.append(
        report.table(result.archive, caption="Archive against the write ledger", element_id="archive-findings")
        if result.archive
        else report.note("Every archive object the ledger records is there, and no other.")
    )
    return report.stack(*parts)
