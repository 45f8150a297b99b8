"""Backfill the realtime table from the bucket's daily index files (runbook Tasks 6.1, 6.2).

The source is the bucket (``gs://...``) or a local copy of it; a day's file lies where the
dataset spec's ``source.layout`` says (``processed/indices/indices_<date>.parquet``), and older
files name their columns as the spec's ``source.rename`` maps them (``time_15min``,
``Combined_Index``, ...). A column the spec does not require and a file lacks is NULL, except
``hour_of_day`` and ``day_of_week``, which come from the timestamp (UTC).

Each day is loaded on its own (one failing file does not stop the others) with binary COPY,
never row by row: into a staging table shaped like the realtime table and bounded to the day
by a CHECK, keyed afterwards (a repeated key refuses the file), then

- swapped in as the day's partition when the day has none or an empty one (the CHECK lets
  ATTACH skip its scan; readers of other days are not blocked);
- merged into it otherwise: an upsert that rewrites only rows whose values differ, so rows
  PostgreSQL holds that the file lacks (readings the dual-write added) are kept. A backfill
  never deletes a reading.

The partition ledger (step ``backfill_indices``) records each day's file digest, so a rerun
skips the days already loaded from the same file into the same partition, and an interrupted
run resumes where it stopped. Retention dropping a day's partition forgets its entry.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import errors as pg_errors
from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.errors import OpsbookError, SourceError, in_one_line
from opsbook.history import ledger
from opsbook.stores import postgres, uri
from opsbook.stores.postgres import ident
from opsbook.trafficsafety import layout, schema
from opsbook.windows import Days

STEP = "backfill_indices"
BATCH_ROWS = 131_072  # rows per COPY batch: bounded memory whatever the file's size


@dataclass(frozen=True)
class DayFile:
    day: dt.date
    uri: str
    size: int
    fingerprint: str


@dataclass
class Found:
    """The window's days: those with a file, those without."""

    root: str
    files: list[DayFile]
    missing: list[dt.date]


def file_of(spec: DatasetSpec, root: str, day: dt.date) -> str:
    return layout.lake_file(spec, day, root)


def find(spec: DatasetSpec, root: str, window: Days) -> Found:
    """The window's day files under ``root`` (one listing per folder the layout names)."""
    uri.check_folder(root)
    by_folder: dict[str, dict[str, uri.ObjectInfo]] = {}
    found = Found(root, [], [])
    for day in window.days:
        location = file_of(spec, root, day)
        folder = location.rsplit("/", 1)[0]
        if folder not in by_folder:
            by_folder[folder] = {o.uri: o for o in uri.listing(folder, recursive=False)}
        info = by_folder[folder].get(location)
        if info is None:
            found.missing.append(day)
        else:
            found.files.append(DayFile(day, location, info.size, info.fingerprint))
    return found


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Reading:
    """What reading a day's file found."""

    rows: int = 0
    renamed: dict[str, str] = field(default_factory=dict)  # the file's name -> the spec's
    absent: list[str] = field(default_factory=list)  # spec columns the file lacks (NULL or derived)


def read_batches(spec: DatasetSpec, day_file: DayFile, reading: Reading) -> Iterator[pa.RecordBatch]:
    """The file's rows in the spec's columns and types, in batches of :data:`BATCH_ROWS`.

    Raises
    ------
    SourceError
        Not Parquet, a required column missing, a value that does not cast, a NULL key, or a
        row outside the file's day.
    """
    import pyarrow.parquet as pq

    target = layout.arrow_schema(spec)
    start, end = schema.day_bounds(day_file.day)
    column = spec.partition.column
    name = uri.name_of(day_file.uri)
    with uri.open_read(day_file.uri) as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except pa.ArrowException as exc:
            raise SourceError(f"{name} is not readable Parquet: {exc}") from None
        names = parquet.schema_arrow.names
        reading.renamed = layout.renamed(spec, names)
        reading.absent = layout.absent(spec, names)
        wanted = [n for n in names if reading.renamed.get(n, n) in target.names]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            table = layout.from_file(spec, pa.Table.from_batches([batch]), what=name)
            stamps = table.column(column)
            outside = pc.sum(pc.or_(pc.less(stamps, pa.scalar(start)), pc.greater_equal(stamps, pa.scalar(end))))
            if outside.as_py():
                raise SourceError(
                    f"{name}: {outside.as_py():,} row(s) fall outside {day_file.day} (UTC); the file is not loaded"
                )
            reading.rows += table.num_rows
            yield from table.to_batches()


