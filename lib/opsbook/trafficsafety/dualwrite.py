"""Write each batch to every target: the Parquet lake, PostgreSQL, and a raw archive in GCS.

The batch is first staged durably (a Parquet file in ``<state>/staging``); then each target is
written, and the write ledger ``opsbook.writes`` records every batch x target: status
(``pending`` until a write succeeds), attempts, rows and the last error. A failing target does
not block the others, and nothing is only logged: its batch stays pending, and
:func:`retry_pending` (or a reconcile repair) writes it from the staged copy later. The staged
copy goes once every target has the batch.

- lake: ``<LAKE_URL>/<dataset>/date=YYYY-MM-DD/<batch id>.parquet``, one file per day of the
  batch; a rewrite replaces it whole (temporary file and rename, or one GCS upload).
- PostgreSQL: an upsert on the dataset's key that only rewrites rows whose values changed.
- archive: ``<ARCHIVE_URL>/raw/<dataset>/<yyyy>/<mm>/<dd>/<batch id>.json.gz``, the batch as
  received (newline-delimited JSON, gzip).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from opsbook import config, services
from opsbook.datasets import DatasetSpec
from opsbook.errors import OpsbookError
from opsbook.stores import postgres
from opsbook.stores.postgres import ident

TARGETS = ("lake", "postgres", "archive")

DDL = """
CREATE TABLE IF NOT EXISTS opsbook.writes (
    dataset     text NOT NULL,
    batch_id    text NOT NULL,
    target      text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'success')),
    attempts    integer NOT NULL DEFAULT 0,
    rows        bigint,
    first_day   date,
    last_day    date,
    last_error  text,
    staged_path text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, batch_id, target)
);
"""


def lake_root() -> str:
    return os.environ.get("LAKE_URL") or str(config.state_dir() / "lake")


def archive_root() -> str:
    return os.environ.get("ARCHIVE_URL") or str(config.state_dir() / "archive")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


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

    @property
    def complete(self) -> bool:
        return all(t.status == "success" for t in self.targets.values())


# --- setup -----------------------------------------------------------------------------------


def ensure_tables(conn, spec: DatasetSpec) -> None:
    """The write ledger and the dataset's table (keyed for the upsert)."""
    from opsbook import runlog

    runlog.ensure_schema(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.writes'))")
        conn.execute(DDL)
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
                ident(spec.table),
                postgres.column_definitions(spec),
                sql.SQL(", ").join(ident(k) for k in spec.key),
            )
        )


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    types = {
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "double": pa.float64(),
        "text": pa.string(),
        "timestamptz": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
    }
    return pa.schema([pa.field(c.name, types[c.type]) for c in spec.columns])


