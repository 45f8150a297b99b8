"""Write each batch to its targets: the bucket's processed indices, PostgreSQL, the raw archive.

An index batch goes to the lake and PostgreSQL, a raw file (``bsm_*.parquet``) to the archive.
The batch is first staged durably (a Parquet file in ``<state>/staging``); then each target is
written, and the write ledger (:mod:`opsbook.history.writes`) records every batch x target:
status (``pending`` until a write succeeds), attempts, rows and the last error. A failing
target does not block the others, and nothing is only logged: its batch stays pending, and
:func:`retry_pending` (or a reconcile repair) writes it from the staged copy later. The staged
copy goes once every target has the batch.

- lake: the batch's rows merged into the file of each of its UTC days
  (``processed/indices/indices_<date>.parquet``, :mod:`.layout`): the day's rows the batch does
  not hold are kept, its own replace those of the same key; the file is replaced whole
  (temporary file and rename, or one GCS upload). Written again, a batch changes nothing.
- PostgreSQL: an upsert on the dataset's key that only rewrites rows whose values changed.
- archive: the raw file as received, byte for byte, under its UTC day (``raw/bsm/<yyyy>/<mm>/<dd>/``).

A run plans (:func:`plan`: the source's batches whose days overlap the window, :mod:`.batches`,
each with the targets the ledger does not have yet; all of them when forced), then writes
(:func:`write`) holding the dataset's write lock; :func:`retry` writes the pending ones again.
"""

from __future__ import annotations

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
from opsbook.trafficsafety import INDEX_TARGETS, RAW_TARGETS, layout
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


def write_lake(spec: DatasetSpec, table: pa.Table, root: str | None = None) -> int:
    """Merge the batch into each of its days' files: the file's rows of other keys are kept."""
    for day in layout.days_of(spec, table):
        part = layout.of_day(spec, table, day)
        location = layout.lake_file(spec, day, root)
        if uri.exists(location):
            held = layout.from_file(spec, pq.read_table(pa.BufferReader(uri.read_bytes(location))), what=location)
            part = pa.concat_tables([_without_keys(spec, held, part), part])
        uri.write_bytes(location, layout.parquet_bytes(part.sort_by([(k, "ascending") for k in spec.key])))
    return table.num_rows


def _without_keys(spec: DatasetSpec, held: pa.Table, batch: pa.Table) -> pa.Table:
    """The rows of ``held`` whose key is not in ``batch``."""
    import duckdb

    con = duckdb.connect()
    con.register("held", held)
    con.register("batch", batch)
    on = " AND ".join(f'h."{k}" = b."{k}"' for k in spec.key)
    kept = con.sql(f"SELECT h.* FROM held h ANTI JOIN batch b ON {on}").to_arrow_table()
    con.close()
    return kept.cast(held.schema)


def write_archive(spec: DatasetSpec, batch: Batch, data: bytes, root: str | None = None) -> int:
    """The raw file, byte for byte, under its day; read back and compared by its MD5."""
    import hashlib

    location = layout.archive_object(spec, uri.name_of(batch.uri), batch.last_day, root)
    uri.write_bytes(location, data)
    if uri.md5_of(location) not in (None, hashlib.md5(data).hexdigest()):
        raise OSError(f"{location}: the stored object's MD5 differs from the file's")
    return batch.rows


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
    targets: Iterable[str] = INDEX_TARGETS,
    skip: dict[str, str] | None = None,
) -> BatchResult:
    """Stage an index batch, then write it to each target; record every outcome in the ledger.

    ``skip`` names targets not to try now (one that just failed: no point waiting on it again
    for every batch); they stay pending, with the reason as their last error.
    """
    table = layout.conform(spec, batch, what=f"batch {batch_id}")
    targets = [t for t in targets if t in INDEX_TARGETS]
    staged = staging_path(spec, batch_id)
    uri.write_bytes(str(staged), layout.parquet_bytes(table))
    days = layout.days_of(spec, table)
    first, last = (days[0], days[-1]) if days else (None, None)
    for target in targets:
        writes.stage(control, spec.name, batch_id, target, table.num_rows, first, last, str(staged))
    return _write_targets(control, spec, batch_id, table.num_rows, targets, _index_writers(spec, table), skip)


