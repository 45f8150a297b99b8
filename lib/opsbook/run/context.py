"""The first and last call of every notebook: :func:`start` and :meth:`RunContext.finish`.

Under the runner, the run id comes from ``OPSBOOK_RUN_ID`` and the runner keeps the run log.
Opened in JupyterLab, the notebook is an interactive run: it gets its own id and writes its
own run-log row, so every run leaves a trace. Library code and tests build a context that
records nothing with :func:`make`.

Every procedure takes the same arguments: ``plan(ctx)`` where it plans, then
``run(ctx, plan)``; ``ctx.params`` holds the typed, validated parameters.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from opsbook.errors import OpsbookError
from opsbook.run.params import ProcedureParams, validate
from opsbook.run.verdict import RUN_STATUS, Verdict

RUN_ID_ENV = "OPSBOOK_RUN_ID"
FAILURE = "failure"  # the recorded name of an expected error that ended the run, with its exit code


def new_run_id(procedure: str) -> str:
    """Sortable and readable: ``20261122T003712Z-load-3fa9c1``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{procedure}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """One run of a procedure: its id, its typed parameters, how it reports progress."""

    run_id: str
    procedure: str
    checked_params: ProcedureParams
    interactive: bool = False
    recorded: bool = False  # whether this context writes the run's row (interactive runs)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended: bool = False  # finish() has recorded the verdict (and written the report)

    @property
    def params(self) -> ProcedureParams:
        """The run's parameters. In JupyterLab, a step refuses to go on when a parameter was
        changed in the notebook since the setup cell ran (it would work on the old value), or
        when the run has ended (its report is written: a step now would belong to no run)."""
        if self.recorded:
            _refuse_ended(self)
            _refuse_stale(self)
        return self.checked_params

    def progress(self, title: str, total: int | None = None):
        """A progress display in the notebook whose lines also reach the runner's stderr."""
        from opsbook.run.progress import Progress

        return Progress(title, total, label=self.procedure)

    def finish(self, outcome: Any, **figures: Any) -> None:
        """Record the verdict (of a result, or a Verdict itself) and any extra figures, show it,
        and raise the verdict's error when it failed (its class carries the exit code)."""
        from IPython.display import display

        from opsbook import report
        from opsbook.run import nextstep, results

        if self.recorded:
            _refuse_ended(self)
        verdict = outcome if isinstance(outcome, Verdict) else outcome.verdict()
        verdict = replace(
            verdict, next_step=nextstep.for_verdict(verdict, self.procedure, self.run_id, self.checked_params)
        )
        for name, value in figures.items():
            results.record(name, value)
        results.record(results.VERDICT, verdict.as_dict())
        display(report.verdict(verdict))
        if self.recorded:
            self.ended = True
            _finish_interactive(self, verdict)
        verdict.raise_if_failed()


def make(procedure: str, run_id: str | None = None, **values: Any) -> RunContext:
    """A context for calling a procedure from Python (a test, a script): parameters validated,
    nothing recorded."""
    from opsbook import procedures

    params = validate(procedures.get(procedure).Params, values)
    return RunContext(run_id or new_run_id(procedure), procedure, params)


def start(procedure: str, **values: Any) -> RunContext:
    """Validate the notebook's parameters against the procedure's model and identify the run."""
    from opsbook import procedures
    from opsbook.run import process

    params = validate(procedures.get(procedure).Params, values)
    run_id = os.environ.get(RUN_ID_ENV)
    interactive = not run_id
    if not interactive:
        process.die_with_parent()  # the runner gone (killed, timed out), the run stops with it
    ctx = RunContext(run_id or new_run_id(procedure), procedure, params, interactive, recorded=interactive)
    _record_expected_errors(one_line=interactive)
    if interactive:
        from opsbook.run import interactive as session

        _log_interactive_start(ctx)
        session.begin(ctx, values)
    return ctx


