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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from opsbook import config, procedures
from opsbook.errors import EXIT_CODES, UsageError
from opsbook.run import nextstep
from opsbook.run import options as options_mod
from opsbook.run.context import FAILURE, RUN_ID_ENV, new_run_id, window_of
from opsbook.run.notebooks import NotebookInfo
from opsbook.run.options import (
    DEFAULT_KERNEL,
    Options,
    check_kernel,
    failure_text,
    output_path,
    working_directory,
    write_output,
)
from opsbook.run.params import ProcedureParams, resolve
from opsbook.run.publish import Outcome, RunLog, publish, report_paths
from opsbook.run.redaction import Redactor


@dataclass(frozen=True)
class Target:
    """What to run: a registered procedure, or a notebook file given by path."""

    name: str
    notebook: Path
    model: type[ProcedureParams] | None
    info: NotebookInfo | None = None  # a notebook given by path: its kernel, language, parameters
    given_as: str = ""  # as the command line named it (the rerun command repeats it)

    @property
    def procedure(self) -> bool:
        return self.info is None


def resolve_target(name: str) -> Target:
    from opsbook.errors import UsageError

    if name.endswith(".ipynb"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"notebook {name} does not exist")
        from opsbook.run import notebooks

        info = notebooks.inspect(path)
        return Target(path.stem, path, notebooks.model_from_notebook(info), info, name)
    entry = procedures.entry(name)
    module = procedures.get(name)
    notebook = config.notebooks_dir() / entry.notebook
    if not notebook.is_file():
        raise UsageError(f"procedure {name!r}: its notebook {notebook} is missing")
    return Target(name, notebook, module.Params, given_as=name)


def describe_parameters(name: str) -> str:
    """What --help-params prints: each parameter, its type and default."""
    target = resolve_target(name)
    if target.info is not None:
        from opsbook.run.notebooks import describe

        return describe(target.info)
    lines = [f"{name}: {procedures.PROCEDURES[name].summary}"]
    for field_name, field in target.model.model_fields.items():
        default = target.model.model_fields[field_name].default
        kind = getattr(field.annotation, "__name__", str(field.annotation))
        lines.append(f"  {field_name:<20} {kind:<10} default {default!r}  {field.description or ''}".rstrip())
    return "\n".join(lines)


def prepare(
    name: str, files: list[Path], overrides: list[str], inline: dict | None = None, raw: list[str] | None = None
) -> tuple[Target, dict[str, Any], dict[str, Any]]:
    """Resolve the target and its parameters without starting anything (exit 2 on any problem):
    the target, the run's values and the notebook's defaults."""
    target = resolve_target(name)
    from opsbook.run.nextstep import defaults_of

    values = resolve(target.model, files, overrides, inline, raw or []).notebook_parameters()
    return target, values, defaults_of(target.model)


def execute(
    name: str,
    files: list[Path] | None = None,
    overrides: list[str] | None = None,
    timeout: float | None = None,
    progress: TextIO | None = sys.stderr,
    self_contained: bool = False,
    options: Options | None = None,
    inline: dict[str, Any] | None = None,
    raw: list[str] | None = None,
) -> Outcome:
    """Run one procedure (or notebook) end to end and return its outcome (never raises for a
    failed run); ``self_contained`` writes its report with plotly.js inlined (to be mailed
    alone); ``options`` are papermill's (kernel, working directory, output path...)."""
    from opsbook.run import signals

    options = options or Options()
    target, values, defaults = prepare(name, list(files or []), list(overrides or []), inline, raw)
    output = output_path(options.output, values)
    kernel, cwd = _kernel_and_cwd(target, options)
    _probe_locks(target, values)
    run_id = new_run_id(target.name)
    redact = Redactor()
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    paths = report_paths(run_id)
    notes: list[str] = []
    safe_params = redact.scrub(values)
    dataset, window = values.get("dataset"), window_of(values)

    # a stop signal while the notebook runs stops it (see opsbook.run.signals); one arriving
    # later waits until the report is written
    with signals.trap() as trap:
        log = RunLog(run_id, notes)
        log.start(target.name, dataset, window, safe_params)
        nb, error_text, exit_code = _run_notebook(target, values, run_id, timeout, progress, trap, kernel, cwd, options)
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
        exited = options_mod.ended_by_exit_zero(nb) if nb is not None and exit_code == 0 else None
        ended_early = None
        if exited is not None:  # papermill's success: the notebook ended itself there
            options_mod.tidy_exit_zero(nb, exited)
            left = sum(1 for c in nb.cells[exited + 1 :] if c.cell_type == "code")
            ended_early = f"the notebook ended itself with sys.exit(0) in cell {exited + 1}" + (
                f"; the {left} code cell(s) after it did not run" if left else ""
            )
            notes.append(ended_early)
        if nb is not None:
            # papermill was given the cells (the troubleshooting ones left out): it names them as
            # its input; the input is the notebook's file
            nb.metadata.setdefault("papermill", {})["input_path"] = str(target.notebook)
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
        if ended_early and not verdict:
            summary = f"completed: {ended_early}"
        rerun = nextstep.rerun_command(target.given_as or target.name, values, defaults)
        next_step = verdict.get("next_step") or nextstep.suggest(
            status, exit_code, run_id, rerun, verdict.get("anchor"), timeout
        )

        outcome = Outcome(
            run_id,
            target.name,
            status,
            summary,
            exit_code=exit_code,
            results=results,
            error=error_text,
            duration_s=duration,
            notes=notes,
            dataset=dataset,
            window=window,
            params=safe_params,
            started_at=started_at,
            verdict=verdict,
            next_step=next_step,
        )
        publish(outcome, nb, log=log, redact=redact, paths=paths, self_contained=self_contained)
        if output and nb is not None:
            try:
                write_output(nb, output, redact)
            except OSError as exc:
                outcome.notes.append(f"output notebook {output} not written: {exc}")
        return outcome


