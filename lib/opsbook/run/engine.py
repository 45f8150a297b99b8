"""A papermill engine that reports each cell on stderr and enforces a whole-run deadline.

It is papermill's own nbclient engine with two hooks: one progress line per code cell as it
completes, and a per-cell timeout equal to the time left before the run's deadline (papermill's
``execution_timeout`` is per cell; cron wants a limit on the whole run).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from papermill.engines import NBClientEngine, papermill_engines

ENGINE_NAME = "opsbook"


@dataclass
class Hooks:
    """Shared between the runner and the engine for one execution."""

    label: str
    stream: TextIO | None = sys.stderr
    deadline: float | None = None  # time.monotonic() value
    nb_man: Any = None  # papermill's NotebookExecutionManager, kept to read a failed notebook
    relay: Any = None  # opsbook.run.progress.Relay: flushed before each cell's line, to keep the order
    cell_seconds: dict[int, float] = field(default_factory=dict)
    failed_cell: int | None = None
    kernel_log: str | None = None  # the kernel process's own stdout and stderr go here, not to the terminal
    trap: Any = None  # opsbook.run.signals.Trap: a stop signal interrupts the kernel (it gets the client)
    log_output: TextIO | None = None  # --log-output: the cells' outputs are written here as they come

    def time_left(self) -> float | None:
        if self.deadline is None:
            return None
        return max(1.0, self.deadline - time.monotonic())


def _describe(cells, index: int) -> str:
    """What a cell does, for a progress line: the heading above it, else its first line."""
    cell = cells[index]
    tags = cell.get("metadata", {}).get("tags", [])
    if "injected-parameters" in tags:
        return "parameters (injected)"
    if "parameters" in tags:
        return "parameters (defaults)"
    for previous in reversed(cells[:index]):
        if previous.cell_type == "markdown":
            for line in previous.source.splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip()[:60]
        elif previous.cell_type == "code":
            break
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return first.strip()[:60]


def _exited_zero(cell) -> bool:
    """The cell ended the notebook with sys.exit(0): a success to papermill, not a failed cell."""
    return any(
        o.get("output_type") == "error" and o.get("ename") == "SystemExit" and str(o.get("evalue")) in ("", "0")
        for o in cell.get("outputs", [])
    )


class OpsbookEngine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, opsbook_hooks: Hooks | None = None, **kwargs):
        hooks = opsbook_hooks or Hooks("notebook", stream=None)
        hooks.nb_man = nb_man
        cells = nb_man.nb.cells
        code_cells = [i for i, c in enumerate(cells) if c.cell_type == "code"]
        position = {index: n for n, index in enumerate(code_cells, 1)}
        started: dict[int, float] = {}
        original_start, original_complete, original_exception = (
            nb_man.cell_start,
            nb_man.cell_complete,
            nb_man.cell_exception,
        )

        def cell_start(cell, cell_index=None, **kw):
            started[cell_index] = time.monotonic()
            if hooks.trap is not None:
                hooks.trap.before_cell()  # a stop signal received meanwhile: no further cell starts
            return original_start(cell, cell_index, **kw)

        def cell_exception(cell, cell_index=None, **kw):
            hooks.failed_cell = cell_index
            return original_exception(cell, cell_index, **kw)

        def cell_complete(cell, cell_index=None, **kw):
            if hooks.trap is not None:
                hooks.trap.after_cell()
            result = original_complete(cell, cell_index, **kw)
            if cell_index in position:
                seconds = time.monotonic() - started.get(cell_index, time.monotonic())
                hooks.cell_seconds[cell_index] = seconds
                if hooks.relay is not None:
                    hooks.relay.copy()
                if hooks.stream is not None:
                    state = "FAILED" if hooks.failed_cell == cell_index and not _exited_zero(cell) else "ok"
                    hooks.stream.write(
                        f"[{hooks.label} {position[cell_index]:>2}/{len(code_cells)}] {state:<6} "
                        f"{seconds:7.2f}s  {_describe(cells, cell_index)}\n"
                    )
                    hooks.stream.flush()
            return result

        nb_man.cell_start, nb_man.cell_complete, nb_man.cell_exception = cell_start, cell_complete, cell_exception
        if hooks.deadline is not None:
            kwargs["timeout_func"] = lambda cell: hooks.time_left()
        return cls._execute_logged(nb_man, kernel_name, hooks, **kwargs)

    @classmethod
    def _execute_logged(cls, nb_man, kernel_name, hooks: Hooks, start_timeout=60, execution_timeout=None, **kwargs):
        """As NBClientEngine does, handing the client to the signal trap (which interrupts its
        kernel), with the kernel process's output in a log file: its own log lines (shutdown
        notices, warnings) are not the run's output."""
        from papermill.clientwrap import PapermillNotebookClient
        from papermill.engines import logger
        from papermill.utils import merge_kwargs, remove_args

        kwargs = remove_args(["input_path", "log_output", "stdout_file", "stderr_file"], **kwargs)
        safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(
            safe_kwargs,
            timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
        )
        client = PapermillNotebookClient(nb_man, **final_kwargs)
        if hooks.trap is not None:
            hooks.trap.client = client
        if hooks.log_output is not None:
            client.stdout_file = client.stderr_file = hooks.log_output
        if hooks.kernel_log is None:
            return client.execute()
        with open(hooks.kernel_log, "ab") as log:
            return client.execute(stdout=log, stderr=log)


papermill_engines.register(ENGINE_NAME, OpsbookEngine)
