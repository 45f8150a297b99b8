"""The first and last call of every notebook: :func:`start` and :meth:`RunContext.finish`.

Under the runner, the run id comes from ``OPSBOOK_RUN_ID`` and the runner keeps the run log.
Opened in JupyterLab, the notebook is an interactive run: it gets its own id and writes its
own run-log row, so every run leaves a trace.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opsbook import procedures
from opsbook.errors import error_class
from opsbook.params import ProcedureParams, validate
from opsbook.verdict import RUN_STATUS, Verdict

RUN_ID_ENV = "OPSBOOK_RUN_ID"


def new_run_id(procedure: str) -> str:
    """Sortable and readable: ``20261122T003712Z-load-3fa9c1``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{procedure}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    run_id: str
    procedure: str
    params: ProcedureParams
    interactive: bool
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def finish(self, verdict: Verdict, **figures: Any) -> None:
        """Record the verdict (and any extra figures), show it, and raise when it failed.

        The exception's type carries the exit code: CheckFailed exits 1, other failures 3.
        """
        from IPython.display import display

        from opsbook import report, results

        for name, value in figures.items():
            results.record(name, value)
        results.record(results.VERDICT, verdict.as_dict())
        display(report.verdict(verdict))
        if self.interactive:
            _log_interactive_finish(self, verdict)
        if verdict.status == "fail":
            raise error_class(verdict.error_type)(verdict.error or verdict.summary)


def start(procedure: str, **values: Any) -> RunContext:
    """Validate the notebook's parameters against the procedure's model and identify the run."""
    module = procedures.get(procedure)
    params = validate(module.Params, values)
    run_id = os.environ.get(RUN_ID_ENV)
    interactive = not run_id
    if not interactive:
        from opsbook.runlog import die_with_parent

        die_with_parent()  # the runner gone (killed, timed out), the run stops with it
    ctx = RunContext(run_id or new_run_id(procedure), procedure, params, interactive)
    if interactive:
        _log_interactive_start(ctx)
    return ctx


def _log_interactive_start(ctx: RunContext) -> None:
    from opsbook import runlog
    from opsbook.redaction import Redactor
    from opsbook.stores import postgres

    values = ctx.params.notebook_parameters()
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        runlog.ensure_schema(conn)
        runlog.start_run(
            conn,
            ctx.run_id,
            ctx.procedure,
            values.get("dataset"),
            window_of(values),
            Redactor().scrub(values),
            interactive=True,
        )


def _log_interactive_finish(ctx: RunContext, verdict: Verdict) -> None:
    from opsbook import runlog
    from opsbook.errors import exit_code_for
    from opsbook.redaction import Redactor
    from opsbook.stores import postgres

    code = 0 if verdict.status != "fail" else exit_code_for(verdict.error_type)
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        runlog.finish_run(
            conn,
            ctx.run_id,
            RUN_STATUS[verdict.status],
            code,
            verdict.rows_in,
            verdict.rows_out,
            verdict.rows_rejected,
            Redactor()(verdict.error or "") or None,
        )


def window_of(values: dict[str, Any]) -> str | None:
    """The partition window a run covers, from whichever parameter names it."""
    for name in ("window", "years", "date_window"):
        if values.get(name):
            return str(values[name])
    return None
