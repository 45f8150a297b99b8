"""Write each batch to every target: the Parquet lake, PostgreSQL, and a raw archive in GCS.

The batch is first staged durably (a Parquet file in ``<state>/staging``); then each target is
written, and the write ledger (:mod:`opsbook.history.writes`) records every batch x target:
status (``pending`` until a write succeeds), attempts, rows and the last error. A failing
target does not block the others, and nothing is only logged: its batch stays pending, and
:func:`retry_pending` (or a reconcile repair) writes it from the staged copy later. The staged
copy goes once every target has the batch.

- lake: one Parquet file per UTC day of the batch (:mod:`.layout`); a rewrite replaces it whole
  (temporary file and rename, or one GCS upload).
- PostgreSQL: an upsert on the dataset's key that only rewrites rows whose values changed.
- archive: the batch as received, newline-delimited JSON, gzip, under the batch's last day.

A run plans (:func:`plan`: the source's batches whose days overlap the window, :mod:`.batches`,
each with the targets the ledger does not have yet; all of them when forced), then writes
(:func:`write`) holding the dataset's write lock; :func:`retry` writes the pending ones again.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from opsbook import config
from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError
from opsbook.history import schema as history
from opsbook.history import writes
from opsbook.stores import postgres, uri
from opsbook.stores.postgres import ident
from opsbook.trafficsafety import TARGETS, layout
from opsbook.trafficsafety import schema as tables
from opsbook.trafficsafety.batches import Batch, Found
from opsbook.windows import Days


@dataclass
class TargetResult:
    target: str
    status: str  # success | pending
    rows: int = 0
    attempts: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class BatchResult:
    batch_id: str
    rows: int
    targets: dict[str, TargetResult] = field(default_factory=dict)
    error: str | None = None  # the batch could not be read (then no target was tried)

    @property
    def complete(self) -> bool:
        return self.error is None and all(t.status == "success" for t in self.targets.values())


@dataclass(frozen=True)
class Work:
    """A batch of the source, and the targets it still has to reach."""

    batch: Batch
    targets: tuple[str, ...]


@dataclass
class WritePlan:
    """The batches of a window: those to write, and those the ledger has in every target."""

    found: Found
    work: list[Work]
    done: list[Batch]  # already in every target (written again only with force)


@dataclass
class Written:
    """What a dual-write run did."""

    batches: list[BatchResult]
    pending: list[dict]  # every pending write of the dataset afterwards (the ledger's rows)
    intersections: int | None = None  # rows of intersections.csv upserted (None: no such file)


# --- setup -----------------------------------------------------------------------------------


def ensure_tables(conn, spec: DatasetSpec) -> None:
    """The ``opsbook`` schema (with the write ledger) and the dataset's tables (:mod:`.schema`)."""
    history.ensure_schema(conn)
    tables.ensure(conn, spec)


# --- targets ---------------------------------------------------------------------------------


def write_lake(spec: DatasetSpec, batch_id: str, table: pa.Table, root: str | None = None) -> int:
    import pyarrow.compute as pc

    day_of = pc.cast(table.column(spec.partition.column), pa.date32())
    for day in layout.days_of(spec, table):
        part = table.filter(pc.equal(day_of, pa.scalar(day, pa.date32())))
        uri.write_bytes(layout.lake_file(spec, day, batch_id, root), layout.parquet_bytes(part))
    return table.num_rows


def write_archive(spec: DatasetSpec, batch_id: str, table: pa.Table, root: str | None = None) -> int:
    day = max(layout.days_of(spec, table)) if table.num_rows else dt.date.today()
    lines = "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist())
    uri.write_bytes(
        layout.archive_object(spec, batch_id, day, root),
        gzip.compress(lines.encode("utf-8"), mtime=0),
        "application/gzip",
    )
    return table.num_rows


