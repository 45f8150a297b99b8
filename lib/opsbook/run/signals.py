"""Stopping a run on SIGTERM, SIGINT or SIGHUP without leaving half-made state.

``timeout``, cron, systemd and a terminal's Ctrl-C stop a run with a signal. The runner does
not die of it; it stops the notebook the way Jupyter's "interrupt" does:

1. the kernel gets SIGINT: ``KeyboardInterrupt`` in the running cell, so the procedure's
   ``finally`` blocks run (staging tables dropped, locks released, open transactions rolled
   back, a waiting query cancelled), and papermill ends the run at that cell; a signal that
   comes before the first cell interrupts the first cell as it starts;
2. a kernel still busy ``OPSBOOK_STOP_GRACE`` seconds later (default 20: stuck in a call that
   cannot be interrupted) is killed, with its child processes;
3. the runner marks the run's ledger entries still 'running' as interrupted, and reports the
   run as failed with the signal as its reason: executed notebook, HTML report, runs.jsonl
   line, run log, JSON; exit code 128 + the signal's number (130 SIGINT, 143 SIGTERM, 129 SIGHUP).

Further signals while this happens are recorded and otherwise ignored: the stop is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def grace_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("OPSBOOK_STOP_GRACE", "20")))
    except ValueError:
        return 20.0


class Trap:
    """The stop signals a run received, and the kernel to interrupt when one comes."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.client = None  # the nbclient NotebookClient, once the engine has made it
        self.outcome = ""  # what stopping the kernel did, in words
        self._timer: threading.Timer | None = None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None

    @property
    def exit_code(self) -> int | None:
        return 128 + self.received[0] if self.received else None

    def _handle(self, signum, frame) -> None:
        self.received.append(signum)
        if len(self.received) == 1:
            self.interrupt()

    def interrupt(self) -> None:
        """Interrupt the kernel if it runs (else the first cell is, as it starts), and arm the
        kill that follows the grace period. Safe to call more than once."""
        pid = kernel_pid(self.client)
        if pid is None or self._timer is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
            self.outcome = "the kernel was interrupted"
        self._timer = threading.Timer(grace_seconds(), self._kill, args=(pid,))
        self._timer.daemon = True
        self._timer.start()

    def _kill(self, pid: int) -> None:
        if kill_process_tree(pid):
            self.outcome = f"the kernel did not stop within {grace_seconds():g}s of the interrupt and was killed"

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def trap() -> Iterator[Trap]:
    """Handle SIGTERM, SIGINT and SIGHUP for the block (main thread only; elsewhere the trap
    records nothing)."""
    caught = Trap()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, caught._handle) for s in HANDLED}
    try:
        yield caught
    finally:
        caught.cancel()
        for s, h in previous.items():
            signal.signal(s, h)


def kernel_pid(client) -> int | None:
    km = getattr(client, "km", None)
    process = getattr(getattr(km, "provisioner", None), "process", None)
    return getattr(process, "pid", None)


def kill_process_tree(pid: int) -> bool:
    """SIGKILL a process and its descendants; True when anything was still alive."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(family, timeout=5)
    return True
