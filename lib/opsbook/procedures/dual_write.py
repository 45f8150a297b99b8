"""Write batches of traffic-safety indices three ways: the Parquet lake, PostgreSQL, the GCS archive.

Each batch is staged, then written to every target; the write ledger records each batch x
target. A target that fails (GCS down, a full disk) leaves its batch pending, never only logged,
and does not stop the others; ``retry_pending=true`` writes every pending batch again from its
staged copy.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, field_validator

from opsbook.trafficsafety import dualwrite
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.windows import known_subset
from opsbook.run.verdict import Verdict

NOTEBOOK = "dual_write.ipynb"
SUMMARY = "Write traffic-safety batches to the Parquet lake, PostgreSQL and the GCS archive, with a write ledger"


class Params(ProcedureParams):
    """Parameters of ``dual_write``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    source: str = Field("demo", description='"demo": seeded hourly batches (the only source so far)')
    start: str = Field("2025-11-01", description="first day of the demo batches (UTC)")
    days: int = Field(7, ge=1, le=366, description="days of demo batches")
    intersections: int = Field(8, ge=1, le=10_000, description="intersections in the demo batches")
    targets: str = Field("lake,postgres,archive", description="where each batch goes: lake, postgres, archive")
    retry_pending: bool = Field(False, description="write no new batch: retry every pending batch x target")

    @field_validator("source")
    @classmethod
    def _demo_only(cls, value: str) -> str:
        if value != "demo":
            raise ValueError("only 'demo' batches can be written so far")
        return value

    @field_validator("start")
    @classmethod
    def _iso_day(cls, value: str) -> str:
        dt.date.fromisoformat(value)
        return value

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: str) -> str:
        return known_subset(value, dualwrite.TARGETS, "target")


@dataclass
class Result:
    params: Params
    batches: list[dualwrite.BatchResult]
    pending: list[dict]
    seconds: float
    lake: str
    archive: str

    @property
    def rows(self) -> int:
        return sum(b.rows for b in self.batches)

    def verdict(self) -> Verdict:
        targets = self.params.targets.split(",")
        done = {t: sum(1 for b in self.batches if t in b.targets and b.targets[t].status == "success") for t in targets}
        figures = {
            "batches": len(self.batches),
            "rows": self.rows,
            "pending writes": len(self.pending),
            **{f"{t} written": n for t, n in done.items()},
        }
        action = "retried" if self.params.retry_pending else "wrote"
        summary = f"{action} {len(self.batches)} batch(es), {self.rows:,} rows, to {', '.join(targets)}"
        if self.pending:
            kinds = sorted({p["target"] for p in self.pending})
            summary = (
                f"{len(self.pending)} batch write(s) pending ({', '.join(kinds)}; first error: "
                f"{self.pending[0]['last_error']}); the other targets are written and the batches are staged. "
                f"Once the target is back: python run_notebook.py dual_write -p dataset={self.params.dataset} "
                f"-p retry_pending=true. {summary}"
            )
            return Verdict.failed(summary, figures, "pending-writes", CheckFailed, rows_out=self.rows)
        return Verdict("pass", summary, figures, rows_out=self.rows)


def ensure_intersections(conn, count: int) -> int:
    """The demo's intersections (with a PostGIS point where the database has PostGIS)."""
    from opsbook.demo import safety as safetydata
    from opsbook.stores.postgres import has_postgis

    frame = safetydata.intersections(count)
    postgis = has_postgis(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.intersections'))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS intersections (id integer PRIMARY KEY, name text NOT NULL, "
            "latitude double precision NOT NULL, longitude double precision NOT NULL, installed_on date NOT NULL)"
        )
        if postgis:
            conn.execute("ALTER TABLE intersections ADD COLUMN IF NOT EXISTS geom geometry(Point, 4326)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO intersections (id, name, latitude, longitude, installed_on) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, latitude = excluded.latitude, "
                "longitude = excluded.longitude, installed_on = excluded.installed_on",
                [tuple(r) for r in frame.itertuples(index=False)],
            )
        if postgis:
            conn.execute(
                "UPDATE intersections SET geom = ST_SetSRID(ST_MakePoint(longitude, latitude), 4326) "
                "WHERE geom IS NULL OR NOT ST_Equals(geom, ST_SetSRID(ST_MakePoint(longitude, latitude), 4326))"
            )
    return len(frame)


def run(params: Params, progress: Callable[..., None] | None = None) -> Result:
    from opsbook import datasets
    from opsbook.demo import safety as safetydata
    from opsbook.run import progress as lines
    from opsbook.stores import postgres

    notify = progress or (lambda message, transient=False: None)
    spec = datasets.get(params.dataset)
    t0 = time.monotonic()
    with postgres.connection(autocommit=True, purpose="dual-write") as control:
        dualwrite.ensure_tables(control, spec)
        if params.retry_pending:
            results = dualwrite.retry_pending(control, spec)
            notify(f"retried {len(results)} batch(es)")
        else:
            ensure_intersections(control, params.intersections)
            batches = safetydata.batches(dt.date.fromisoformat(params.start), params.days, params.intersections)
            results, down = [], {}
            for index, batch in enumerate(batches, 1):
                result = dualwrite.write_batch(
                    control, spec, batch.batch_id, batch.table, params.targets.split(","), down
                )
                results.append(result)
                for target, outcome in result.targets.items():
                    if outcome.status == "pending" and target not in down:
                        # a target that failed is not tried again for every batch of this run
                        down[target] = f"{target} failed at batch {batch.batch_id}: {outcome.error}"
                        notify(f"{target} is failing ({outcome.error}); its writes stay pending for this run")
                if index % 24 == 0 or index == len(batches):
                    line = f"{index}/{len(batches)} batches, {sum(r.rows for r in results):,} rows"
                    lines.emit(line)
                    notify(line)
        pending = dualwrite.pending_writes(control, spec)
    return Result(params, results, pending, time.monotonic() - t0, dualwrite.lake_root(), dualwrite.archive_root())


def show_batches(result: Result):
    from collections import Counter

    from opsbook import report

    rows = []
    for target in result.params.targets.split(","):
        states = Counter(b.targets[target].status for b in result.batches if target in b.targets)
        where = {"lake": result.lake, "archive": result.archive, "postgres": result.params.dataset}.get(target, "")
        rows.append(
            {
                "target": target,
                "where": where,
                "written": states.get("success", 0),
                "pending": states.get("pending", 0),
                "seconds": round(sum(b.targets[target].seconds for b in result.batches if target in b.targets), 2),
            }
        )
    return report.table(
        rows,
        caption=f"{len(result.batches)} batch(es), {result.rows:,} rows, {result.seconds:.1f}s",
        element_id="dual-write-targets",
    )


def show_pending(result: Result):
    from opsbook import report

    if not result.pending:
        return report.note("No write is pending: every batch is in every target.")
    return report.table(
        [{k: v for k, v in p.items() if k != "updated_at"} for p in result.pending],
        caption="Pending writes (kept in opsbook.writes; the batches are staged until written)",
        element_id="pending-writes",
    )
