"""Backfill the realtime safety indices from the bucket's daily index files, then their rollups.

The traffic-safety runbook's Phase 6 (Tasks 6.1, 6.2): for each UTC day of the window, the file
``processed/indices/indices_<date>.parquet`` under ``source`` (the bucket, or a local copy of it;
older files' column names mapped by the dataset spec) is loaded into that day's partition of the
realtime table with binary COPY, never row by row; a day whose partition already holds readings
is merged (nothing PostgreSQL holds is deleted). A rerun skips the days loaded from the same
file (the partition ledger), so an interrupted backfill resumes. Then the hourly and daily
rollups of the local days those readings fall on are built and checked, as ``rollups`` does.
The work is :mod:`opsbook.trafficsafety.backfill`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field

from opsbook import standins
from opsbook.checks import errors_of
from opsbook.errors import CheckFailed, OpsbookError, SourceError
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams, TimeZoneName
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Days, format_days

if TYPE_CHECKING:
    from opsbook.trafficsafety.backfill import DayResult, Found
    from opsbook.trafficsafety.rollups import Built

SOURCE_KIND = "safety_index_files"


def _some_days(window: Days) -> Days:
    if not window:
        raise ValueError("give the UTC days to backfill, e.g. 2025-11-01..2025-11-30 or 2025-11-03")
    return window


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``backfill_indices``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    source: standins.source_field(SOURCE_KIND, optional=True) = Field(
        standins.DEFAULT_SOURCE,
        description="the bucket (gs://...) or a folder holding processed/indices/indices_<date>.parquet, "
        'a stand-in source, or "" for the configured lake (LAKE_URL), where dual_write and migrate_to_bucket write',
    )
    window: Annotated[Days, AfterValidator(_some_days)] = Field(
        "2025-11-01..2025-11-07", description="UTC days to backfill: 2025-11-01..2025-11-30, 2025-11-03"
    )
    rollups: bool = Field(True, description="build the hourly and daily rollups of the backfilled days")
    timezone: TimeZoneName = Field("America/Toronto", description="time zone of the daily rollups and their peak hour")
    high_risk: float = Field(75.0, description="an interval is high risk above this combined index (EB)")


def locks(params: Params) -> list[str]:
    """Probed by the runner before it starts a kernel: one backfill of a dataset at a time."""
    from opsbook.trafficsafety.backfill import lock_key

    return [lock_key(params.dataset)]


@dataclass
class Plan:
    params: Params
    found: Found

    def days(self) -> list[dict]:
        rows = [
            {"day": f.day, "file": f.uri.rsplit("/", 1)[-1], "MB": round(f.size / 1e6, 1), "status": "to load"}
            for f in self.found.files
        ]
        rows += [{"day": d, "file": "-", "MB": None, "status": "no file"} for d in self.found.missing]
        return sorted(rows, key=lambda r: r["day"])


def plan(ctx: RunContext) -> Plan:
    """The window's day files (and the days without one); nothing is read or written.

    Raises
    ------
    SourceError
        No day of the window has a file.
    """
    from opsbook import datasets
    from opsbook.trafficsafety import backfill

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    from opsbook import config

    root = standins.resolve(SOURCE_KIND, params.source, window=params.window) if params.source else config.lake_url()
    found = backfill.find(spec, root, params.window)
    if not found.files:
        where = backfill.file_of(spec, root, params.window.first)
        raise SourceError(f"no index file for any day of {params.window} (looked for {where} and the like)")
    return Plan(params, found)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Load every planned day, then build and check the rollups of what was loaded."""
    from opsbook import datasets
    from opsbook.stores import postgres
    from opsbook.trafficsafety import backfill, rollups, schema

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    started = time.monotonic()
    days = backfill.load_days(spec, plan.found, ctx.run_id, ctx.progress("Loading days"))
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        schema.log_findings(conn, spec, ctx.run_id, "backfill_indices", findings(days))
    built = None
    held = [d.day for d in days if d.status in ("loaded", "merged", "unchanged")]
    if params.rollups and held:
        window = backfill.rollup_window(held, params.timezone)
        built = rollups.build(
            spec, window, params.timezone, params.high_risk, ctx.run_id, partitions_ahead=0, rows=False
        )
    return Result(plan, days, built, time.monotonic() - started)


