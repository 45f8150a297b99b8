"""Where the dual-write puts a dataset's rows and files, and in which shape: the runbook's bucket.

- lake (the bucket's processed side, ``LAKE_URL``): one Parquet file per UTC day where the
  spec's ``source.layout`` says, ``processed/indices/indices_<date>.parquet`` (zstd); a batch
  is merged into its days' files (:mod:`.dualwrite`);
- archive (the bucket's raw side, ``ARCHIVE_URL``): each incoming raw file (``bsm_*.parquet``)
  byte for byte where ``source.raw_layout`` says, ``raw/bsm/<yyyy>/<mm>/<dd>/<name>``, under its
  UTC day;
- rows: the spec's columns with their Arrow types and a complete key (:func:`conform`); a file
  in older column names is read through the spec's ``source.rename`` (:func:`from_file`).

Roots are folders or ``gs://`` prefixes alike (:mod:`opsbook.stores.uri`); ``LAKE_URL`` and
``ARCHIVE_URL`` may name the same bucket.
"""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opsbook import config
from opsbook.datasets import DatasetSpec
from opsbook.errors import OpsbookError, SourceError
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


def renamed(spec: DatasetSpec, names: list[str]) -> dict[str, str]:
    """The file's older column names that the spec's ``source.rename`` maps, and to what."""
    return {old: new for old, new in spec.source.rename.items() if old in names and new not in names}


def absent(spec: DatasetSpec, names: list[str]) -> list[str]:
    """The spec's columns a file with these column names lacks (after renaming)."""
    mapping = renamed(spec, names)
    present = {mapping.get(n, n) for n in names}
    return [c.name for c in spec.columns if c.name not in present]


def from_file(spec: DatasetSpec, table: pa.Table, what: str = "file") -> pa.Table:
    """A file's rows in the spec's columns: older names mapped, a column the spec does not
    require and the file lacks NULL (the hour and weekday derived from the timestamp), cast.

    Raises
    ------
    SourceError
        A required or key column is missing, a value does not cast, a key value is NULL.
    """
    mapping = renamed(spec, table.column_names)
    if mapping:
        table = table.rename_columns([mapping.get(n, n) for n in table.column_names])
    lacking = absent(spec, table.column_names)
    required = [c for c in lacking if spec.column(c).required or c in spec.key]
    if required:
        raise SourceError(f"{what} lacks column(s) {', '.join(required)} (the spec's source.rename maps old names)")
    stamps = pc.cast(table.column(spec.partition.column), pa.timestamp("us", tz="UTC")) if lacking else None
    for name in lacking:
        if name == "hour_of_day":
            values = pc.hour(stamps)
        elif name == "day_of_week":
            values = pc.day_of_week(stamps, count_from_zero=True, week_start=7)  # Sunday is 0
        else:
            values = pa.nulls(table.num_rows, ARROW_TYPES[spec.column(name).type])
        table = table.append_column(name, values)
    return conform(spec, table, what=what)


def days_of(spec: DatasetSpec, table: pa.Table) -> list[dt.date]:
    """The UTC days the table's rows fall on, in order."""
    column = table.column(spec.partition.column)
    return sorted(set(pc.cast(column, pa.date32()).to_pylist())) if table.num_rows else []


def of_day(spec: DatasetSpec, table: pa.Table, day: dt.date) -> pa.Table:
    """The table's rows of one UTC day."""
    return table.filter(
        pc.equal(pc.cast(table.column(spec.partition.column), pa.date32()), pa.scalar(day, pa.date32()))
    )


def utc_day(value) -> dt.date | None:
    """The UTC day of a Parquet statistic: a date, or a timestamp with a time zone (else None)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date() if value.tzinfo else None
    return value if isinstance(value, dt.date) else None


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


# --- the bucket ------------------------------------------------------------------------------


def lake_file(spec: DatasetSpec, day: dt.date, root: str | None = None) -> str:
    """The lake's file of one UTC day (it may not exist)."""
    if not spec.source.layout:
        raise OpsbookError(f"dataset {spec.name} has no source.layout: where its daily files lie is not known")
    return join(root or config.lake_url(), spec.source.layout.format(date=day.isoformat()))


def folder_of(location: str) -> str:
    return location.rsplit("/", 1)[0]


def archive_object(spec: DatasetSpec, name: str, day: dt.date, root: str | None = None) -> str:
    """Where the raw file ``name`` of UTC day ``day`` is archived."""
    if not spec.source.raw_layout:
        raise OpsbookError(f"dataset {spec.name} has no source.raw_layout: where raw files go is not known")
    path = spec.source.raw_layout.format(yyyy=f"{day:%Y}", mm=f"{day:%m}", dd=f"{day:%d}", name=name)
    return join(root or config.archive_url(), path)


def archive_day(spec: DatasetSpec, day: dt.date, root: str | None = None) -> str:
    """The archive folder (or prefix) of one UTC day's raw files."""
    return folder_of(archive_object(spec, "x", day, root))
