"""Declarative data checks, run inside the database (push-down SQL).

:func:`run_suite` runs a suite (see :mod:`opsbook.checks.spec`) and returns one
:class:`CheckResult` per check. Checks on the same table share one aggregate scan grouped by
the partition date; failing rows are fetched (at most :data:`SAMPLE_ROWS`) only for the checks
that fail. A check that cannot run at all (bad SQL, a missing table, Redis down) ends in status
``error``, which counts as a failure of its severity; it never stops the other checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SAMPLE_ROWS = 20


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

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]


def outcome(check, failed: bool) -> str:
    """The status of a check that ran: pass, or fail / warn by its severity."""
    if not failed:
        return "pass"
    return "fail" if check.severity == "error" else "warn"


def run_suite(conn, spec, suite, years: list[int], reference: str | None = None) -> SuiteResult:
    """Run every check of ``suite`` over the ``years`` window."""
    from opsbook.checks import spec as suite_spec
    from opsbook.checks import system, table
    from opsbook.checks.geometry import run_geometry

    t0 = time.monotonic()
    ctx = table.Context(conn, spec, suite, years, reference or suite.default_reference)
    results: dict[str, CheckResult] = {}
    aggregate = [c for c in suite.checks if isinstance(c, table.AGGREGATE_TYPES)]
    results.update({r.name: r for r in table.run_aggregate_checks(ctx, aggregate)})
    for check in suite.checks:
        if check.name in results:
            continue
        started = time.monotonic()
        try:
            if isinstance(check, suite_spec.Unique):
                result = table.run_unique(ctx, check)
            elif isinstance(check, suite_spec.Referential):
                result = table.run_referential(ctx, check)
            elif isinstance(check, suite_spec.DatabaseSize):
                result = system.run_database_size(ctx, check)
            elif isinstance(check, suite_spec.RedisKey):
                result = system.run_redis_key(ctx, check)
            elif isinstance(check, suite_spec.Geometry):
                result = run_geometry(ctx, check)
            else:  # pragma: no cover - every type is dispatched above or aggregated
                raise TypeError(f"no runner for check type {check.type}")
        except Exception as exc:
            result = error_result(check, exc)
        result.seconds = time.monotonic() - started
        results[check.name] = result
    ordered = [results[c.name] for c in suite.checks]
    return SuiteResult(ordered, ctx.partition_counts(), ctx.reference, time.monotonic() - t0)


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