def write_raw(control, spec: DatasetSpec, batch: Batch, skip: dict[str, str] | None = None) -> BatchResult:
    """Stage a raw file as it is, then archive it; record the outcome in the ledger."""
    data = uri.read_bytes(batch.uri)
    staged = staging_path(spec, batch.batch_id)
    uri.write_bytes(str(staged), data)
    writes.stage(
        control, spec.name, batch.batch_id, "archive", batch.rows, batch.first_day, batch.last_day, str(staged)
    )
    writers = {"archive": lambda: write_archive(spec, batch, data)}
    return _write_targets(control, spec, batch.batch_id, batch.rows, ["archive"], writers, skip)


def _index_writers(spec: DatasetSpec, table: pa.Table) -> dict[str, Callable[[], int]]:
    return {"lake": lambda: write_lake(spec, table), "postgres": lambda: write_postgres(spec, table)}


def _write_targets(
    control, spec: DatasetSpec, batch_id: str, rows: int, targets, writers: dict[str, Callable[[], int]], skip=None
) -> BatchResult:
    from opsbook.run.redaction import Redactor

    result = BatchResult(batch_id, rows)
    skip = skip or {}
    redact = Redactor()  # an error can quote a URL with its password: the ledger never keeps one
    for target in targets:
        t0 = time.monotonic()
        tried = target not in skip
        if not tried:
            done, status, error = 0, "pending", f"not tried: {skip[target]}"[:1000]
        else:
            try:
                done = writers[target]()
                status, error = "success", None
            except Exception as exc:  # recorded in the ledger, never only logged
                done, status = 0, "pending"
                text = str(exc).strip()
                error = redact(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")[:1000]
        attempts = writes.record(control, spec.name, batch_id, target, status, tried, error)
        result.targets[target] = TargetResult(target, status, done, attempts, error, time.monotonic() - t0)
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
    by_batch: dict[str, list[dict]] = {}
    for row in pending_writes(control, spec):
        by_batch.setdefault(row["batch_id"], []).append(row)
    for batch_id, rows in sorted(by_batch.items()):
        staged = staging_path(spec, batch_id)
        if not staged.exists():
            targets = ", ".join(r["target"] for r in rows)
            raise SourceError(f"batch {batch_id} is pending for {targets} but its staged copy {staged} is gone")
    results = []
    for batch_id, rows in sorted(by_batch.items()):
        staged = staging_path(spec, batch_id)
        targets = [r["target"] for r in rows]
        if targets == ["archive"]:  # a raw file
            row = rows[0]  # the staged copy has the file's name: <batch id>.parquet
            batch = Batch(batch_id, str(staged), row["rows"], row["first_day"], row["last_day"], kind="raw")
            data = staged.read_bytes()
            writers = {"archive": lambda batch=batch, data=data: write_archive(spec, batch, data)}
            results.append(_write_targets(control, spec, batch_id, batch.rows, targets, writers))
        else:
            table = pq.read_table(staged)
            results.append(
                _write_targets(control, spec, batch_id, table.num_rows, targets, _index_writers(spec, table))
            )
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
        goes = RAW_TARGETS if batch.kind == "raw" else INDEX_TARGETS
        missing = tuple(t for t in targets if t in goes and t not in have.get(batch.batch_id, set()))
        if not any(t in goes for t in targets):
            continue  # a raw file when the archive is not a target of this run, or the reverse
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
                table = None if batch.kind == "raw" else batches.read(spec, batch.uri, batch.batch_id)
            except SourceError as exc:
                results.append(BatchResult(batch.batch_id, 0, error=str(exc)))
                notify(f"{batch.batch_id}: not read ({exc})")
                continue
            if table is None:
                result = write_raw(control, spec, batch, down)
            else:
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