def findings(days: list[DayResult]) -> list[dict]:
    """Each day's outcome, for the quality log."""
    return [
        {
            "check_name": f"backfill {d.day}",
            "status": "fail" if d.status == "failed" else "pass",
            "observed": f"{d.status}: {d.rows} rows" if d.status != "failed" else d.error,
            "details": {"file": d.file, "previous_rows": d.previous_rows, "kept": d.kept},
        }
        for d in days
    ]


@dataclass
class Result:
    plan: Plan
    days: list[DayResult]
    built: Built | None
    seconds: float
    checks: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.checks = self.built.checks if self.built else []

    @property
    def params(self) -> Params:
        return self.plan.params

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.days if d.status in ("loaded", "merged"))

    def verdict(self) -> Verdict:
        by = {s: [d for d in self.days if d.status == s] for s in ("loaded", "merged", "unchanged", "failed")}
        figures = {
            "days loaded": len(by["loaded"]),
            "days merged": len(by["merged"]),
            "days unchanged": len(by["unchanged"]),
            "days failed": len(by["failed"]),
            "days without a file": len(self.plan.found.missing),
            "rows": self.rows,
        }
        if self.built:
            figures.update({"hourly rows": self.built.hourly_rows, "daily rows": self.built.daily_rows})
        # the window's readings held as the files give them (unchanged days too): a rerun that
        # skips every day is not a drop in the morning check's trend
        held = sum(d.rows for d in self.days if d.status != "failed")
        counts = {"rows_in": held, "rows_out": held}
        if by["failed"]:
            errors = {d.error_class for d in by["failed"]}
            error = errors.pop() if len(errors) == 1 and None not in errors else OpsbookError
            detail = "; ".join(f"{d.day}: {d.error}" for d in by["failed"][:3])
            return Verdict.failed(
                shorten(f"{len(by['failed'])} of {len(self.days)} day(s) not loaded (the others were): {detail}"),
                figures,
                "days",
                error,
                **counts,
            )
        wrong = errors_of(self.checks)
        if wrong:
            names = ", ".join(c.name for c in wrong)
            return Verdict.failed(f"the rollups disagree with the readings: {names}", figures, "checks", CheckFailed)
        changed = len(by["loaded"]) + len(by["merged"])
        parts = [f"{self.rows:,} readings over {changed} day(s)"] if changed else []
        if by["merged"]:
            kept = sum(d.kept for d in by["merged"])
            parts.append(
                f"{len(by['merged'])} merged into readings already held ({kept:,} held only in PostgreSQL kept)"
            )
        if by["unchanged"]:
            parts.append(f"{len(by['unchanged'])} day(s) already loaded from the same file")
        if self.built:
            parts.append(
                f"rollups: {self.built.hourly_rows:,} hourly and {self.built.daily_rows:,} daily rows, checks pass"
            )
        summary = ("backfilled " if changed else "nothing to load: ") + "; ".join(parts)
        if self.plan.found.missing:
            missing = format_days(self.plan.found.missing)
            return Verdict("warn", f"{summary}; no file for {missing}", figures, anchor="days", **counts)
        return Verdict("pass", summary, figures, **counts)


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    from opsbook import report

    return report.table(
        plan.days(), caption=f"Day files under {plan.found.root}", status_column="status", element_id="plan"
    )


def show_days(result: Result):
    """Each day: what was done, rows, what the partition held before, columns the file lacked."""
    from opsbook import report

    rows = [
        {
            "day": d.day,
            "file": d.file,
            "status": d.status,
            "rows": d.rows,
            "held before": d.previous_rows,
            "kept (PostgreSQL only)": d.kept if d.status == "merged" else None,
            "columns absent": ", ".join(d.absent) or "-",
            "seconds": round(d.seconds, 2),
            "error": d.error or "",
        }
        for d in result.days
    ]
    rows += [{"day": d, "file": "-", "status": "no file"} for d in result.plan.found.missing]
    return report.table(
        sorted(rows, key=lambda r: r["day"]),
        caption="Each UTC day of the window: loaded (swapped in), merged (the partition held readings), "
        "unchanged (already loaded from the same file), failed",
        status_column="status",
        element_id="days",
    )


def show_checks(result: Result):
    from opsbook import report

    if not result.built:
        return report.note("No rollups were built (rollups=false, or no day was loaded).")
    return report.check_report(
        result.checks, caption="The rollups of the backfilled days, checked against the readings"
    )
