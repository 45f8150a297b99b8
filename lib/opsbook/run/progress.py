"""Progress of long work, one API for both readers: the notebook and the terminal.

A procedure reports progress through a :class:`Progress` (``ctx.progress(title, total)``):
each line updates one display in the notebook and, under the headless runner, goes to the
runner's stderr too. Inside a kernel, stderr belongs to the notebook, not to the terminal that
started the run; the runner therefore names a file in ``OPSBOOK_PROGRESS_FILE``, lines are
appended to it (:func:`emit`), and the runner's :class:`Relay` copies new lines to its own
stderr as they come. Opened in JupyterLab (no such variable), only the notebook shows them.
"""

from __future__ import annotations

import html
import os
import threading
import time
from pathlib import Path
from typing import TextIO

PROGRESS_ENV = "OPSBOOK_PROGRESS_FILE"


def emit(line: str) -> None:
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")


def eta(done: int, total: int, elapsed: float) -> str:
    if not done or done >= total:
        return "0s" if done >= total else "?"
    seconds = elapsed / done * (total - done)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


class Relay:
    """Copies lines appended to a file to a stream, from a background thread (the runner's side)."""

    def __init__(self, path: Path, stream: TextIO | None, prefix: str = ""):
        self.path, self.stream, self.prefix = path, stream, prefix
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._offset = 0
        self._thread = threading.Thread(target=self._run, name="opsbook-progress", daemon=True)

    def start(self) -> Relay:
        self.path.touch()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Copy what is left and stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.copy()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.copy()
            time.sleep(0.2)

    def copy(self) -> None:
        """Copy the lines appended since the last call."""
        if self.stream is None:
            return
        with self._lock:
            self._copy_locked()

    def _copy_locked(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        if complete:
            self._offset += len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                self.stream.write(f"{self.prefix}{line}\n")
            self.stream.flush()


class Progress:
    """An updating display in the notebook, with a bar when ``total`` is known; each finished
    line also goes to the runner's stderr (prefixed with ``label``)."""

    def __init__(self, title: str, total: int | None = None, label: str = ""):
        self.title = title
        self.label = label  # prefix of the stderr lines, e.g. "backfill"
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._transient = False
        self._handle = _display_handle(title)

    def __call__(self, message: str, transient: bool = False) -> None:
        """Show a line; a transient one ("loading 2016...") is replaced by the next line."""
        elapsed = time.monotonic() - self.started
        if self._transient and self.lines:
            self.lines.pop()
        self._transient = transient
        if not transient:
            self.done += 1
            emit(f"{self.label}: {message}" if self.label else message)
        self.lines.append(f"[{elapsed:6.1f}s] {message}")
        if self._handle is not None:
            from opsbook.report.display import Html

            body = "<br>".join(html.escape(line) for line in self.lines[-30:])
            if self.total:
                shown = min(self.done, self.total)
                body = (
                    f'<progress value="{shown}" max="{self.total}" style="width:320px"></progress> '
                    f"{shown}/{self.total}<br>{body}"
                )
            self._handle.update(
                Html(
                    f"<div><strong>{html.escape(self.title)}</strong><br><code>{body}</code></div>",
                    "\n".join([self.title, *self.lines]),
                )
            )


def _display_handle(title: str):
    """A display to update in place, when running inside IPython; None elsewhere (without
    importing IPython, which a script or a pool worker need not pay for)."""
    import sys

    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython
    from IPython.display import display

    if get_ipython() is None:
        return None
    from opsbook.report.display import Html

    return display(Html("", title), display_id=True)
