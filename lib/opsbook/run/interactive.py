"""Runs started in JupyterLab: recorded as they run, reported like headless runs.

From :func:`opsbook.start` on, the kernel records every cell the analyst runs, in the order
they ran, with what each showed (displays, printed text, its result, its error). ``finish``
turns that record into the run's executed notebook and HTML report, next to the headless
runs' ones, appends it to ``runs.jsonl`` and rewrites the index: the report shows what was run,
including cells run twice or out of order.

While the run is open the kernel beats its run-log row's ``heartbeat_at`` every
:data:`HEARTBEAT_S` seconds. A run whose kernel is gone (closed, restarted, crashed) is marked
``abandoned`` by the next ``health``: it is not a failure, nothing was swapped in half-made
(every procedure's writes are transactional), and the report of a later run replaces it.

The setup cell holds the parameters the run was started with. A later cell run after a
parameter was changed, but without rerunning the setup cell, would work on the old values:
:meth:`Recorder.stale` names the changed parameters and the procedure refuses the step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsbook.errors import OpsbookError

if TYPE_CHECKING:
    from opsbook.run.context import RunContext
    from opsbook.run.verdict import Verdict

HEARTBEAT_S = 60.0
# a run on another host whose heartbeat is older than this is abandoned (its kernel is gone)
STALE_AFTER_S = 10 * HEARTBEAT_S
SETUP_CALL = "opsbook.start("

_active: Recorder | None = None  # the recorder of the kernel's open run


def shell():
    """The IPython shell this code runs in, or None (a script, a test)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return None
    return get_ipython()