def _kernel_and_cwd(target: Target, options: Options) -> tuple[str, Path]:
    """The kernel (-k, else the notebook's kernelspec; a procedure runs in this Python) and where
    it starts; a kernel not installed here is refused (exit 2) before anything starts."""
    if target.procedure:
        kernel = options.kernel or DEFAULT_KERNEL
    else:
        kernel = options.kernel or target.info.kernel or DEFAULT_KERNEL
    check_kernel(kernel, target.notebook)
    return kernel, working_directory(options.cwd, target.procedure, config.project_root())


def prepare_only(
    name: str,
    output: str,
    files: list[Path] | None = None,
    overrides: list[str] | None = None,
    options: Options | None = None,
    inline: dict[str, Any] | None = None,
    raw: list[str] | None = None,
) -> Path:
    """papermill's --prepare-only: the notebook with its parameters injected (by the translator
    of its language), written to ``output`` without running it."""
    import papermill

    # papermill's own warnings (a language it cannot inspect, values it does not find in the
    # cell) repeat what the runner checked, or could not, above
    logging.getLogger("papermill").setLevel(logging.ERROR)
    options = options or Options()
    target, values, _ = prepare(name, list(files or []), list(overrides or []), inline, raw)
    if output == "-":
        raise UsageError("--prepare-only writes the prepared notebook to an output path: give one")
    output = output_path(output, values)
    kernel = options.kernel or (target.info.kernel if target.info else None) or DEFAULT_KERNEL
    language = target.info.language if target.info else "python"
    papermill.execute_notebook(
        _headless(target.notebook),
        output,
        parameters=values,
        kernel_name=kernel,
        language=language,
        prepare_only=True,
        report_mode=options.report_mode,
        progress_bar=False,
    )
    _name_input(Path(output), target.notebook)
    return Path(output)


def _name_input(path: Path, notebook: Path) -> None:
    """papermill records the input it was given: the notebook's path, not the cells it ran."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.setdefault("papermill", {})["input_path"] = str(notebook)
    nbformat.write(nb, path)


def signal_names(numbers: list[int]) -> list[str]:
    import signal

    return [signal.Signals(n).name for n in numbers]


def _probe_locks(target: Target, values: dict[str, Any]) -> None:
    """Refuse at once (LockHeld, exit 4) when a lock the procedure takes is already held.

    The notebook takes the lock for real; probing first saves starting a kernel for a run
    that cannot go on (cron overlapping itself, a second backfill of a dataset).
    """
    if not target.procedure:
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


def _run_notebook(
    target: Target,
    values: dict[str, Any],
    run_id: str,
    timeout: float | None,
    progress: TextIO | None,
    trap,
    kernel: str,
    cwd: Path,
    options: Options,
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
    hooks.log_output = sys.stderr if options.log_output else None
    try:
        relay.start()
        hooks.trap = trap
        nb = papermill.execute_notebook(
            _headless(target.notebook),
            None,
            parameters=values,
            engine_name=engine.ENGINE_NAME,
            kernel_name=kernel,
            language=target.info.language if target.info else "python",
            progress_bar=False,
            cwd=str(cwd),
            report_mode=options.report_mode,
            opsbook_hooks=hooks,
            config=_kernel_config(kernel_dir),
        )
        return nb, None, 0
    except PapermillExecutionError as exc:
        nb = hooks.nb_man.nb if hooks.nb_man else None
        return nb, failure_text(exc.ename, exc.evalue, nb), None
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


TROUBLESHOOTING_TAG = "troubleshooting"


def _headless(path: Path):
    """The notebook as a headless run executes it: without the cells tagged ``troubleshooting``
    (an analyst's investigation queries, run by hand when a run went wrong)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if TROUBLESHOOTING_TAG not in c.get("metadata", {}).get("tags", [])]
    return nb


def _drop_papermill_error_cells(nb) -> None:
    """Papermill adds a red "An Exception was encountered" cell and an anchor; the report's
    banner already says so and links the failing cell, so they are left out."""
    from papermill.execute import ERROR_MARKER_TAG

    nb.cells = [c for c in nb.cells if ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]


# a Unix socket's path holds at most 107 bytes; the kernel's are <folder>/kernel-<n>
_SOCKET_PATH_MAX = 100


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
