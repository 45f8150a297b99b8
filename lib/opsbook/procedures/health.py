"""The morning check: is every scheduled procedure on time, did anything fail, is anything stuck?

Read from the run log and from PostgreSQL itself, judged against the parameters (see
:mod:`opsbook.ops.health` and :mod:`opsbook.ops.sessions`); with ``mark_stuck=true`` runs whose
process is gone are marked failed, and with ``incident=true`` everything needed to escalate
goes into one zip (:mod:`opsbook.ops.incident`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict

if TYPE_CHECKING:
    from opsbook.ops.health import Findings, Limits
    from opsbook.ops.incident import Bundle

# --- parameter types -------------------------------------------------------------------------


def _known_procedure(name: str, what: str) -> str:
    from opsbook import procedures
    from opsbook.run.params import closest

    if name not in procedures.PROCEDURES:
        hint = closest(name, procedures.PROCEDURES)
        raise ValueError(f"{what}: unknown procedure {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
    return name


def _procedure_names(value: Any) -> tuple[str, ...]:
    """``"load, validate"`` or a YAML list -> ``("load", "validate")``, each a known procedure."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and _known_procedure(item, "expected") not in names:
            names.append(item)
    return tuple(names)


def _lag_hours(value: Any) -> dict[str, float]:
    """``"default:25,load:26"`` (or ``=`` for ``:``) or a YAML mapping -> ``{"default": 25.0,
    "load": 26.0}``; a bad entry is named. Written back with ``:``: papermill reads a parameters
    cell line holding a second ``=`` as no parameter at all."""
    if isinstance(value, dict):
        entries = [(str(k).strip(), str(v), f"{k}={v}") for k, v in value.items()]
    else:
        entries = []
        for entry in (e.strip() for e in str(value).split(",")):
            if not entry:
                continue
            name, sep, hours = entry.partition(":" if ":" in entry else "=")
            if not sep or not name.strip():
                raise ValueError(f"entry {entry!r}: expected procedure:hours, e.g. load:25")
            entries.append((name.strip(), hours, entry))
    found: dict[str, float] = {}
    for name, hours, entry in entries:
        try:
            number = float(hours)
        except ValueError:
            raise ValueError(f"entry {entry!r}: {hours.strip()!r} is not a number of hours") from None
        if number <= 0:
            raise ValueError(f"entry {entry!r}: hours must be more than 0")
        if name != "default":
            _known_procedure(name, f"entry {entry!r}")
        found[name] = number
    return found


ProcedureNames = Annotated[
    tuple[str, ...],
    BeforeValidator(_procedure_names),
    PlainSerializer(lambda names: ",".join(names), return_type=str, when_used="json"),
]
"""Procedure names: ``load,validate`` or a YAML list; written back as ``load,validate``."""

LagHours = Annotated[
    dict[str, float],
    BeforeValidator(_lag_hours),
    PlainSerializer(lambda hours: ",".join(f"{k}:{v:g}" for k, v in hours.items()), return_type=str, when_used="json"),
]
"""Hours per procedure: ``default:25,load:26`` or a YAML mapping; written back as that text."""


class Params(ProcedureParams):
    """Parameters of ``health``."""

    expected: ProcedureNames = Field(
        "load,aggregate,validate", description="scheduled procedures: each must have succeeded within its lag"
    )
    lag_hours: LagHours = Field(
        "default:25", description="hours allowed since the last success: procedure:hours, default:N for the rest"
    )
    max_failures_24h: int = Field(0, ge=0, description="failed runs allowed in the last 24 hours")
    trend_days: int = Field(7, ge=2, le=90, description="days of run history in the trend and the chart")
    max_drop: float = Field(0.5, gt=0, le=1, description="flag a last run writing this fraction fewer rows")
    stuck_after_minutes: int = Field(60, ge=0, description="a run still 'running' after this long is checked")
    mark_stuck: bool = Field(False, description="mark runs whose process is gone as failed, with a note")
    long_query_seconds: int = Field(300, ge=1, description="a statement or transaction open longer is reported")
    blocked_seconds: int = Field(60, ge=0, description="a session waiting on a lock longer is reported")
    max_connections_used: float = Field(0.8, gt=0, le=1, description="share of max_connections in use allowed")
    max_db_size_gb: float = Field(0.0, ge=0, description="database size allowed in GB (0: no limit)")
    pending_write_hours: float = Field(4.0, gt=0, description="dual-write batches pending longer are reported")
    incident: bool = Field(False, description="write the escalation zip under reports/incidents/")
    incident_hours: int = Field(24, ge=1, description="hours of run log in the escalation zip")

    def limits(self) -> Limits:
        from dataclasses import fields

        from opsbook.ops.health import Limits

        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})


