"""The procedures: a registry, one contract, and one thin module per procedure.

The registry below maps each name to its module, notebook, team and one-line summary, so
that ``--list`` and "did you mean" import nothing. Every module follows the contract in
:mod:`opsbook.procedures.protocol`: ``Params``; optionally ``plan(ctx)`` and ``locks(params)``;
``run(ctx, plan)`` returning a result with ``verdict()``; and ``show_*`` functions that present
it. The work itself lives in the team's domain package (``opsbook.toronto``, ...).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from opsbook.errors import UsageError


@dataclass(frozen=True)
class Entry:
    name: str
    team: str  # the domain package and the runbook it serves
    summary: str

    @property
    def module(self) -> str:
        return f"opsbook.procedures.{self.name}"

    @property
    def notebook(self) -> str:
        return f"{self.name}.ipynb"


_ENTRIES = (
    Entry(
        "load",
        "toronto",
        "Load City files for a window of years into PostgreSQL (per-year replace, bad rows quarantined)",
    ),
    Entry("aggregate", "toronto", "Rebuild the yearly tables per location: parking tickets, red-light and ASE cameras"),
    Entry(
        "camera_datasets",
        "toronto",
        "Build the red-light and ASE camera GeoJSON and summaries (geopandas, EPSG:4326) on the lake",
    ),
    Entry(
        "push_cache",
        "toronto",
        "Publish the map payloads (tickets, red-light, ASE per location and year) to Redis, switched atomically",
    ),
    Entry(
        "validate", "checks", "Run a dataset's check suite in the database: coverage, expected totals, quality rules"
    ),
    Entry(
        "backfill",
        "toronto",
        "Load and aggregate a window of years: partition ledger, resume, lock, parallel workers or Dask",
    ),
    Entry(
        "dual_write",
        "trafficsafety",
        "Write traffic-safety batches to the Parquet lake, PostgreSQL and the GCS archive, with a write ledger",
    ),
    Entry(
        "rollups",
        "trafficsafety",
        "Build hourly and daily safety-index rollups with the peak hour per day, idempotent per window",
    ),
    Entry(
        "migrate_to_bucket",
        "trafficsafety",
        "Copy the local Parquet tree to the bucket's layout: dry run first, MD5 verified, resumable",
    ),
    Entry(
        "backfill_indices",
        "trafficsafety",
        "Backfill realtime safety indices from the bucket's daily index files (COPY per day), then their rollups",
    ),
    Entry(
        "reconcile_dual_write",
        "trafficsafety",
        "Compare the Parquet lake with PostgreSQL and the GCS archive with the write ledger; repair on request",
    ),
    Entry(
        "refresh_marts",
        "warehouse",
        "Weather warehouse: land raw JSON, upsert core, data-quality checkpoint, refresh the mart views",
    ),
    Entry(
        "retention", "ops", "Plan, then apply, a retention policy: drop old partitions, delete old rows, VACUUM ANALYZE"
    ),
    Entry(
        "health",
        "ops",
        "Morning check: lag and failures per procedure, stuck runs, locks and long queries, database, escalation zip",
    ),
)

PROCEDURES: dict[str, Entry] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    return sorted(PROCEDURES)


def entry(name: str) -> Entry:
    """The registry entry called ``name``; an unknown name is refused with the closest one."""
    if name not in PROCEDURES:
        from opsbook.run.params import closest

        hint = closest(name, PROCEDURES)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise UsageError(
            f"unknown procedure {name!r}{did_you_mean} Procedures: {', '.join(names())} (python run_notebook.py --list)"
        )
    return PROCEDURES[name]


def get(name: str) -> ModuleType:
    """The procedure module called ``name`` (see :func:`entry` for an unknown name)."""
    return importlib.import_module(entry(name).module)
