"""What every finished run leaves, headless or interactive: the executed notebook and HTML
report (redacted), its runs.jsonl entry and the index, its run-log row, its metrics.

The runner (:mod:`opsbook.run.runner`) ends each headless run here; the kernel of a run started
in JupyterLab (:mod:`opsbook.run.interactive`) ends its run here too, so both kinds are listed,
reported and judged alike.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from opsbook import config
from opsbook.errors import EXIT_CODES
from opsbook.run import nextstep
from opsbook.run.context import window_of
from opsbook.run.redaction import Redactor
from opsbook.run.verdict import RUN_STATUS


@dataclass
class Outcome:
    """How a run ended, and where its report is."""

    run_id: str
    procedure: str
    status: str  # pass | warn | fail
    summary: str
    exit_code: int = 0
    ipynb: Path | None = None
    html: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None
    window: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # redacted
    started_at: datetime | None = None
    verdict: dict[str, Any] = field(default_factory=dict)  # as the notebook recorded it
    sha256: str | None = None  # of the executed notebook as written
    interactive: bool = False  # run cell by cell in JupyterLab, not by the runner
    next_step: str | None = None  # for a FAIL or WARN: what to do, with the command(s)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "procedure": self.procedure,
            "summary": self.summary,
            "reports": {
                "ipynb": str(self.ipynb) if self.ipynb else None,
                "html": str(self.html) if self.html else None,
            },
            "results": self.results,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
            "notes": self.notes,
            "next_step": self.next_step,
        }


def publish(
    outcome: Outcome,
    nb,
    log: RunLog | None = None,
    redact: Redactor | None = None,
    paths=None,
    recorded: bool = False,
    self_contained: bool = False,
) -> Outcome:
    """Everything a finished run leaves, redacted: the executed notebook, the HTML report (a
    leak found while redacting turns PASS into WARN), the runs.jsonl entry and index, the
    run-log row. Headless runs and interactive ones (``recorded``: the kernel wrote the row's
    start) end here alike."""
    redact = redact or Redactor()
    paths = paths or report_paths(outcome.run_id)
    if log is None and recorded:
        log = RunLog(outcome.run_id, outcome.notes, ok=True)
    outcome.summary = redact(outcome.summary)
    outcome.results = redact.scrub(outcome.results)
    outcome.error = redact(outcome.error) if outcome.error else None
    outcome.verdict = redact.scrub(outcome.verdict)
    outcome.next_step = redact(outcome.next_step) if outcome.next_step else None
    if nb is not None:
        outcome.sha256 = _write_ipynb(nb, paths.ipynb, redact, outcome.notes)
        outcome.ipynb = paths.ipynb if outcome.sha256 else None
    if redact.leaks:
        outcome.notes.append("secret value(s) redacted from: " + ", ".join(redact.leaks))
        if outcome.status == "pass":
            outcome.status = "warn"
    if nb is not None:
        try:
            from opsbook.report import html

            html.export_html(nb, paths.html, _report_context(outcome, paths), redact, self_contained=self_contained)
            outcome.html = paths.html
        except Exception as exc:
            outcome.notes.append(f"HTML report not written: {type(exc).__name__}: {exc}")
        _unreported(outcome)
    _append_history(outcome, redact)
    _record_metrics(outcome)
    if log is not None:
        log.finish(outcome, redact)
    return outcome


def _record_metrics(outcome: Outcome) -> None:
    """The run's Prometheus metrics (textfile, and the Pushgateway when configured); a metrics
    folder or gateway that cannot be reached is a note, never the run's failure."""
    from opsbook.ops import metrics

    try:
        metrics.record(
            outcome.procedure,
            outcome.dataset,
            outcome.status,
            outcome.exit_code,
            outcome.duration_s,
            outcome.verdict,
        )
    except Exception as exc:
        outcome.notes.append(f"metrics not recorded: {type(exc).__name__}: {exc}")


def outcome_of_verdict(ctx, verdict, duration_s: float) -> Outcome:
    """The outcome of a run that ended in the kernel (an interactive run): its verdict decides."""
    values = ctx.checked_params.notebook_parameters()
    recorded = verdict.as_dict()
    return Outcome(
        ctx.run_id,
        ctx.procedure,
        verdict.status,
        verdict.summary,
        exit_code=verdict.exit_code,
        results={"verdict": recorded},
        error=f"{recorded['error_type']}: {verdict.summary}" if verdict.status == "fail" else None,
        duration_s=duration_s,
        dataset=values.get("dataset"),
        window=window_of(values),
        params=Redactor().scrub(values),
        started_at=ctx.started,
        verdict=recorded,
        interactive=True,
        next_step=verdict.next_step,
    )