def write_postgres(spec: DatasetSpec, table: pa.Table) -> int:
    """Upsert on the key, into the partitions of the batch's days (made when missing); a row
    whose values are unchanged is not rewritten."""
    with postgres.connection(autocommit=True, purpose="dual-write partitions") as conn:
        tables.ensure_partitions(conn, spec, layout.days_of(spec, table))

    columns = spec.column_names
    others = [c for c in columns if c not in spec.key]
    staging = f"opsbook_upsert_{os.getpid()}"
    upsert = sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({key}) DO UPDATE SET {sets} "
        "WHERE ({old}) IS DISTINCT FROM ({new})"
    ).format(
        t=ident(spec.table),
        s=ident(staging),
        cols=sql.SQL(", ").join(ident(c) for c in columns),
        key=sql.SQL(", ").join(ident(k) for k in spec.key),
        sets=sql.SQL(", ").join(sql.SQL("{} = excluded.{}").format(ident(c), ident(c)) for c in others),
        old=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident(spec.table), ident(c)) for c in others),
        new=sql.SQL(", ").join(sql.SQL("excluded.{}").format(ident(c)) for c in others),
    )
    statement = upsert.as_string()  # psycopg quotes identifiers without a connection
    with postgres.adbc_connect() as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest(staging, table, mode="create", temporary=True)
            cur.execute(statement)
            cur.execute(f'DROP TABLE "{staging}"')
        conn.commit()
    return table.num_rows


# --- batches ---------------------------------------------------------------------------------


def staging_path(spec: DatasetSpec, batch_id: str) -> Path:
    """The batch's staged copy: local state, never the lake (it outlives a failed target)."""
    return config.state_dir() / "staging" / spec.name / f"{batch_id}.parquet"


def written(control, spec: DatasetSpec, batch_ids: Iterable[str]) -> dict[str, set[str]]:
    """The targets the ledger records each batch as written to."""
    return writes.succeeded(control, spec.name, list(batch_ids))


def write_batch(
    control,
    spec: DatasetSpec,
    batch_id: str,
    batch,
    targets: Iterable[str] = TARGETS,
    skip: dict[str, str] | None = None,
) -> BatchResult:
    """Stage the batch, then write it to each target; record every outcome in the ledger.

    ``skip`` names targets not to try now (one that just failed: no point waiting on it again
    for every batch); they stay pending, with the reason as their last error.
    """
    table = layout.conform(spec, batch, what=f"batch {batch_id}")
    targets = list(targets)
    staged = staging_path(spec, batch_id)
    uri.write_bytes(str(staged), layout.parquet_bytes(table))
    days = layout.days_of(spec, table)
    first, last = (days[0], days[-1]) if days else (None, None)
    for target in targets:
        writes.stage(control, spec.name, batch_id, target, table.num_rows, first, last, str(staged))
    return _write_targets(control, spec, batch_id, table, targets, skip or {})