def conform(spec: DatasetSpec, batch) -> pa.Table:
    """The batch (Arrow table or DataFrame) with the spec's columns, types and a complete key."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_pandas(batch, preserve_index=False)
    missing = [c for c in spec.column_names if c not in table.column_names]
    if missing:
        raise OpsbookError(f"batch lacks column(s) {', '.join(missing)} of dataset {spec.name}")
    table = table.select(spec.column_names).cast(arrow_schema(spec))
    for key in spec.key:
        if table.column(key).null_count:
            raise OpsbookError(f"batch has {table.column(key).null_count} row(s) with no {key} (a key column)")
    return table


def days_of(spec: DatasetSpec, table: pa.Table) -> list[dt.date]:
    import pyarrow.compute as pc

    column = table.column(spec.partition.column)
    return sorted(set(pc.cast(column, pa.date32()).to_pylist())) if table.num_rows else []


# --- targets ---------------------------------------------------------------------------------


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_lake(spec: DatasetSpec, batch_id: str, table: pa.Table, root: str | None = None) -> int:
    import pyarrow.compute as pc

    root = root or lake_root()
    day_of = pc.cast(table.column(spec.partition.column), pa.date32())
    for day in days_of(spec, table):
        part = table.filter(pc.equal(day_of, pa.scalar(day, pa.date32())))
        uri = join(root, spec.name, f"date={day.isoformat()}", f"{batch_id}.parquet")
        put(uri, _parquet_bytes(part))
    return table.num_rows


def write_archive(spec: DatasetSpec, batch_id: str, table: pa.Table, root: str | None = None) -> int:
    root = root or archive_root()
    day = max(days_of(spec, table)) if table.num_rows else dt.date.today()
    lines = "".join(json.dumps(row, default=str) + "\n" for row in table.to_pylist())
    uri = join(root, "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}", f"{batch_id}.json.gz")
    put(uri, gzip.compress(lines.encode("utf-8"), mtime=0))
    return table.num_rows


def write_postgres(spec: DatasetSpec, table: pa.Table) -> int:
    """Upsert on the key; a row whose values are unchanged is not rewritten."""
    import adbc_driver_postgresql.dbapi as adbc

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
    with adbc.connect(postgres.normalize_url(services.database_url())) as conn:
        with conn.cursor() as cur:
            cur.adbc_ingest(staging, table, mode="create", temporary=True)
            cur.execute(statement)
            cur.execute(f'DROP TABLE "{staging}"')
        conn.commit()
    return table.num_rows


def put(uri: str, data: bytes) -> None:
    """Write a whole object or file; a reader never sees half of it."""
    if uri.startswith("gs://"):
        from opsbook.stores import objects

        objects.upload_bytes(uri, data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# --- batches ---------------------------------------------------------------------------------


def staging_path(spec: DatasetSpec, batch_id: str) -> Path:
    return config.state_dir() / "staging" / spec.name / f"{batch_id}.parquet"


def write_batch(
    control, spec: DatasetSpec, batch_id: str, batch, targets=TARGETS, skip: dict[str, str] | None = None
) -> BatchResult:
    """Stage the batch, then write it to each target; record every outcome in the ledger.

    ``skip`` names targets not to try now (one that just failed: no point waiting on it again
    for every batch); they stay pending, with the reason as their last error.
    """
    table = conform(spec, batch)
    staged = staging_path(spec, batch_id)
    put(str(staged), _parquet_bytes(table))
    days = days_of(spec, table)
    first, last = (days[0], days[-1]) if days else (None, None)
    for target in targets:
        control.execute(
            """INSERT INTO opsbook.writes (dataset, batch_id, target, status, rows, first_day, last_day, staged_path)
               VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s)
               ON CONFLICT (dataset, batch_id, target) DO UPDATE SET status = 'pending', rows = excluded.rows,
                   first_day = excluded.first_day, last_day = excluded.last_day,
                   staged_path = excluded.staged_path, updated_at = now()""",
            (spec.name, batch_id, target, table.num_rows, first, last, str(staged)),
        )
    return _write_targets(control, spec, batch_id, table, targets, skip or {})


def _write_targets(control, spec: DatasetSpec, batch_id: str, table: pa.Table, targets, skip=None) -> BatchResult:
    result = BatchResult(batch_id, table.num_rows)
    writers = {
        "lake": lambda: write_lake(spec, batch_id, table),
        "postgres": lambda: write_postgres(spec, table),
        "archive": lambda: write_archive(spec, batch_id, table),
    }
    skip = skip or {}
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
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:1000]
        attempts = control.execute(
            """UPDATE opsbook.writes SET status = %s, attempts = attempts + %s, last_error = %s, updated_at = now()
               WHERE dataset = %s AND batch_id = %s AND target = %s RETURNING attempts""",
            (status, 1 if tried else 0, error, spec.name, batch_id, target),
        ).fetchone()[0]
        result.targets[target] = TargetResult(target, status, rows, attempts, error, time.monotonic() - t0)
    pending = control.execute(
        "SELECT count(*) FROM opsbook.writes WHERE dataset = %s AND batch_id = %s AND status = 'pending'",
        (spec.name, batch_id),
    ).fetchone()[0]
    if not pending:
        staging_path(spec, batch_id).unlink(missing_ok=True)
    return result


def pending_writes(control, spec: DatasetSpec) -> list[dict]:
    from opsbook.stores.postgres import dicts

    return dicts(
        control,
        "SELECT batch_id, target, attempts, rows, first_day, last_day, last_error, updated_at FROM opsbook.writes "
        "WHERE dataset = %s AND status = 'pending' ORDER BY batch_id, target",
        (spec.name,),
    )


def retry_pending(control, spec: DatasetSpec) -> list[BatchResult]:
    """Write every pending batch x target again, from the staged copy."""
    by_batch: dict[str, list[str]] = {}
    for row in pending_writes(control, spec):
        by_batch.setdefault(row["batch_id"], []).append(row["target"])
    results = []
    for batch_id, targets in sorted(by_batch.items()):
        staged = staging_path(spec, batch_id)
        if not staged.exists():
            raise OpsbookError(
                f"batch {batch_id} is pending for {', '.join(targets)} but its staged copy {staged} is gone"
            )
        results.append(_write_targets(control, spec, batch_id, pq.read_table(staged), targets))
    return results