# --- the work --------------------------------------------------------------------------------


def run(ctx: RunContext, plan: None) -> Result:
    """Check once; mark the dead runs failed and write the escalation zip when asked to."""
    from opsbook.ops import health, incident

    params: Params = ctx.params
    findings = health.check(ctx.run_id, params.limits(), mark_stuck=params.mark_stuck)
    bundle = None
    if params.incident:
        bundle = incident.write_bundle(findings, params.incident_hours, _runs_index(), params.notebook_parameters())
    return Result(params, findings, bundle)


def _runs_index() -> list[dict]:
    """``reports/runs.jsonl``: where each run's report is (for runs whose row does not say)."""
    from opsbook.report import index

    try:
        return index.read_runs()
    except OSError:
        return []


@dataclass
class Result:
    params: Params
    findings: Findings
    bundle: Bundle | None = None

    def verdict(self) -> Verdict:
        f = self.findings
        breaches = f.breaches()
        figures = f.figures()
        if breaches:
            summary = f"{len(breaches)} threshold(s) breached: " + "; ".join(breaches)
            failed = Verdict.failed(summary, figures, _anchor_of(f), CheckFailed)
            return replace(failed, next_step=_next_step(f, self.params))
        monitored = [s for s in f.sync if s.monitored]
        alive = [r for r in f.running if r.state in ("alive", "unknown")]
        summary = (
            f"{len(monitored)} scheduled procedure(s) succeeded within their lag, no failed run in 24 h, "
            f"no stuck run, no blocked session or long query; database {f.database.size}, "
            f"{f.database.used}/{f.database.max_connections} connections"
        )
        if f.abandoned:
            summary += f"; {len(f.abandoned)} interactive run(s) abandoned (kernel gone), marked as such"
        if alive:
            listed = ", ".join(f"{r.run_id} ({r.state}: {r.evidence})" for r in alive)
            return Verdict("warn", f"{summary}; but {len(alive)} run(s) still going past the limit: {listed}", figures)
        return Verdict("pass", summary, figures)


def _next_step(f: Findings, params: Params) -> str | None:
    """What to do about the breaches health knows the way out of (None: the generic step)."""
    from opsbook.run import nextstep

    steps = []
    late = [s.procedure for s in f.sync if s.breaches]
    if late:
        steps.append(
            "read the sync status in this report, then run or fix the late procedure(s) "
            + ", ".join(dict.fromkeys(late))
            + " (their last reports are in reports/index.html)"
        )
    if any(not r.marked for r in f.stuck):
        steps.append("mark the runs whose process is gone failed: `python run_notebook.py health -p mark_stuck=true`")
    if any(not p["tomorrow present"] for p in f.partitions):
        steps.append("make the coming days' partitions: `python run_notebook.py rollups -p partitions_ahead=7`")
    if not steps:
        return None
    rerun = nextstep.rerun_command("health", params.notebook_parameters(), nextstep.defaults_of(Params))
    return "; ".join(steps) + f"; then check again: `{rerun}`"


def _anchor_of(f: Findings) -> str:
    if any(s.breaches for s in f.sync):
        return "health-sync"
    if f.stuck:
        return "health-stuck"
    if f.long_queries or f.blocked:
        return "health-locks"
    return "health-database"


# --- presentation ----------------------------------------------------------------------------


def _rows_trend(daily_rows: dict[str, int | None]) -> str:
    def short(n: int | None) -> str:
        if n is None:
            return "·"
        for unit, size in (("M", 1e6), ("k", 1e3)):
            if n >= size:
                return f"{n / size:.3g}{unit}"
        return str(n)

    return " ".join(short(v) for v in daily_rows.values())


