"""Publish the map payloads to Redis: tickets, red-light and ASE cameras, per location and year.

Each payload goes under a versioned key (``toronto:map-data:tickets:aggregated:v1``) with a
``:summary`` beside it. Every key is switched in with RENAME inside one MULTI/EXEC transaction,
so readers see the old payloads or the new ones, never a mix and never a gap. Large payloads
are gzip'd; ``ttl_hours`` sets an expiry. Each payload is then read back and decoded, and the
check engine compares every location of each payload and every year of its summary with
PostgreSQL. The work is :mod:`opsbook.toronto.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook.checks import errors_of
from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten
from opsbook.windows import Years, format_years

if TYPE_CHECKING:
    from opsbook.checks import CheckResult
    from opsbook.toronto.cache import Payload, Published


class Params(ProcedureParams):
    """Parameters of ``push_cache``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset the payloads come from")
    years: Years = Field("2011-2023", description="years in the payloads: 2017, 2011-2023 or 2011,2015-2016")
    gzip_over_kb: int = Field(64, ge=0, description="gzip payloads larger than this many KB (0: always)")
    ttl_hours: float = Field(0, ge=0, description="expire the keys after this many hours (0: never)")
    min_tickets: int = Field(1, ge=1, description="leave out locations with fewer tickets over the years")


@dataclass
class Plan:
    params: Params
    years: list[int]  # the window, resolved against the yearly tables
    payloads: list[Payload]


def plan(ctx: RunContext) -> Plan:
    """Build every payload from the yearly tables (Redis is not touched yet)."""
    from opsbook.toronto import cache

    params: Params = ctx.params
    years, payloads = cache.build(params.years, params.min_tickets, ctx.run_id)
    return Plan(params, years, payloads)


def run(ctx: RunContext, plan: Plan) -> Result:
    """Publish the payloads together, then read each back and compare it with PostgreSQL."""
    import datetime as dt
    import time

    from opsbook.toronto import cache

    started = time.monotonic()
    p = plan.params
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    ttl = int(p.ttl_hours * 3600) or None
    published = cache.publish(plan.payloads, stamp, p.gzip_over_kb, ttl, ctx.run_id)
    cache.read_back(published)
    checks = cache.verify(published, plan.years, p.min_tickets, ctx.run_id)
    return Result(plan, published, stamp, time.monotonic() - started, checks)


@dataclass
class Result:
    plan: Plan
    published: list[Published] = field(default_factory=list)
    published_at: str = ""
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)  # what Redis holds against PostgreSQL

    def status_of(self, item: Published) -> str:
        """The worst status of the payload's checks."""
        found = [c.status for c in self.checks if c.name in item.check_names]
        return max(found, key=("pass", "warn", "fail", "error").index) if found else "not checked"

    def verdict(self) -> Verdict:
        wrong = errors_of(self.checks)
        figures = {
            "keys": len(self.published) * 2,
            "bytes": sum(p.bytes for p in self.published),
            **{p.name: p.items for p in self.published},
        }
        if wrong:
            detail = "; ".join(f"{c.name}: {c.message or c.observed}" for c in wrong)
            return Verdict.failed(
                f"the published payloads disagree with PostgreSQL: {shorten(detail, 1000)}",
                figures,
                wrong[0].anchor,
                CheckFailed,
            )
        return Verdict(
            "pass",
            f"published {len(self.published)} payloads at {self.published_at}; each read back matches PostgreSQL",
            figures,
        )


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The payloads to publish: locations, tickets and revenue per key."""
    from opsbook import report

    rows = [
        {
            "key": p.key,
            "locations": p.summary["locations"],
            "tickets": p.summary["tickets"],
            "revenue": p.summary["revenue"],
            "years": format_years(int(y) for y in p.summary["years"]) or "none",
        }
        for p in plan.payloads
    ]
    return report.table(rows, caption=f"Payloads for {format_years(plan.years) or 'no year'}", element_id="payloads")


def show_published(result: Result):
    """Each key as Redis holds it, read back, against PostgreSQL."""
    from opsbook import report

    rows = [
        {
            "key": p.key,
            "locations": p.items,
            "bytes": p.bytes,
            "gzip": p.gzipped,
            "memory usage": p.memory,
            "ttl (s)": p.ttl if p.ttl and p.ttl > 0 else "none",
            "tickets in Redis": p.tickets,
            "revenue in Redis": p.revenue,
            "status": result.status_of(p),
        }
        for p in result.published
    ]
    return report.stack(
        report.table(
            rows,
            caption=f"Published at {result.published_at} (each with a :summary key beside it)",
            status_column="status",
            element_id="published",
        ),
        report.check_report(
            result.checks,
            caption="What Redis holds against PostgreSQL: every location of each payload, every year of its summary",
        ),
    )