# --- loading ---------------------------------------------------------------------------------


@dataclass
class DayResult:
    day: dt.date
    file: str
    status: str = "failed"  # loaded | merged | unchanged | failed
    rows: int = 0
    previous_rows: int | None = None  # the partition's rows before (None: no partition)
    written: int = 0  # merged: rows inserted or changed
    kept: int = 0  # merged: rows PostgreSQL holds that the file lacks (kept)
    absent: list[str] = field(default_factory=list)
    renamed: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_class: type[Exception] | None = None


def lock_key(dataset: str) -> str:
    """One backfill of a dataset at a time."""
    from opsbook.history import locks

    return locks.key(STEP, dataset)


def load_days(
    spec: DatasetSpec, found: Found, run_id: str, progress: Callable[..., None] | None = None
) -> list[DayResult]:
    """Load each day file (see the module's text); a day that fails is recorded and the next goes on.

    Raises
    ------
    LockHeld
        Another backfill of the dataset is running.
    """
    from opsbook.history import locks
    from opsbook.history import schema as history

    notify = progress or (lambda message, transient=False: None)
    results = []
    key = lock_key(spec.name)
    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as control:
        history.ensure_schema(control)
        schema.ensure(control, spec)
        locks.try_lock(control, key, f"run {run_id}")
        copier = None  # one ADBC connection for every day's COPY (opening one takes ~40 ms)
        try:
            for index, day_file in enumerate(found.files, 1):
                started = time.monotonic()
                result = DayResult(day_file.day, uri.name_of(day_file.uri))
                try:
                    copier = copier or postgres.adbc_connect()
                    load_day(control, spec, day_file, run_id, result, copier)
                except (OpsbookError, pa.ArrowException, pg_errors.Error, adbc_errors()) as exc:
                    result.status, result.error_class = "failed", type(exc) if isinstance(exc, OpsbookError) else None
                    result.error = in_one_line(exc)
                    ledger.failed(control, spec.name, day_file.day.isoformat(), STEP, run_id, result.error)
                    _drop(control, _staging_name(spec, day_file.day))
                    if copier is not None:  # the next day starts on a fresh connection
                        copier.close()
                        copier = None
                result.seconds = time.monotonic() - started
                results.append(result)
                rows = sum(r.rows for r in results if r.status in ("loaded", "merged"))
                notify(f"{index}/{len(found.files)} days, {rows:,} rows", transient=index != len(found.files))
        finally:
            if copier is not None:
                copier.close()
        locks.unlock(control, key)
    return results


def adbc_errors() -> type[Exception]:
    import adbc_driver_manager

    return adbc_driver_manager.Error


def _staging_name(spec: DatasetSpec, day: dt.date) -> str:
    return f"{schema.partition_name(spec, day)}_load"[:63]


def load_day(control, spec: DatasetSpec, day_file: DayFile, run_id: str, result: DayResult, copier=None) -> None:
    """Load one day file (see the module's text) through ``copier``, an ADBC connection (else one
    of its own); ``result`` says what was done."""
    from opsbook.sources.files import content_digest

    day = day_file.day
    partition = schema.partition_name(spec, day)
    digest = content_digest(day_file)
    fingerprint = [{"file": uri.name_of(day_file.uri), "digest": digest}]
    held = schema.partitions(control, spec).get(day)
    entry = ledger.get(control, spec.name, day.isoformat(), STEP)
    if held and entry and entry.status == "success" and entry.input_fingerprint == fingerprint:
        oid = control.execute("SELECT to_regclass(%s)::oid::bigint", (held,)).fetchone()[0]
        if entry.table_oid == oid and entry.params_hash == spec.fingerprint():
            result.status, result.rows = "unchanged", entry.rows
            return
    ledger.running(control, spec.name, day.isoformat(), STEP, run_id, spec.fingerprint(), fingerprint)
    staging = _staging_name(spec, day)
    reading = Reading()
    _drop(control, staging)
    create = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS, CHECK ({}))").format(
        ident(staging), ident(spec.table), schema.day_check(spec, day)
    )
    columns = layout.arrow_schema(spec)
    batches = _tables(read_batches(spec, day_file, reading), columns)
    loaded, _ = postgres.copy_arrow(None, [create.as_string(control)], staging, columns, batches, conn=copier)
    result.rows, result.absent, result.renamed = loaded, reading.absent, len(reading.renamed)
    if loaded != reading.rows:
        raise OpsbookError(f"{day}: COPY stored {loaded:,} rows but {reading.rows:,} were read")
    if not loaded:
        raise SourceError(f"{result.file} holds no rows: an empty day is not loaded")
    _add_key(control, spec, staging, result.file)
    with postgres.connection(purpose=f"backfill {run_id} {day}") as conn, conn.cursor() as cur:
        # the day as it is now, under the lock partitions are made with: a writer that made the
        # partition or put rows in it since the count above turns the swap into a merge
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"opsbook.partition.{partition}",))
        with postgres.lock_wait(conn, spec.table, f"{day}: swapping in the partition {partition}"):
            held = schema.partitions(conn, spec).get(day)
            if held:
                cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident(held)))
                result.previous_rows = _rows(conn, held)
            if not result.previous_rows:
                if held:
                    cur.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(ident(spec.table), ident(held)))
                    cur.execute(sql.SQL("DROP TABLE {}").format(ident(held)))
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), ident(partition)))
                schema.attach(cur, spec, partition, day)
                result.status = "loaded"
        if result.status != "loaded":
            result.written, result.kept = _merge(cur, spec, staging, held, reading.absent)
            cur.execute(sql.SQL("DROP TABLE {}").format(ident(staging)))
            partition, result.status = held, "merged"
        oid = cur.execute("SELECT to_regclass(%s)::oid::bigint", (partition,)).fetchone()[0]
        ledger.success(
            conn,
            spec.name,
            day.isoformat(),
            STEP,
            run_id,
            spec.fingerprint(),
            fingerprint,
            loaded,
            0,
            None,
            oid,
            source=day_file.uri,
        )
        conn.commit()


