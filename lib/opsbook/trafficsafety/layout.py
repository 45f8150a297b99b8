"""Where the dual-write puts a dataset's rows, and in which shape.

- lake: ``<LAKE_URL>/<dataset>/date=YYYY-MM-DD/<batch id>.parquet``, one file per UTC day of a
  batch (zstd);
- archive: ``<ARCHIVE_URL>/raw/<dataset>/<yyyy>/<mm>/<dd>/<batch id>.json.gz``, the batch as
  received (newline-delimited JSON, gzip), under the batch's last day;
- rows: the spec's columns with their Arrow types, and a complete key (:func:`conform`).

Roots are folders or ``gs://`` prefixes alike (:mod:`opsbook.stores.uri`).
"""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq

from opsbook import config
from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError
from opsbook.stores.uri import join

ARROW_TYPES = {
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "text": pa.string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in spec.columns])


def conform(spec: DatasetSpec, batch, what: str = "batch") -> pa.Table:
    """The batch (Arrow table or DataFrame) with the spec's columns, types and a complete key.

    Raises
    ------
    SourceError
        A column of the spec is missing, a value does not cast, or a key value is NULL.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_pandas(batch, preserve_index=False)
    missing = [c for c in spec.column_names if c not in table.column_names]
    if missing:
        raise SourceError(f"{what} lacks column(s) {', '.join(missing)} of dataset {spec.name}")
    try:
        table = table.select(spec.column_names).cast(arrow_schema(spec))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SourceError(f"{what} does not fit dataset {spec.name}: {exc}") from None
    for key in spec.key:
        if table.column(key).null_count:
            raise SourceError(f"{what} has {table.column(key).null_count} row(s) with no {key} (a key column)")
    return table


def days_of(spec: DatasetSpec, table: pa.Table) -> list[dt.date]:
    """The UTC days the table's rows fall on, in order."""
    import pyarrow.compute as pc

    column = table.column(spec.partition.column)
    return sorted(set(pc.cast(column, pa.date32()).to_pylist())) if table.num_rows else []


def utc_day(value) -> dt.date | None:
    """The UTC day of a Parquet statistic: a date, or a timestamp with a time zone (else None)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date() if value.tzinfo else None
    return value if isinstance(value, dt.date) else None


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def lake_day(spec: DatasetSpec, day: dt.date, root: str | None = None) -> str:
    """The lake folder (or prefix) of one day of the dataset."""
    return join(root or config.lake_url(), spec.name, f"date={day.isoformat()}")


def lake_file(spec: DatasetSpec, day: dt.date, name: str, root: str | None = None) -> str:
    return join(lake_day(spec, day, root), f"{name}.parquet")


def archive_day(spec: DatasetSpec, day: dt.date, root: str | None = None) -> str:
    """The archive folder (or prefix) of the batches whose last day is ``day``."""
    return join(root or config.archive_url(), "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}")


def archive_object(spec: DatasetSpec, batch_id: str, day: dt.date, root: str | None = None) -> str:
    return join(archive_day(spec, day, root), f"{batch_id}.json.gz")
