"""Stopping a run on SIGTERM, SIGINT or SIGHUP without leaving half-made state.

``timeout``, cron, systemd and a terminal's Ctrl-C stop a run with a signal. The runner does
not die of it; it stops the notebook the way Jupyter's "interrupt" does:

1. a cell running: the kernel gets SIGINT, ``KeyboardInterrupt`` in that cell, so the
   procedure's ``finally`` blocks run (staging tables dropped, locks released, open
   transactions rolled back, a waiting query cancelled), and papermill ends the run at that
   cell; no cell running (before the first, between two): the next cell does not start;
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
        self.busy = False  # a cell is executing (the engine says when one starts and ends)
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
        if len(self.received) == 1 and self.busy:
            self.interrupt()

    def interrupt(self) -> None:
        """Interrupt the running cell (an idle kernel ignores SIGINT: then the engine keeps the
        next cell from starting), and arm the kill that follows the grace period."""
        import psutil

        pid = kernel_pid(self.client)
        if pid is None or self._timer is not None:
            return
        try:
            kernel = psutil.Process(pid)
            kernel.send_signal(signal.SIGINT)
        except psutil.Error:
            return
        self.outcome = "the kernel was interrupted"
        self._timer = threading.Timer(grace_seconds(), self._kill, args=(kernel,))
        self._timer.daemon = True
        self._timer.start()

    def before_cell(self) -> None:
        """Called as a cell is about to start: a stop signal received meanwhile ends the run
        here (Stopped), else the cell counts as running."""
        if self.received:
            self.outcome = self.outcome or "no further cell was started"
            raise Stopped(self.received[0])
        self.busy = True

    def after_cell(self) -> None:
        self.busy = False

    def _kill(self, kernel) -> None:
        if kill_process_tree(kernel):
            self.outcome = f"the kernel did not stop within {grace_seconds():g}s of the interrupt and was killed"

    def cancel(self) -> None:
        """The notebook has ended: no kill is due any more."""
        if self._timer is not None:
            self._timer.cancel()


class Stopped(Exception):
    """A stop signal came between two cells: the next one is not started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def trap() -> Iterator[Trap]:
    """Handle SIGTERM, SIGINT and SIGHUP for the block (main thread only; elsewhere the trap
    records nothing)."""
    caught = Trap()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    # a signal ignored by whoever started the run (nohup ignores SIGHUP) stays ignored
    previous = {s: signal.getsignal(s) for s in HANDLED}
    previous = {s: signal.signal(s, caught._handle) for s, h in previous.items() if h is not signal.SIG_IGN}
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


def kill_process_tree(root) -> bool:
    """SIGKILL a process (a psutil.Process, so a reused pid is never hit) and its descendants;
    True when anything was still alive."""
    import psutil

    try:
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(family, timeout=5)
    return True
