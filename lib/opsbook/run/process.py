"""The life of the processes a run starts: a kernel dies with its runner, a pool worker stops
working for a coordinator that is gone."""

from __future__ import annotations

import os
import signal
import sys

_coordinator_pid: int | None = None


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG).

    A headless run's kernel calls it, so that killing the runner (cron's timeout, kill -9)
    stops the work at once instead of letting it run on unseen. Elsewhere it does nothing.
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def watch_coordinator(pid: int) -> None:
    """In a pool worker: die with the process that started it, and never commit for a dead one."""
    global _coordinator_pid
    _coordinator_pid = pid
    die_with_parent()


def stop_if_orphaned() -> None:
    """Raise Interrupted in a pool worker whose coordinator is gone (checked between blocks of work)."""
    if _coordinator_pid is not None and os.getppid() != _coordinator_pid:
        from opsbook.errors import Interrupted

        raise Interrupted("the process that started this partition is gone; stopping without committing")
