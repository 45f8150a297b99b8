"""Run a procedure's notebook headless: validate, execute with papermill, report, exit code.

Order of work, so that a failed run still leaves its report and run-log row:

1. resolve the procedure and validate its parameters (UsageError, exit 2, before any kernel);
2. write the run-log row (status running);
3. execute with papermill through the opsbook engine (progress on stderr, deadline);
4. read the recorded verdict, classify the outcome and pick the exit code;
5. write the executed notebook and the HTML report (redacted), append runs.jsonl,
   rewrite index.html, finish the run-log row.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from opsbook import config, procedures
from opsbook.errors import EXIT_CODES
from opsbook.run.context import FAILURE, RUN_ID_ENV, new_run_id, window_of
from opsbook.run.params import ProcedureParams, resolve
from opsbook.run.redaction import Redactor
from opsbook.run.verdict import RUN_STATUS


@dataclass
class Outcome:
    """How a run ended, and where its report is."""

    run_id: str
    procedure: str
    status: str  # pass | warn | fail
    exit_code: int
    summary: str
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
        }


@dataclass(frozen=True)
class Target:
    """What to run: a registered procedure, or a notebook file given by path."""

    name: str
    notebook: Path
    model: type[ProcedureParams] | None


def resolve_target(name: str) -> Target:
    from opsbook.errors import UsageError

    if name.endswith(".ipynb"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"notebook {name} does not exist")
        return Target(path.stem, path, None)
    entry = procedures.entry(name)
    module = procedures.get(name)
    notebook = config.notebooks_dir() / entry.notebook
    if not notebook.is_file():
        raise UsageError(f"procedure {name!r}: its notebook {notebook} is missing")
    return Target(name, notebook, module.Params)


def prepare(name: str, files: list[Path], overrides: list[str]) -> tuple[Target, dict[str, Any]]:
    """Resolve the target and its parameters without starting anything (exit 2 on any problem)."""
    target = resolve_target(name)
    from opsbook.run.notebooks import model_from_notebook

    model = target.model or model_from_notebook(target.notebook)
    return target, resolve(model, files, overrides).notebook_parameters()


def execute(
    name: str,
    files: list[Path] | None = None,
    overrides: list[str] | None = None,
    timeout: float | None = None,
    progress: TextIO | None = sys.stderr,
) -> Outcome:
    """Run one procedure end to end and return its outcome (never raises for a failed run)."""
    from opsbook.run import signals

    target, values = prepare(name, list(files or []), list(overrides or []))
    _probe_locks(target, values)
    run_id = new_run_id(target.name)
    redact = Redactor()
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    paths = _report_paths(run_id)
    notes: list[str] = []
    safe_params = redact.scrub(values)
    dataset, window = values.get("dataset"), window_of(values)

    # a stop signal while the notebook runs stops it (see opsbook.run.signals); one arriving
    # later waits until the report is written
    with signals.trap() as trap:
        log = _RunLog(run_id, notes)
        log.start(target.name, dataset, window, safe_params)
        nb, error_text, exit_code = _run_notebook(target, values, run_id, timeout, progress, trap)
        if trap.received and exit_code == 0:  # every cell had run: the result stands
            notes.append(f"received {', '.join(signal_names(trap.received))} once the notebook had finished")
        elif trap.received:  # the run ends as stopped, whatever the interrupted cell raised
            how = trap.outcome or "before the notebook started"
            error_text, exit_code = f"stopped by {trap.name}: {how}; the run did not finish", trap.exit_code
            if progress is not None:
                progress.write(f"[{target.name}] {error_text}\n")
            log.interrupt_ledger(f"run {run_id} was stopped by {trap.name}")
            if len(trap.received) > 1:
                notes.append(f"received {', '.join(signal_names(trap.received))}; the first stopped the run")
        duration = time.monotonic() - t0

        results: dict[str, Any] = {}
        if nb is not None:
            _drop_papermill_error_cells(nb)
            try:
                from opsbook.run import results as results_mod

                results = results_mod.read(nb)
            except Exception as exc:  # a notebook that recorded nothing readable is still reported
                notes.append(f"could not read recorded results: {exc}")
        verdict = results.get("verdict") or {}
        if exit_code is None:  # the notebook raised: the error it recorded says how the run ends
            exit_code = _raised_exit_code(verdict, results.get(FAILURE))
        status, summary = _classify(exit_code, verdict, error_text)

        # artifacts, redacted; a leak found while redacting turns PASS into WARN
        outcome = Outcome(
            run_id,
            target.name,
            status,
            exit_code,
            redact(summary),
            results=redact.scrub(results),
            error=redact(error_text) if error_text else None,
            duration_s=duration,
            notes=notes,
            dataset=dataset,
            window=window,
            params=safe_params,
            started_at=started_at,
            verdict=redact.scrub(verdict),
        )
        if nb is not None:
            outcome.sha256 = _write_ipynb(nb, paths.ipynb, redact, notes)
            outcome.ipynb = paths.ipynb if outcome.sha256 else None
        if redact.leaks:
            notes.append("secret value(s) redacted from: " + ", ".join(redact.leaks))
            if outcome.status == "pass":
                outcome.status = "warn"
        if nb is not None:
            try:
                from opsbook.report import html

                html.export_html(nb, paths.html, _report_context(outcome, paths), redact)
                outcome.html = paths.html
            except Exception as exc:
                notes.append(f"HTML report not written: {type(exc).__name__}: {exc}")
            _unreported(outcome)
        _append_history(outcome, redact)
        log.finish(outcome, redact)
        return outcome


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


def signal_names(numbers: list[int]) -> list[str]:
    import signal

    return [signal.Signals(n).name for n in numbers]


def _probe_locks(target: Target, values: dict[str, Any]) -> None:
    """Refuse at once (LockHeld, exit 4) when a lock the procedure takes is already held.

    The notebook takes the lock for real; probing first saves starting a kernel for a run
    that cannot go on (cron overlapping itself, a second backfill of a dataset).
    """
    if target.model is None:
        return
    module = procedures.get(target.name)
    keys = module.locks(target.model(**values)) if hasattr(module, "locks") else []
    if not keys:
        return
    from opsbook.errors import LockHeld
    from opsbook.history import locks, schema
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose="lock probe") as conn:
        schema.ensure_schema(conn)
        for key in keys:
            if not locks.lock_is_free(conn, key):
                raise LockHeld(f"{key} is held by {locks.holder_of(conn, key)}")


def _report_paths(run_id: str):
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


def _run_notebook(
    target: Target, values: dict[str, Any], run_id: str, timeout: float | None, progress: TextIO | None, trap
):
    """Execute with papermill; returns (notebook or None, error text, exit code). The exit code is
    None when a cell raised: what the notebook recorded decides it."""

    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from opsbook.errors import KernelDied, OpsbookError, RunTimeout
    from opsbook.run import engine

    papermill_log = logging.getLogger("papermill")
    papermill_log.setLevel(logging.WARNING)
    if not any(isinstance(f, _SaidByTheRun) for f in papermill_log.filters):
        papermill_log.addFilter(_SaidByTheRun())
    kernel_dir = _kernel_dir()
    hooks = engine.Hooks(target.name, stream=progress, deadline=time.monotonic() + timeout if timeout else None)
    from opsbook.run.progress import PROGRESS_ENV, Relay

    env_before = {k: os.environ.get(k) for k in (RUN_ID_ENV, "PLOTLY_RENDERER", PROGRESS_ENV)}
    os.environ[RUN_ID_ENV] = run_id
    progress_file = Path(kernel_dir) / "progress.log"
    os.environ[PROGRESS_ENV] = str(progress_file)
    # the default mimetype renderer leaves plotly figures blank in the HTML export
    os.environ["PLOTLY_RENDERER"] = "notebook"
    relay = Relay(progress_file, progress, prefix=f"[{target.name}] ")
    hooks.relay = relay
    hooks.kernel_log = str(Path(kernel_dir) / "kernel.log")
    try:
        relay.start()
        hooks.trap = trap
        nb = papermill.execute_notebook(
            str(target.notebook),
            None,
            parameters=values,
            engine_name=engine.ENGINE_NAME,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(config.project_root()),
            opsbook_hooks=hooks,
            config=_kernel_config(kernel_dir),
        )
        return nb, None, 0
    except PapermillExecutionError as exc:
        nb = hooks.nb_man.nb if hooks.nb_man else None
        return nb, f"{exc.ename}: {exc.evalue}", None
    except CellTimeoutError:
        nb = hooks.nb_man.nb if hooks.nb_man else None
        return nb, f"the run exceeded --timeout {timeout:g}s", RunTimeout.exit_code
    except DeadKernelError as exc:
        nb = hooks.nb_man.nb if hooks.nb_man else None
        return nb, f"the kernel died: {exc}", KernelDied.exit_code
    except Exception as exc:  # kernel failed to start, or the engine itself broke
        nb = hooks.nb_man.nb if hooks.nb_man else None
        if "timed out" in str(exc).lower() and timeout:
            return nb, f"the run exceeded --timeout {timeout:g}s: {exc}", RunTimeout.exit_code
        return nb, f"{type(exc).__name__}: {exc}", OpsbookError.exit_code
    finally:
        trap.cancel()  # the kernel is gone: no kill is due
        relay.stop()
        shutil.rmtree(kernel_dir, ignore_errors=True)
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _drop_papermill_error_cells(nb) -> None:
    """Papermill adds a red "An Exception was encountered" cell and an anchor; the report's
    banner already says so and links the failing cell, so they are left out."""
    from papermill.execute import ERROR_MARKER_TAG

    nb.cells = [c for c in nb.cells if ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]


# a Unix socket's path holds at most 107 bytes; the kernel's are <folder>/kernel-<n>
_SOCKET_PATH_MAX = 100


def _status_text(status: str, code: int | None) -> str:
    """``PASS (exit 0)``, ``WARN (exit 0: with warnings)``, ``FAIL (exit 1: a check failed)``."""
    if code == 0:
        return f"{status.upper()} (exit 0{': with warnings' if status == 'warn' else ''})"
    return f"{status.upper()} (exit {code}: {EXIT_CODES.get(code, 'see the summary')})"


class _SaidByTheRun(logging.Filter):
    """Drops nbclient's own lines on a timeout or a dead kernel: the run reports both itself
    (exit 5 or 6, in the summary, the JSON and the report), and --quiet stays two lines."""

    SAID = ("Timeout waiting for execute reply", "Kernel died while waiting for execute reply")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.SAID)


def _kernel_dir() -> str:
    """A private folder for the kernel's sockets and logs: in the temporary folder, or in /tmp
    when that one's path is too long for a Unix socket."""
    folder = tempfile.mkdtemp(prefix="opsbook-kernel-")
    if len(os.fsencode(folder)) + len("/kernel-99") > _SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        os.rmdir(folder)
        folder = tempfile.mkdtemp(prefix="opsbook-kernel-", dir="/tmp")
    return folder