def _refuse_ended(ctx: RunContext) -> None:
    from opsbook.errors import StaleParameters

    if ctx.ended:
        raise StaleParameters(
            f"run {ctx.run_id} has ended (its verdict and report are written): run the setup cell "
            "(opsbook.start) to start a new run, then this cell"
        )


def _refuse_stale(ctx: RunContext) -> None:
    from opsbook.errors import StaleParameters
    from opsbook.run import interactive as session

    recorder = session.active()
    if recorder is None or recorder.ctx is not ctx:
        return
    changed = recorder.stale()
    if changed:
        what = ", ".join(f"{name} {was!r} -> {now!r}" for name, (was, now) in changed.items())
        raise StaleParameters(
            f"parameters changed since the setup cell ran ({what}): run the setup cell "
            "(opsbook.start) again, then this cell"
        )


def _record_expected_errors(one_line: bool) -> None:
    """In a kernel: an OpsbookError a cell raises records its exit code (for the runner) before
    the error is shown: as its one line to an analyst in JupyterLab (it says what is wrong and
    what to do), with its traceback in a headless run's executed notebook."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        from opsbook.run import results

        results.record(
            FAILURE, {"error_type": etype.__name__, "exit_code": value.exit_code, "message": str(value)[:2000]}
        )
        if one_line:
            shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])
        else:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    shell.set_custom_exc((OpsbookError,), handler)


def _log_interactive_start(ctx: RunContext) -> None:
    from opsbook.history import runs, schema
    from opsbook.run.redaction import Redactor
    from opsbook.stores import postgres

    values = ctx.checked_params.notebook_parameters()
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        schema.ensure_schema(conn)
        runs.start(
            conn,
            ctx.run_id,
            ctx.procedure,
            values.get("dataset"),
            window_of(values),
            Redactor().scrub(values),
            interactive=True,
        )


def _finish_interactive(ctx: RunContext, verdict: Verdict) -> None:
    """In a kernel: the run's report, runs.jsonl entry and index, as a headless run leaves them;
    elsewhere (a script) the run-log row only."""
    from IPython.display import Markdown, display

    from opsbook.run import interactive as session

    recorder = session.active()
    if recorder is None or recorder.ctx is not ctx:
        _log_interactive_finish(ctx, verdict)
        return
    session.end(recorder)
    try:
        outcome = session.publish(ctx, verdict, recorder)
    except Exception as exc:  # no report (a reports folder that cannot be written): the run log still ends
        _log_interactive_finish(ctx, verdict)
        display(Markdown(f"**The run's report could not be written**: {type(exc).__name__}: {exc}"))
        return
    if outcome.html is not None:
        html = outcome.html
        display(Markdown(f"Report: `{html}` (listed in `{html.parent.parent / 'index.html'}`)"))
    if outcome.status != verdict.status:  # a secret redacted (WARN), a report not written (FAIL)
        notes = "; ".join(outcome.notes)
        recorded = f"**Recorded as {outcome.status.upper()}**: {outcome.summary}"
        display(Markdown(recorded + (f" ({notes})" if notes else "")))
        if outcome.status == "fail" and verdict.status != "fail":
            from opsbook.errors import ProcedureFailed

            raise ProcedureFailed(outcome.summary)


def _log_interactive_finish(ctx: RunContext, verdict: Verdict) -> None:
    from opsbook.history import runs
    from opsbook.run.redaction import Redactor
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        runs.finish(
            conn,
            ctx.run_id,
            RUN_STATUS[verdict.status],
            verdict.exit_code,
            verdict.rows_in,
            verdict.rows_out,
            verdict.rows_rejected,
            Redactor()(verdict.summary) if verdict.status == "fail" else None,
            only_running=True,
        )


def window_of(values: dict[str, Any]) -> str | None:
    """The partition window a run covers, from whichever parameter names it."""
    for name in ("window", "years", "date_window"):
        if values.get(name):
            return str(values[name])
    return None