def _write_targets(control, spec: DatasetSpec, batch_id: str, table: pa.Table, targets, skip=None) -> BatchResult:
    from opsbook.run.redaction import Redactor

    result = BatchResult(batch_id, table.num_rows)
    writers: dict[str, Callable[[], int]] = {
        "lake": lambda: write_lake(spec, batch_id, table),
        "postgres": lambda: write_postgres(spec, table),
        "archive": lambda: write_archive(spec, batch_id, table),
    }
    skip = skip or {}
    redact = Redactor()  # an error can quote a URL with its password: the ledger never keeps one
    for target in targets:
        t0 = time.monotonic()
        tried = target not in skip
        if not tried:
            rows, status, error = 0, "pending", f"not tried: {skip[target]}"[:1000]
        else:
            try:
                rows = writers[target]()
                status, error = "success", None
            except Exception as exc:  # recorded in the ledger, never only logged
                rows, status = 0, "pending"
                text = str(exc).strip()
                error = redact(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")[:1000]
        attempts = writes.record(control, spec.name, batch_id, target, status, tried, error)
        result.targets[target] = TargetResult(target, status, rows, attempts, error, time.monotonic() - t0)
    if not writes.pending_count(control, spec.name, batch_id):
        staging_path(spec, batch_id).unlink(missing_ok=True)
    return result


def pending_writes(control, spec: DatasetSpec) -> list[dict]:
    return writes.pending(control, spec.name)


def retry_pending(control, spec: DatasetSpec, progress: Callable[..., None] | None = None) -> list[BatchResult]:
    """Write every pending batch x target again, from the staged copy.

    Raises
    ------
    SourceError
        A pending batch's staged copy is gone (nothing is written then).
    """
    by_batch: dict[str, list[str]] = {}
    for row in pending_writes(control, spec):
        by_batch.setdefault(row["batch_id"], []).append(row["target"])
    for batch_id, targets in sorted(by_batch.items()):
        staged = staging_path(spec, batch_id)
        if not staged.exists():
            raise SourceError(
                f"batch {batch_id} is pending for {', '.join(targets)} but its staged copy {staged} is gone"
            )
    results = []
    for batch_id, targets in sorted(by_batch.items()):
        results.append(_write_targets(control, spec, batch_id, pq.read_table(staging_path(spec, batch_id)), targets))
        if progress:
            progress(f"retried {batch_id} ({', '.join(targets)})", transient=True)
    return results


# --- a run -----------------------------------------------------------------------------------


def plan(spec: DatasetSpec, location: str, window: Days, targets: Iterable[str], force: bool) -> WritePlan:
    """The source's batches in the window, each with the targets the ledger lacks (all of them
    with ``force``).

    Raises
    ------
    SourceError
        No readable batch of the source falls in the window.
    """
    from opsbook.trafficsafety import batches

    found = batches.find(spec, location, window)
    if not found.batches:
        days = [d for b in found.outside for d in (b.first_day, b.last_day) if d]
        held = f"{len(found.outside)} batch(es) outside it" + (f", {min(days)} to {max(days)}" if days else "")
        if found.unreadable:
            held += f", {len(found.unreadable)} unreadable file(s): {found.unreadable[0][0]}: {found.unreadable[0][1]}"
        where = f"falls in {window}" if window else "is there"
        raise SourceError(f"no batch of {location} {where}: nothing to write ({held})")
    targets = tuple(targets)
    with postgres.connection(autocommit=True, purpose="dual-write plan") as control:
        history.ensure_schema(control)
        have = {} if force else written(control, spec, [b.batch_id for b in found.batches])
    work, done = [], []
    for batch in found.batches:
        missing = tuple(t for t in targets if t not in have.get(batch.batch_id, set()))
        if missing:
            work.append(Work(batch, missing))
        else:
            done.append(batch)
    return WritePlan(found, work, done)


def write(spec: DatasetSpec, planned: WritePlan, run_id: str, lock: str, progress=None) -> Written:
    """Upsert the source's intersections, then write each planned batch to its targets.

    A target that fails is not tried again for the rest of the run (its writes stay pending,
    saying why); a batch that cannot be read is reported and the others go on.

    Raises
    ------
    LockHeld
        Another run writes the dataset (``lock``).
    """
    from opsbook.history import locks
    from opsbook.trafficsafety import batches

    notify = progress or (lambda message, transient=False: None)
    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as control:
        ensure_tables(control, spec)
        locks.try_lock(control, lock, f"run {run_id}")
        upserted = None
        if planned.found.intersections:
            upserted = batches.upsert_intersections(
                control, planned.found.intersections, tables.names(spec).intersections
            )
            notify(f"{upserted} intersection(s) upserted from {batches.INTERSECTIONS_FILE}")
        results: list[BatchResult] = []
        down: dict[str, str] = {}
        for index, item in enumerate(planned.work, 1):
            batch = item.batch
            try:
                table = batches.read(spec, batch.uri, batch.batch_id)
            except SourceError as exc:
                results.append(BatchResult(batch.batch_id, 0, error=str(exc)))
                notify(f"{batch.batch_id}: not read ({exc})")
                continue
            result = write_batch(control, spec, batch.batch_id, table, item.targets, down)
            results.append(result)
            for target, outcome in result.targets.items():
                if outcome.status == "pending" and target not in down:
                    # a target that failed is not tried again for every batch of this run
                    down[target] = f"{target} failed at batch {batch.batch_id}: {outcome.error}"
                    notify(f"{target} is failing ({outcome.error}); its writes stay pending for this run")
            line = f"{index}/{len(planned.work)} batches, {sum(r.rows for r in results):,} rows"
            notify(line, transient=not (index % 24 == 0 or index == len(planned.work)))
        pending = pending_writes(control, spec)
        locks.unlock(control, lock)
    return Written(results, pending, upserted)


def retry(spec: DatasetSpec, run_id: str, lock: str, progress=None) -> Written:
    """Write every pending batch x target again from its staged copy (see :func:`retry_pending`)."""
    from opsbook.history import locks

    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as control:
        ensure_tables(control, spec)
        locks.try_lock(control, lock, f"run {run_id}")
        results = retry_pending(control, spec, progress)
        pending = pending_writes(control, spec)
        locks.unlock(control, lock)
    return Written(results, pending)