class Recorder:
    """Every cell run in the kernel since the run started, with its outputs."""

    def __init__(self, shell, ctx: RunContext, given: dict[str, Any]):
        self.shell = shell
        self.ctx = ctx
        self.given = dict(given)  # the values opsbook.start was called with
        self.cells: list[Any] = []
        self.current = None
        self._by_display_id: dict[str, list[dict]] = {}
        self._streams: list[tuple[Any, Any, Any]] = []  # (stream, its write before, the recording write)
        self._beat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # --- recording ----------------------------------------------------------------------

    def install(self) -> Recorder:
        import nbformat

        history = self.shell.user_ns.get("_ih") or [""]
        # the setup cell is running now: its source is the last input
        self.current = nbformat.v4.new_code_cell(history[-1], execution_count=self.shell.execution_count)
        self.cells.append(self.current)
        self.shell.events.register("pre_run_cell", self._pre_run_cell)
        self.shell.events.register("post_run_cell", self._post_run_cell)
        if hasattr(self.shell.display_pub, "register_hook"):  # ipykernel: every display passes here
            self.shell.display_pub.register_hook(self._display)
        self._tee_streams()
        return self

    def uninstall(self) -> None:
        self._beat.set()
        with contextlib.suppress(ValueError):
            self.shell.events.unregister("pre_run_cell", self._pre_run_cell)
        with contextlib.suppress(ValueError):
            self.shell.events.unregister("post_run_cell", self._post_run_cell)
        if hasattr(self.shell.display_pub, "unregister_hook"):
            self.shell.display_pub.unregister_hook(self._display)
        self._untee_streams()

    def _tee_streams(self) -> None:
        """Record what the cell prints: ``write`` of stdout and stderr wrapped for the cell. IPython
        9 wraps and restores it around each cell the same way, so it is wrapped again as each cell
        starts, inside IPython's own wrapper."""
        self._untee_streams()
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            wrapped = stream.__dict__.get("write") if hasattr(stream, "__dict__") else None

            def write(text, *args, _write=stream.write, _name=name, **kwargs):
                self._stream(_name, text)
                return _write(text, *args, **kwargs)

            try:
                stream.write = write
            except AttributeError:  # a stream whose write cannot be replaced: not recorded
                continue
            self._streams.append((stream, wrapped, write))

    def _untee_streams(self) -> None:
        for stream, wrapped, mine in self._streams:
            if stream.__dict__.get("write") is mine:
                if wrapped is None:
                    del stream.write  # the class's own write again
                else:
                    stream.write = wrapped
        self._streams.clear()

    def _pre_run_cell(self, info) -> None:
        import nbformat

        self.current = nbformat.v4.new_code_cell(info.raw_cell or "")
        self.cells.append(self.current)
        self._tee_streams()

    def _post_run_cell(self, result) -> None:
        import nbformat

        cell = self.current
        if cell is None:
            return
        cell.execution_count = result.execution_count
        if result.result is not None:
            data, metadata = self.shell.display_formatter.format(result.result)
            cell.outputs.append(
                nbformat.v4.new_output(
                    "execute_result", data=data, metadata=metadata, execution_count=result.execution_count
                )
            )
        error = result.error_in_exec or result.error_before_exec
        if error is not None and not any(o.get("output_type") == "error" for o in cell.outputs):
            cell.outputs.append(error_output(error))

    def _display(self, msg):
        kind = msg.get("header", {}).get("msg_type") or msg.get("msg_type")
        content = msg.get("content", {})
        if kind in ("display_data", "update_display_data") and self.current is not None:
            import nbformat

            display_id = (content.get("transient") or {}).get("display_id")
            if kind == "update_display_data":
                for output in self._by_display_id.get(display_id, []):
                    output["data"], output["metadata"] = content.get("data", {}), content.get("metadata", {})
            else:
                output = nbformat.v4.new_output(
                    "display_data", data=content.get("data", {}), metadata=content.get("metadata", {})
                )
                self.current.outputs.append(output)
                if display_id:
                    self._by_display_id.setdefault(display_id, []).append(output)
        return msg  # shown as usual

    def _stream(self, name: str, text: str) -> None:
        if self.current is None or not text:
            return
        import nbformat

        outputs = self.current.outputs
        if outputs and outputs[-1].get("output_type") == "stream" and outputs[-1].get("name") == name:
            outputs[-1]["text"] += text
        else:
            outputs.append(nbformat.v4.new_output("stream", name=name, text=text))

    # --- the run's report ------------------------------------------------------------------

    def notebook(self, verdict: Verdict | None = None):
        """What was run, as a notebook: the procedure's description, the parameters the run
        started with, then every cell run since, in order; a failing verdict ends in its error."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "opsbook", "display_name": "opsbook", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nb.metadata["opsbook"] = {"interactive": True, "source": str(source_notebook() or "")}
        intro = description_of(source_notebook())
        nb.cells.append(nbformat.v4.new_markdown_cell(intro or f"# {self.ctx.procedure}"))
        nb.cells.append(
            nbformat.v4.new_markdown_cell(
                "Run interactively in JupyterLab: the cells below are the ones run after the setup cell, "
                "in the order they ran (a cell run twice is shown twice)."
            )
        )
        parameters = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in self.given.items()))
        parameters.metadata["tags"] = ["parameters"]
        nb.cells.append(parameters)
        cells = [dict(c) for c in self.cells]
        nb.cells.extend(nbformat.from_dict(c) for c in cells)
        if verdict is not None and verdict.status == "fail" and nb.cells:
            error = (verdict.error or OpsbookError)(verdict.summary)
            last = nb.cells[-1]
            last.outputs.append(error_output(error))
            last.metadata["papermill"] = {"exception": True}
        return nb

    def stale(self) -> dict[str, tuple[Any, Any]]:
        """The parameters whose variable in the notebook no longer holds the value the run
        started with: ``{name: (started with, now)}``."""
        names = self.shell.user_ns
        changed = {}
        for name, value in self.given.items():
            if name in names and not _same(names[name], value):
                changed[name] = (value, names[name])
        return changed

    # --- heartbeat -----------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(target=self._beat_loop, name="opsbook-heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat_loop(self) -> None:
        from opsbook.history import runs
        from opsbook.stores import postgres

        while not self._beat.wait(HEARTBEAT_S):
            # a missed beat is noticed only after STALE_AFTER_S
            with (
                contextlib.suppress(Exception),
                postgres.connection(autocommit=True, purpose=f"run {self.ctx.run_id}") as conn,
            ):
                runs.heartbeat(conn, self.ctx.run_id)


def _same(a: Any, b: Any) -> bool:
    if a is b:  # the same object (a NaN too, which is not equal to itself)
        return True
    try:
        return bool(a == b)
    except Exception:  # an object that cannot be compared (an array): compared by identity
        return a is b


def error_output(error: BaseException):
    """An error as the notebook shows it: an opsbook error as its one line (it says what
    failed in words), any other with its traceback."""
    import nbformat

    name = type(error).__name__
    if isinstance(error, OpsbookError):
        lines = [f"{name}: {error}"]
    else:
        lines = [line.rstrip("\n") for line in traceback.format_exception(error)]
    return nbformat.v4.new_output("error", ename=name, evalue=str(error), traceback=lines)


def source_notebook() -> Path | None:
    """The notebook file the kernel serves, as Jupyter names it to the kernel (JupyterLab and
    Notebook set ``JPY_SESSION_NAME``), when it is on this machine."""
    name = os.environ.get("JPY_SESSION_NAME")
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        path = Path.cwd() / path
    return path if path.suffix == ".ipynb" and path.is_file() else None


def description_of(path: Path | None) -> str | None:
    """The first Markdown cell of a notebook (its title and description), if it can be read."""
    if path is None:
        return None
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return None
    return next((c.source for c in nb.cells if c.cell_type == "markdown"), None)


# --- the run's life in the kernel ------------------------------------------------------------


def begin(ctx: RunContext, given: dict[str, Any]) -> Recorder | None:
    """Start recording the kernel's cells for the run ``ctx`` (None outside a kernel). A run
    still open in this kernel (its setup cell run again) is marked abandoned first."""
    global _active
    ip = shell()
    if ip is None:
        return None
    if _active is not None:
        previous, _active = _active, None
        previous.uninstall()
        mark_abandoned(previous.ctx, f"the setup cell was run again in the same kernel (run {ctx.run_id})")
    _active = Recorder(ip, ctx, given).install()
    _active.start_heartbeat()
    return _active


def active() -> Recorder | None:
    return _active


def end(recorder: Recorder) -> None:
    global _active
    recorder.uninstall()
    if _active is recorder:
        _active = None


def publish(ctx: RunContext, verdict: Verdict, recorder: Recorder | None):
    """Write the run's report, runs.jsonl entry, index and run-log row as the runner does for a
    headless run; returns the run's outcome (as recorded: a secret found while redacting makes
    a PASS a WARN, a report not written makes it a FAIL)."""
    from opsbook.run import publish as ending

    duration = (datetime.now(UTC) - ctx.started).total_seconds()
    nb = recorder.notebook(verdict) if recorder is not None else None
    outcome = ending.outcome_of_verdict(ctx, verdict, duration)
    return ending.publish(outcome, nb, recorded=True)


def mark_abandoned(ctx: RunContext, why: str) -> None:
    from opsbook.history import runs
    from opsbook.run.publish import append_abandoned
    from opsbook.stores import postgres

    note = f"abandoned: {why}; it never reached its verdict"
    with contextlib.suppress(Exception), postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        row = runs.mark_abandoned(conn, ctx.run_id, note)
        if row is not None:
            append_abandoned(row, note)