def show_sync(result: Result):
    """One row per procedure and dataset: last success against its limit, failures, row trend."""
    from opsbook import report
    from opsbook.ops.sessions import ts

    f, p = result.findings, result.params
    rows = [
        {
            "procedure": s.procedure,
            "dataset": s.dataset or "",
            "scheduled": s.monitored,
            "last success (UTC)": ts(s.last_success) or "never",
            "hours since": round(s.lag_h, 1) if s.lag_h is not None else None,
            "limit (h)": s.threshold_h,
            "failures 24h": s.failures_24h,
            f"runs {p.trend_days}d": s.runs,
            f"rows per day, last {p.trend_days}d": _rows_trend(s.daily_rows),
            "last run rows": s.last_rows,
            "median before": round(s.baseline_rows) if s.baseline_rows is not None else None,
            "status": s.status,
            "why": "; ".join(s.breaches),
        }
        for s in f.sync
    ]
    values = p.notebook_parameters()
    expected, lags = values["expected"], values["lag_hours"]
    return report.table(
        rows,
        caption=(
            f"Per procedure and dataset, from opsbook.runs at {ts(f.checked_at)}; scheduled: "
            f"{expected or 'none'} (limits {lags}). Rows per day: the rows written by "
            "that day's last successful run, oldest day first (· no successful run)"
        ),
        status_column="status",
        element_id="health-sync",
    )


STATUS_COLOURS = {
    "success": "#1a7f37",
    "warn": "#bf8700",
    "failed": "#cf222e",
    "running": "#0969da",
    "abandoned": "#8c959f",
}


def show_runs_chart(result: Result):
    """Runs per day by status over the trend window."""
    import plotly.graph_objects as go

    from opsbook import report
    from opsbook.ops.health import trend_days

    f = result.findings
    days = trend_days(f.checked_at, result.params.trend_days)
    counts = {(d["day"], d["status"]): d["runs"] for d in f.daily}
    fig = go.Figure()
    for status, colour in STATUS_COLOURS.items():
        fig.add_trace(go.Bar(name=status, x=days, y=[counts.get((d, status), 0) for d in days], marker_color=colour))
    fig.update_layout(
        barmode="stack",
        title=f"Runs per day by status, last {result.params.trend_days} days (all procedures)",
        xaxis_title="day (UTC)",
        yaxis_title="runs",
        height=360,
        margin={"t": 50, "b": 40},
    )
    return report.chart(fig, element_id="health-runs-chart")


def show_running(result: Result):
    """Runs still 'running' past the limit, and whether their process is still there."""
    from opsbook import report
    from opsbook.ops.sessions import ts

    f, p = result.findings, result.params
    rows = [
        {
            "run id": r.run_id,
            "procedure": r.procedure,
            "dataset": r.dataset or "",
            "host / pid": f"{r.host} / {r.pid}",
            "started (UTC)": ts(r.started_at),
            "minutes": round(r.minutes),
            "process": r.state,
            "evidence": r.evidence,
            "marked": ("abandoned" if r.state == "abandoned" else "failed") if r.marked else "",
            "status": r.status,
        }
        for r in f.running
    ]
    action = (
        "mark_stuck=true: runs whose process is gone were marked failed."
        if p.mark_stuck
        else "mark_stuck=false: nothing was changed; rerun with -p mark_stuck=true to mark the dead runs failed."
    )
    return report.stack(
        report.table(
            rows,
            caption=f"Runs still 'running' after {p.stuck_after_minutes} min, and interactive runs whose "
            "kernel is gone (this health run left out)",
            status_column="status",
            element_id="health-stuck",
        ),
        report.note(
            "A run is alive when a connection of it is open, a lock it took is held, or, on this host "
            f"({f.host}), its runner or kernel process still exists. {action} An interactive run (started "
            "in JupyterLab) whose kernel is gone is marked abandoned: not a failure, it never reached its verdict."
        ),
    )