def _kernel_config(kernel_dir: str):
    """Talk to the kernel over Unix sockets in a private folder, not over unencrypted TCP."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(kernel_dir, "kernel")}})


def _raised_exit_code(verdict: dict[str, Any], failure: dict[str, Any] | None) -> int:
    """A failing verdict's exit code; else an expected error's (recorded as it was raised); else
    3, the notebook raised."""
    from opsbook.errors import OpsbookError

    if verdict.get("status") == "fail" and verdict.get("exit_code"):
        return int(verdict["exit_code"])
    if failure and failure.get("exit_code"):
        return int(failure["exit_code"])
    return OpsbookError.exit_code


def _classify(exit_code: int, verdict: dict[str, Any], error_text: str | None):
    if exit_code == 0:
        status = verdict.get("status") or "pass"
        summary = verdict.get("summary") or "completed (the notebook recorded no verdict)"
        return status, summary
    if verdict.get("summary"):
        return "fail", verdict["summary"]
    return "fail", error_text or EXIT_CODES.get(exit_code, "failed")


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
    counts = " / ".join(
        f"{verdict[k]:,}" if isinstance(verdict.get(k), int) else "-" for k in ("rows_in", "rows_out", "rows_rejected")
    )
    card = [
        ("run id", outcome.run_id),
        ("procedure", outcome.procedure),
        ("dataset", outcome.dataset or ""),
        ("window", outcome.window or ""),
        ("parameters", ", ".join(f"{k}={v}" for k, v in outcome.params.items())),
        ("status", _status_text(outcome.status, outcome.exit_code)),
        ("started (UTC)", outcome.started_at.strftime("%Y-%m-%d %H:%M:%S") if outcome.started_at else ""),
        ("duration", f"{outcome.duration_s:.1f}s"),
        ("rows in / out / quarantined", counts),
        ("database", services.database_label()),
        ("host / user", f"{where.host} / {where.os_user}"),
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
    }


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
        "figures": outcome.verdict.get("figures") or {},
        "params": outcome.params,
        "ipynb": str(outcome.ipynb) if outcome.ipynb else None,
        "html": str(outcome.html) if outcome.html else None,
        "error": outcome.error,
    }
    try:
        index.append_run(entry, redact)
    except OSError as exc:
        outcome.notes.append(f"runs.jsonl / index.html not updated: {exc}")


class _RunLog:
    """The run's row in opsbook.runs; a database that cannot be reached does not stop the run
    (the notebook will report that), it is noted instead."""

    def __init__(self, run_id: str, notes: list[str]):
        self.run_id = run_id
        self.notes = notes
        self.ok = False

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
