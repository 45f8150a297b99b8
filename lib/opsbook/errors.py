"""The errors opsbook expects, each carrying the exit code the runner returns for it.

Exit codes (also in ``run_notebook.py --help`` and the README):

==  =====================================================
0   ok (warnings included)
1   a check failed (or, for a backfill, some partition did)
2   bad usage or parameters
3   the notebook raised
4   another run holds the lock
5   timeout
6   the kernel died
129 stopped by SIGHUP (128 + the signal's number)
130 stopped by SIGINT (Ctrl-C)
143 stopped by SIGTERM (timeout, cron, systemd)
==  =====================================================
"""

from __future__ import annotations

EXIT_CODES: dict[int, str] = {
    0: "ok (warnings included)",
    1: "a check failed (or, for a backfill, some partition did)",
    2: "bad usage or parameters",
    3: "the notebook raised",
    4: "another run holds the lock",
    5: "timeout",
    6: "the kernel died",
    129: "stopped by SIGHUP",
    130: "stopped by SIGINT",
    143: "stopped by SIGTERM",
}


class OpsbookError(Exception):
    """Base of every expected failure; ``exit_code`` is what the runner exits with."""

    exit_code = 3


class UsageError(OpsbookError):
    """Bad command line, parameter or parameters file."""

    exit_code = 2


class StaleParameters(UsageError):
    """A notebook cell run after its parameters changed, without running the setup cell again."""


class CheckFailed(OpsbookError):
    """An error-severity check failed; the run completed and its report says which."""

    exit_code = 1


class SourceError(OpsbookError):
    """Input that cannot be read at all: a missing folder, a truncated ZIP, an unknown header.

    Rows that can be read but are malformed are quarantined instead, never raised.
    """

    exit_code = 3


class ServiceError(OpsbookError):
    """A database, cache or object store could not be reached or started."""

    exit_code = 3


class ProcedureFailed(OpsbookError):
    """The procedure finished its work but part of it failed (a year, a partition, a write)."""

    exit_code = 3


class PartitionsFailed(OpsbookError):
    """A backfill finished, and some of its partitions failed (exit 1)."""

    exit_code = 1


class Interrupted(OpsbookError):
    """Work stopped before it committed (its coordinator died, or it was asked to stop)."""

    exit_code = 3


class LockHeld(OpsbookError):
    """Another run holds the lock this run needs."""

    exit_code = 4


class RunTimeout(OpsbookError):
    """The run exceeded ``--timeout``."""

    exit_code = 5


class KernelDied(OpsbookError):
    """The notebook's kernel died (killed, out of memory, crashed)."""

    exit_code = 6


def in_one_line(exc: BaseException, limit: int = 1000) -> str:
    """An error as one line for a report or a ledger: an opsbook error's first line (it says what
    failed in words), any other's type and first line; redacted, at most ``limit`` characters."""
    from opsbook.run.redaction import redact

    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return redact(line if isinstance(exc, OpsbookError) else f"{type(exc).__name__}: {line}")[:limit]