def _unreported(outcome: Outcome) -> None:
    """A run whose executed notebook or HTML report could not be written is not signed off as
    passed: nobody can review it. It fails with exit 3, whatever its checks said."""
    from opsbook.errors import OpsbookError

    missing = [what for what, path in (("executed notebook", outcome.ipynb), ("HTML report", outcome.html)) if not path]
    if not missing or outcome.status == "fail":
        return
    outcome.summary = (
        f"the run's {' and '.join(missing)} could not be written (see the notes), so it cannot be reviewed; "
        f"it ended {outcome.status.upper()}: {outcome.summary}"
    )
    outcome.status, outcome.exit_code = "fail", OpsbookError.exit_code


def report_paths(run_id: str):
    """Where the run's reports go; a folder that cannot be written is a UsageError (exit 2)
    before anything starts, not a run that cannot leave its report."""
    from opsbook.errors import UsageError
    from opsbook.report.html import ReportPaths

    try:
        paths = ReportPaths.for_run(run_id)
        probe = paths.html.with_name(f".{run_id}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        where = os.environ.get("OPSBOOK_REPORTS_DIR") or str(config.project_root() / "reports")
        raise UsageError(
            f"the reports folder {where} cannot be written ({exc.strerror or exc}): every run leaves its "
            "report there. Fix its permissions or set OPSBOOK_REPORTS_DIR to a writable folder"
        ) from None
    return paths


def status_text(status: str, code: int | None) -> str:
    """``PASS (exit 0)``, ``WARN (exit 0: with warnings)``, ``FAIL (exit 1: a check failed)``."""
    if code == 0:
        return f"{status.upper()} (exit 0{': with warnings' if status == 'warn' else ''})"
    meaning = EXIT_CODES.get(code, "see the summary").split(" (")[0]
    return f"{status.upper()} (exit {code}: {meaning})"


def _write_ipynb(nb, path: Path, redact: Redactor, notes: list[str]) -> str | None:
    from opsbook.report import html

    try:
        return html.write_notebook(nb, path, redact)
    except Exception as exc:
        notes.append(f"executed notebook not written: {type(exc).__name__}: {exc}")
        return None


def _report_context(outcome: Outcome, paths) -> dict[str, Any]:
    """What the report template shows above the notebook: banner and run card."""
    from opsbook import __version__, services
    from opsbook.history import runs

    where = runs.origin()
    verdict = outcome.verdict
    index_href = os.path.relpath(config.reports_dir() / "index.html", paths.html.parent)
    failure_href = failure_label = None
    if outcome.status == "fail":
        anchor = verdict.get("anchor")
        if anchor:
            failure_href, failure_label = f"#{anchor}", "see the failing check"
        else:
            failure_href, failure_label = "#opsbook-failed-cell", "go to the failing cell"
    counts = [
        (label, f"{verdict[k]:,}")
        for k, label in (("rows_in", "in"), ("rows_out", "out"), ("rows_rejected", "quarantined"))
        if isinstance(verdict.get(k), int)
    ]
    card = [
        ("run id", outcome.run_id),
        ("procedure", outcome.procedure),
        ("dataset", outcome.dataset or ""),
        ("window", outcome.window or ""),
        ("parameters", ", ".join(f"{k}={_shown(v)}" for k, v in outcome.params.items())),
        ("status", status_text(outcome.status, outcome.exit_code)),
        ("started (UTC)", outcome.started_at.strftime("%Y-%m-%d %H:%M:%S") if outcome.started_at else ""),
        ("duration", f"{outcome.duration_s:.1f}s"),
        *([("rows " + " / ".join(label for label, _ in counts), " / ".join(n for _, n in counts))] if counts else []),
        ("database", services.database_label()),
        ("host / user", f"{where.host} / {where.os_user}"),
        ("run by", "JupyterLab, cell by cell (interactive)" if outcome.interactive else "run_notebook.py (headless)"),
        ("git revision", where.git_revision),
        ("opsbook version", __version__),
        ("executed notebook", f"{paths.ipynb.name} (SHA-256 {outcome.sha256})" if outcome.sha256 else "not written"),
    ]
    card.extend(("note", n) for n in outcome.notes)
    return {
        "status": outcome.status,
        "procedure": outcome.procedure,
        "dataset": outcome.dataset,
        "window": outcome.window,
        "summary": outcome.summary,
        "card": card,
        "index_href": index_href,
        "failure_href": failure_href,
        "failure_label": failure_label,
        "next_step": outcome.next_step,
        "next_step_html": nextstep.as_html(outcome.next_step, failure_href) if outcome.next_step else "",
    }


def _shown(value: Any) -> str:
    """A parameter value on the run card: an empty one as "" rather than nothing."""
    return '""' if value in ("", None) else str(value)


def _sha256_of(path: Path | None) -> str | None:
    import hashlib

    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _append_history(outcome: Outcome, redact: Redactor) -> None:
    from opsbook.report import index

    entry = {
        "run_id": outcome.run_id,
        "procedure": outcome.procedure,
        "dataset": outcome.dataset,
        "window": outcome.window,
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "started_at": outcome.started_at.isoformat() if outcome.started_at else None,
        "duration_s": round(outcome.duration_s, 3),
        "summary": outcome.summary,
        "next_step": outcome.next_step,
        "figures": outcome.verdict.get("figures") or {},
        "params": outcome.params,
        "ipynb": str(outcome.ipynb) if outcome.ipynb else None,
        "html": str(outcome.html) if outcome.html else None,
        "html_sha256": _sha256_of(outcome.html),
        "error": outcome.error,
        "interactive": outcome.interactive,
    }
    try:
        index.append_run(entry, redact)
    except Exception as exc:  # the run's row and report stand; the listing says what went wrong
        outcome.notes.append(f"runs.jsonl / index.html not updated: {type(exc).__name__}: {exc}")


def append_abandoned(row: dict[str, Any], note: str) -> None:
    """An interactive run marked abandoned, listed in runs.jsonl and the index as such."""
    from opsbook.report import index

    started = row.get("started_at")
    finished = row.get("finished_at")
    entry = {
        "run_id": row["run_id"],
        "procedure": row["procedure"],
        "dataset": row.get("dataset"),
        "window": row.get("window"),
        "status": "abandoned",
        "exit_code": None,
        "started_at": started.isoformat() if started else None,
        "duration_s": round((finished - started).total_seconds(), 3) if started and finished else None,
        "summary": note,
        "figures": {},
        "params": row.get("params") or {},
        "ipynb": None,
        "html": None,
        "error": None,
        "interactive": True,
    }
    with contextlib.suppress(OSError):
        index.append_run(entry, Redactor())


class RunLog:
    """The run's row in opsbook.runs; a database that cannot be reached does not stop the run
    (the notebook will report that), it is noted instead."""

    def __init__(self, run_id: str, notes: list[str], ok: bool = False):
        self.run_id = run_id
        self.notes = notes
        self.ok = ok  # the row exists (written here, or by the kernel of an interactive run)

    def start(self, procedure, dataset, window, params) -> None:
        from opsbook.history import runs, schema
        from opsbook.stores import postgres

        try:
            with postgres.connection(autocommit=True, purpose=f"runner {self.run_id}") as conn:
                schema.ensure_schema(conn)
                runs.start(conn, self.run_id, procedure, dataset, window, params)
            self.ok = True
        except Exception as exc:
            self.notes.append(f"run log not written: {exc}")

    def finish(self, outcome: Outcome, redact: Redactor) -> None:
        if not self.ok:
            return
        verdict = outcome.verdict
        from opsbook.history import runs
        from opsbook.stores import postgres

        try:
            with postgres.connection(autocommit=True, purpose=f"runner {self.run_id}") as conn:
                runs.finish(
                    conn,
                    self.run_id,
                    RUN_STATUS.get(outcome.status, "failed"),
                    outcome.exit_code,
                    verdict.get("rows_in"),
                    verdict.get("rows_out"),
                    verdict.get("rows_rejected"),
                    redact(outcome.error) if outcome.error else None,
                    str(outcome.ipynb) if outcome.ipynb else None,
                    str(outcome.html) if outcome.html else None,
                )
        except Exception as exc:
            outcome.notes.append(f"run log not finished: {exc}")

    def interrupt_ledger(self, note: str) -> None:
        """Mark this run's ledger entries still 'running' interrupted (its kernel is gone)."""
        from opsbook.history import ledger
        from opsbook.stores import postgres

        try:
            with postgres.connection(autocommit=True, purpose=f"runner {self.run_id}") as conn:
                ledger.interrupt_run(conn, self.run_id, note)
        except Exception as exc:
            self.notes.append(f"ledger entries of the run not marked interrupted: {exc}")