def _tables(batches: Iterator[pa.RecordBatch], columns: pa.Schema) -> Iterator[pa.Table]:
    for batch in batches:
        yield pa.Table.from_batches([batch], columns)


def _add_key(control, spec: DatasetSpec, staging: str, name: str) -> None:
    """Key the staging table as the realtime table is keyed; a repeated key refuses the file."""
    key = sql.SQL(", ").join(ident(k) for k in spec.key)
    try:
        control.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(ident(staging), key))
    except pg_errors.UniqueViolation as exc:
        detail = (exc.diag.message_detail or "").replace("Key ", "", 1)
        raise SourceError(f"{name} holds a key twice ({detail}); the file is not loaded") from None


def _merge(cur, spec: DatasetSpec, staging: str, partition: str, absent: list[str]) -> tuple[int, int]:
    """Upsert the staged rows into the day's partition; rows only PostgreSQL holds are kept, and
    so are the values of columns the file lacks (``absent``: NULL or derived in the staged rows).
    Returns (rows inserted or changed, rows kept that the file lacks)."""
    columns = spec.column_names
    others = [c for c in columns if c not in spec.key and c not in absent]
    names = sql.SQL(", ").join(ident(c) for c in columns)
    keys = sql.SQL(", ").join(ident(k) for k in spec.key)
    conflict = (
        sql.SQL("DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})").format(
            sets=sql.SQL(", ").join(sql.SQL("{} = excluded.{}").format(ident(c), ident(c)) for c in others),
            old=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident(partition), ident(c)) for c in others),
            new=sql.SQL(", ").join(sql.SQL("excluded.{}").format(ident(c)) for c in others),
        )
        if others
        else sql.SQL("DO NOTHING")
    )
    written = cur.execute(
        sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({key}) {conflict}").format(
            t=ident(partition), s=ident(staging), cols=names, key=keys, conflict=conflict
        )
    ).rowcount
    same_key = sql.SQL(" AND ").join(sql.SQL("s.{c} = p.{c}").format(c=ident(k)) for k in spec.key)
    kept = cur.execute(
        sql.SQL("SELECT count(*) FROM {p} p WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE {same})").format(
            p=ident(partition), s=ident(staging), same=same_key
        )
    ).fetchone()[0]
    return written, kept


def _rows(control, table: str) -> int:
    return control.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(table))).fetchone()[0]


def _drop(control, table: str) -> None:
    control.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(table)))


def rollup_window(days: list[dt.date], timezone: str) -> Days:
    """The local days the UTC days' readings fall on (the first and last may be partial)."""
    import zoneinfo

    zone = zoneinfo.ZoneInfo(timezone)
    first = dt.datetime.combine(min(days), dt.time(), dt.UTC).astimezone(zone).date()
    last = dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time(), dt.UTC) - dt.timedelta(microseconds=1)
    return Days(first, last.astimezone(zone).date())
