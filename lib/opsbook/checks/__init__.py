"""The check engine: declarative data checks, run inside the database (push-down SQL).

A suite (:mod:`.spec`, ``params/datasets/<dataset>.checks.yaml``) lists checks; each check has a
type, and each type is registered here by name with the code that runs it:

- types answered by the shared scan (``row_count``, ``coverage``, ``expected_totals``,
  ``not_null``, ``accepted_values``, ``range``, ``row_condition``, ``freshness``) give the
  aggregates they need; checks on the same table and filter share one aggregate scan grouped by
  the partition date (:mod:`.scan`), and each then judges its rows;
- the others run alone (``unique``, ``referential``, ``rows_per_group``, ``database_size``,
  ``free_disk``, ``redis_key``, ``redis_totals``, ``geometry``, ``empty_query``, ``read_back``).

A suite checks a dataset's table (its :class:`~opsbook.datasets.DatasetSpec`: the table and its
partition column) or any other table named by a :class:`Target` (the warehouse's
``core.weather``, filtered by ``observed_at``); a check may name another table of its own.

Failing rows are fetched (at most :data:`SAMPLE_ROWS`) only for checks that fail. A check that
cannot run at all (bad SQL, a missing table, Redis down) ends in status ``error``, which counts
as a failure of its severity; it never stops the other checks. Every procedure that judges data
(validate, the warehouse checkpoint, rollups, read-backs) runs its checks here and gets
:class:`CheckResult` back.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SAMPLE_ROWS = 20
# the modules that register check types (imported once, when a suite first runs)
TYPE_MODULES = ("rules", "totals", "keys", "groups", "system", "geometry", "queries", "readback")


@dataclass(frozen=True)
class Target:
    """What a suite checks when it is no dataset's table: ``table`` (``schema.table``) and the
    date, timestamp or year column the window filters (None: the window does not apply)."""

    table: str
    window_column: str | None = None

    def __post_init__(self) -> None:
        from opsbook.checks.spec import check_table_name
        from opsbook.datasets import check_identifier

        check_table_name(self.table)
        if self.window_column is not None:
            check_identifier(self.window_column, "column")


@dataclass
class CheckResult:
    name: str
    type: str
    severity: str
    status: str  # pass | fail (an error-severity check failed) | warn (a warn one did) | error
    observed: str
    expected: str
    message: str = ""
    failing: list[dict[str, Any]] = field(default_factory=list)  # a sample: rows or partitions
    failing_count: int | None = None
    engine: str = "PostgreSQL"
    seconds: float = 0.0

    @property
    def anchor(self) -> str:
        return f"check-{self.name}"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def record(self) -> dict[str, Any]:
        """The check's outcome as plain data, for ``--json`` readers and the run history."""
        return {
            "name": self.name,
            "type": self.type,
            "severity": self.severity,
            "status": self.status,
            "observed": self.observed,
            "expected": self.expected,
            "message": self.message,
        }


@dataclass
class PartitionCount:
    """Rows of one month of the dataset table against the reference, for the coverage chart."""

    year: int
    month: int
    rows: int
    expected: int | None


@dataclass
class SuiteResult:
    results: list[CheckResult]
    partitions: list[PartitionCount]
    reference: str | None
    seconds: float
    window: str = ""  # what was checked, in words: "2011-2022", "2024-11-01..2024-11-07"

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def errors(self) -> list[CheckResult]:
        """Failed or broken checks of severity error: they fail the run."""
        return errors_of(self.results)

    @property
    def warnings(self) -> list[CheckResult]:
        return warnings_of(self.results)


def errors_of(results: list[CheckResult]) -> list[CheckResult]:
    """The checks that fail a run: failed or broken, of severity error."""
    return [r for r in results if r.status in ("fail", "error") and r.severity == "error"]


def warnings_of(results: list[CheckResult]) -> list[CheckResult]:
    """The checks that did not pass but do not fail a run (warn, or a broken warn-severity one)."""
    errors = errors_of(results)
    return [r for r in results if not r.passed and r not in errors]


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckType:
    """How one type of check runs: alone (``run``), or on the shared scan (``aggregates`` names
    what it needs from the scan, ``evaluate`` judges the scanned rows)."""

    name: str
    run: Callable[..., CheckResult] | None = None
    aggregates: Callable[..., dict[str, str]] | None = None
    evaluate: Callable[..., CheckResult] | None = None

    @property
    def shared_scan(self) -> bool:
        return self.evaluate is not None


_TYPES: dict[str, CheckType] = {}
_loaded = False


def register(name: str, *, run=None, aggregates=None, evaluate=None) -> None:
    """Register the check type ``name`` (its model is in :mod:`.spec`)."""
    if (run is None) == (evaluate is None):
        raise TypeError(f"check type {name!r}: give either run, or aggregates and evaluate")
    _TYPES[name] = CheckType(name, run, aggregates, evaluate)


def check_type(name: str) -> CheckType:
    global _loaded
    if not _loaded:
        for module in TYPE_MODULES:
            importlib.import_module(f"opsbook.checks.{module}")
        _loaded = True
    try:
        return _TYPES[name]
    except KeyError:
        raise TypeError(f"no check type {name!r} is registered") from None


def registered() -> list[str]:
    check_type("row_count")  # loads the registry
    return sorted(_TYPES)


# --- running -----------------------------------------------------------------------------------


def outcome(check, failed: bool) -> str:
    """The status of a check that ran: pass, or fail / warn by its severity."""
    if not failed:
        return "pass"
    return "fail" if check.severity == "error" else "warn"


def error_result(check, exc: Exception) -> CheckResult:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        "error",
        "-",
        "-",
        f"the check could not run: {type(exc).__name__}: {message}",
    )


def run_suite(conn, spec, suite, window, reference: str | None = None, params: dict | None = None) -> SuiteResult:
    """Run every check of ``suite`` over ``window`` (a :class:`~opsbook.windows.Years` or
    :class:`~opsbook.windows.Days`, or what ``Years.parse`` reads; empty: every partition the
    table holds).

    ``spec`` is what the suite checks: a dataset's :class:`~opsbook.datasets.DatasetSpec`, a
    :class:`Target`, or None for a suite that reads no table (``read_back``; ``conn`` may then be
    None too). ``params`` are values a suite's queries may bind by name (``%(name)s``). Inside a
    transaction (a snapshot), each check runs in a savepoint, so one that cannot run leaves the
    others theirs."""
    from opsbook.checks import scan
    from opsbook.checks.context import Context
    from opsbook.windows import Days, Years

    t0 = time.monotonic()
    if not isinstance(window, Years | Days):
        window = Years.parse(window)
    ctx = Context(conn, spec, suite, window, reference or suite.default_reference, dict(params or {}))
    shared = [c for c in suite.checks if check_type(c.type).shared_scan]
    results: dict[str, CheckResult] = {r.name: r for r in scan.run_shared(ctx, shared)}
    for check in suite.checks:
        if check.name in results:
            continue
        started = time.monotonic()
        try:
            with ctx.isolated():
                result = check_type(check.type).run(ctx, check)
        except Exception as exc:
            result = error_result(check, exc)
        result.seconds = time.monotonic() - started
        results[check.name] = result
    ordered = [results[c.name] for c in suite.checks]
    return SuiteResult(ordered, ctx.partition_counts(), ctx.reference, time.monotonic() - t0, ctx.window_label())
