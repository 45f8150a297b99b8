"""Validate a dataset with its check suite: coverage, expected totals, quality rules, systems.

The suite lives next to the dataset spec (``params/datasets/<dataset>.checks.yaml``). Every
check runs inside the database; the report shows each check's status, the failing rows or
partitions, and a coverage chart of rows per month against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Years

if TYPE_CHECKING:
    from opsbook.checks import SuiteResult


class Params(ProcedureParams):
    """Parameters of ``validate``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="dataset spec in params/datasets/")
    window: Years = Field(
        "", description="years to check: 2017, 2016-2018 or 2011,2015-2016; empty: every year the table holds"
    )
    reference: str = Field(
        "",
        description="what the totals compare with: a reference of the suite or a registered one (empty: the "
        "reference of the data's source, else the suite's default)",
    )

    @model_validator(mode="after")
    def _known_reference(self) -> Params:
        from opsbook.checks import references
        from opsbook.checks.spec import load_suite, suite_path

        if self.reference:
            references.check_name(load_suite(suite_path(self.dataset)), self.reference)
        return self


@dataclass
class Result:
    params: Params
    suite_path: str
    suite: SuiteResult
    reference_note: str = ""  # why this reference was chosen

    def records(self) -> list[dict]:
        """Each check's outcome, for ``--json`` readers and the run history."""
        return [r.record() for r in self.suite.results]

    def verdict(self) -> Verdict:
        results = self.suite.results
        errors, warnings = self.suite.errors, self.suite.warnings
        figures = {"checks": len(results), "failed": len(errors), "warnings": len(warnings)}
        rows = sum(p.rows for p in self.suite.partitions) if self.suite.partitions else None
        if rows is not None:
            figures["rows checked"] = rows
        if errors:
            first = errors[0]
            summary = f"{len(errors)} of {len(results)} checks failed over {self.suite.window}: " + "; ".join(
                f"{r.name}: {r.message or r.observed}" for r in errors[:3]
            )
            return Verdict.failed(shorten(summary), figures, first.anchor, CheckFailed, rows_in=rows)
        if warnings:
            summary = f"all error checks passed over {self.suite.window}; {len(warnings)} warning(s): " + "; ".join(
                f"{r.name}: {r.message or r.observed}" for r in warnings[:3]
            )
            return Verdict("warn", shorten(summary), figures, rows_in=rows, anchor=warnings[0].anchor)
        return Verdict("pass", f"all {len(results)} checks passed over {self.suite.window}", figures, rows_in=rows)


def run(ctx: RunContext, plan: None = None) -> Result:
    """Run the dataset's suite over the window (every year the table holds when empty)."""
    from opsbook import checks, datasets
    from opsbook.checks import references
    from opsbook.checks.spec import load_suite, suite_path
    from opsbook.history import ledger, schema
    from opsbook.stores import postgres

    params: Params = ctx.params
    spec = datasets.get(params.dataset)
    path = suite_path(params.dataset)
    suite = load_suite(path)
    with postgres.connection(autocommit=True, purpose=f"validate {ctx.run_id}") as conn:
        reference, note = params.reference, "asked for"
        if not reference:
            schema.ensure_schema(conn)
            sources = {e.source for e in ledger.entries(conn, spec.name, step="load", status="success")}
            reference = references.default_for(suite, sources)
            note = (
                "the suite's default"
                if reference == suite.default_reference
                else f"the figures of {', '.join(sorted(map(str, sources)))}, the source the data was loaded from"
            )
        outcome = checks.run_suite(conn, spec, suite, params.window, reference)
    return Result(params, str(path), outcome, note)


# --- presentation ----------------------------------------------------------------------------


def show_checks(result: Result):
    """One row per check: status, what was observed against what was expected."""
    from opsbook import report

    caption = (
        f"{len(result.suite.results)} checks from {result.suite_path}; {result.suite.window}; "
        f"{result.suite.seconds:.2f}s"
    )
    if result.suite.reference:
        caption += f"; reference {result.suite.reference!r} ({result.reference_note})"
    return report.check_table(result.suite.results, caption=caption, element_id="checks")


def show_failures(result: Result):
    """Each failing check: what is wrong, and up to 20 failing rows or partitions."""
    from opsbook import report

    return report.check_failures(result.suite.results)


def show_coverage(result: Result):
    """Rows per month in the window, against the reference's expected rows."""
    from opsbook import report

    partitions = result.suite.partitions
    if not partitions:
        return report.note("No partition counts for this dataset (no aggregate check on its table).")
    import plotly.graph_objects as go

    labels = [f"{p.year}-{p.month:02d}" for p in partitions]
    colours = []
    for p in partitions:
        if p.rows == 0:
            colours.append("#cf222e")
        elif p.expected is not None and p.rows != p.expected:
            colours.append("#bf8700")
        else:
            colours.append("#2da44e")
    fig = go.Figure()
    fig.add_bar(x=labels, y=[p.rows for p in partitions], marker_color=colours, name="rows loaded")
    if any(p.expected is not None for p in partitions):
        fig.add_scatter(
            x=labels,
            y=[p.expected for p in partitions],
            mode="lines+markers",
            name="expected",
            line={"color": "#57606a", "width": 1},
            marker={"size": 4},
        )
    missing = [(label, p) for label, p in zip(labels, partitions, strict=True) if p.rows == 0]
    if missing:
        fig.add_scatter(
            x=[m[0] for m in missing],
            y=[0] * len(missing),
            mode="markers+text",
            name="missing",
            marker={"symbol": "x", "size": 12, "color": "#cf222e"},
            text=["missing"] * len(missing),
            textposition="top center",
            textfont={"color": "#cf222e"},
        )
    fig.update_layout(
        title="Rows per month (green: as expected, amber: differs, red: missing)",
        height=360,
        margin={"l": 50, "r": 20, "t": 50, "b": 60},
        bargap=0.1,
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
        xaxis={"type": "category", "tickangle": -60},
        yaxis={"title": "rows"},
    )
    return report.chart(fig, element_id="coverage-chart")