def show_locks(result: Result):
    """Sessions waiting on a lock, with their blocker, and statements open too long."""
    from opsbook import report

    f, p = result.findings, result.params
    waits = [
        {
            "waiting session": b.blocked_pid,
            "application": b.blocked_application or "",
            "waited (s)": round(b.waited_s, 1),
            "on": b.lock,
            "blocked by": b.blocking_pid,
            "blocker application": b.blocking_application or "",
            "blocker state": b.blocking_state or "",
            "blocker query": b.blocking_query,
            "waiting query": b.blocked_query,
            "status": "fail" if b.waited_s > p.blocked_seconds else "warn",
        }
        for b in f.blocked
    ]
    long = [
        {
            "session": q.pid,
            "user": q.user or "",
            "application": q.application or "",
            "state": q.state or "",
            "seconds": round(q.seconds),
            "waiting on": q.wait or "",
            "query": q.query,
            "status": "fail",
        }
        for q in f.long_queries
    ]
    return report.stack(
        report.table(
            waits,
            caption=f"Sessions waiting on a lock in {f.database.name} (fail past {p.blocked_seconds} s)",
            status_column="status",
            element_id="health-locks",
            raw_columns=("blocker query", "waiting query"),
        ),
        report.table(
            long,
            caption=f"Statements or transactions open longer than {p.long_query_seconds} s in {f.database.name}",
            status_column="status",
            element_id="health-long-queries",
            raw_columns=("query",),
        ),
    )


def show_database(result: Result):
    """Size, connections against max_connections, dual-write batches still pending, and the
    partitions ahead of the tables partitioned by day."""
    from opsbook import report
    from opsbook.ops.sessions import one_line, ts

    p, db = result.params, result.findings.database
    share = db.used / db.max_connections if db.max_connections else 0
    size_ok = not p.max_db_size_gb or db.size_bytes <= p.max_db_size_gb * 1024**3
    figures = [
        {
            "figure": "database size",
            "value": f"{db.size} ({db.size_bytes:,} bytes)",
            "limit": f"{p.max_db_size_gb:g} GB" if p.max_db_size_gb else "none",
            "status": "pass" if size_ok else "fail",
        },
        {
            "figure": "connections in use (whole server)",
            "value": f"{db.used} of {db.max_connections} ({share:.0%})",
            "limit": f"{p.max_connections_used:.0%}",
            "status": "pass" if share <= p.max_connections_used else "fail",
        },
    ]
    pending = report.table(
        [
            {
                "dataset": w["dataset"],
                "target": w["target"],
                "pending": w["pending"],
                f"over {p.pending_write_hours:g} h": w["older"],
                "oldest (UTC)": ts(w["oldest"]),
                "attempts": w["attempts"],
                "last error": one_line(w["last_error"], 160),
                "status": "fail" if w["older"] else "warn",
            }
            for w in db.pending
        ],
        caption="Dual-write batches pending in opsbook.writes",
        status_column="status",
        element_id="health-pending",
    )
    partitions = report.table(
        [{**row, "status": "pass" if row["tomorrow present"] else "fail"} for row in result.findings.partitions],
        caption="Tables partitioned by day: their partitions from today on (tomorrow's must exist before "
        "its first insert)",
        status_column="status",
        element_id="health-partitions",
    )
    return report.stack(
        report.table(figures, caption=f"Database {db.name}", status_column="status", element_id="health-database"),
        report.table(
            [{"state": k, "connections": v} for k, v in db.connections.items()],
            caption="Client connections by state (all databases on the server)",
        ),
        pending,
        partitions,
    )


def show_bundle(result: Result):
    """The escalation zip, linked from the report, and what it holds."""
    import html
    import os

    from opsbook import report
    from opsbook.report.html import ReportPaths

    if result.bundle is None:
        return report.note("incident=false: no escalation bundle written (rerun with -p incident=true to write one).")
    here = ReportPaths.for_run(result.findings.run_id).html.parent
    href = os.path.relpath(result.bundle.path, here)
    link = report.Html(
        f'<p>Escalation bundle: <a href="{html.escape(href)}">{html.escape(result.bundle.path.name)}</a> '
        f"({result.bundle.bytes:,} bytes) in {html.escape(str(result.bundle.path.parent))}</p>",
        f"Escalation bundle: {result.bundle.path} ({result.bundle.bytes:,} bytes)",
    )
    return report.stack(
        link,
        report.table(
            [{"file": name} for name in result.bundle.files],
            caption="Contents (every file redacted of the configured secrets)",
            element_id="health-bundle",
        ),
    )
