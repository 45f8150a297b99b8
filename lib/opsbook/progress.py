"""Progress lines for long procedures, as the headless runner shows them.

Inside a kernel, stderr goes to the notebook, not to the terminal that started the run. The
runner therefore names a file in ``OPSBOOK_PROGRESS_FILE``; procedures append one line per
unit of work to it (:func:`emit`), and the runner copies new lines to its own stderr as they
come. Opened in JupyterLab (no such variable), :func:`emit` does nothing: the notebook shows
its own progress display.
"""

from __future__ import annotations

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
