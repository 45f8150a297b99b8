"""The incoming batches: Parquet files in a folder or ``gs://`` prefix, and the intersections.

A source holds one Parquet file per collection batch: index batches, in the dataset spec's
columns (older names mapped by ``source.rename``), and raw files (named as ``source.raw_files``
says, ``bsm_*.parquet``), archived as they are. The batch id is the file's name without
``.parquet`` (so ids must be unique across the source's folders). An ``intersections.csv`` at
the source's root, when present, lists the intersections (the ``intersections`` spec's columns)
and is upserted before the batches.

Which UTC days a batch covers comes from its Parquet footer (the partition column's statistics),
so choosing the batches of a window reads no rows; an index file whose footer does not say is
read, a raw file's day is then a date in its name (``bsm_2025-11-03_...``).
A batch is in a window when its days (first to last) overlap it: a batch holding late readings
of the day before belongs to both days, and the write ledger keeps it from being written twice.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError, in_one_line
from opsbook.stores import uri
from opsbook.trafficsafety.layout import absent, arrow_schema, conform, days_of, from_file, renamed, utc_day
from opsbook.windows import Days

SUFFIX = ".parquet"
INTERSECTIONS_FILE = "intersections.csv"
INTERSECTIONS_DATASET = "intersections"


@dataclass(frozen=True)
class Batch:
    """One batch file of the source, described from its footer."""

    batch_id: str
    uri: str
    rows: int
    first_day: dt.date | None  # None: the batch has no row
    last_day: dt.date | None
    size: int = 0
    kind: str = "indices"  # indices | raw (archived byte for byte)

    def overlaps(self, window: Days) -> bool:
        """True when the window is empty (every batch) or shares a day with the batch."""
        if not window:
            return True
        return self.first_day is not None and self.first_day <= window.last and self.last_day >= window.first


@dataclass
class Found:
    """The batch files of a source, those in the window first."""

    location: str
    batches: list[Batch]  # in the window, in batch id order
    outside: list[Batch] = field(default_factory=list)  # readable, outside the window
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # other files
    intersections: str | None = None  # the intersections file, when there is one


def find(spec: DatasetSpec, location: str, window: Days) -> Found:
    """The batches of ``location`` whose days overlap ``window`` (every batch when it is empty).

    Raises
    ------
    SourceError
        The location is a local path that does not exist or is not a folder.
    """
    uri.check_folder(location)
    found = Found(location, [])
    seen: dict[str, str] = {}
    base = location.rstrip("/") + "/"
    for obj in uri.listing(location):
        relative = obj.uri[len(base) :] if obj.uri.startswith(base) else obj.name
        if obj.name.startswith("."):  # a write in progress, or a system file
            continue
        if relative == INTERSECTIONS_FILE:
            found.intersections = obj.uri
            continue
        if not obj.name.endswith(SUFFIX):
            found.ignored.append(relative)
            continue
        batch_id = obj.name.removesuffix(SUFFIX)
        if batch_id in seen:
            found.unreadable.append((relative, f"batch id {batch_id} is also {seen[batch_id]}"))
            continue
        seen[batch_id] = relative
        raw = bool(spec.source.raw_files) and fnmatch.fnmatchcase(obj.name, spec.source.raw_files)
        try:
            batch = (
                describe_raw(spec, obj.uri, batch_id, obj.size) if raw else describe(spec, obj.uri, batch_id, obj.size)
            )
        except (SourceError, OSError, pa.ArrowException) as exc:
            found.unreadable.append((relative, in_one_line(exc)))
            continue
        (found.batches if batch.overlaps(window) else found.outside).append(batch)
    found.batches.sort(key=lambda b: b.batch_id)
    return found


def describe(spec: DatasetSpec, location: str, batch_id: str, size: int = 0) -> Batch:
    """A batch file's rows and days, from its footer when the statistics prove them."""
    column = spec.partition.column
    with uri.open_read(location) as handle:
        meta = pq.ParquetFile(handle).metadata  # the footer only
    names = meta.schema.names
    lacking = [c for c in absent(spec, names) if spec.column(c).required or c in spec.key]
    if lacking:
        raise SourceError(f"lacks column(s) {', '.join(lacking)} of dataset {spec.name}")
    mapping = renamed(spec, names)
    days = _days_in_footer(meta, [mapping.get(n, n) for n in names].index(column))
    if days is None:  # no usable statistics: read the batch
        table = read(spec, location, batch_id)
        found = days_of(spec, table)
        days = (found[0], found[-1]) if found else (None, None)
    return Batch(batch_id, location, meta.num_rows, days[0], days[1], size)


def describe_raw(spec: DatasetSpec, location: str, batch_id: str, size: int = 0) -> Batch:
    """A raw file's rows and UTC day: the timestamp column's statistics, else a date in its name.

    Raises
    ------
    SourceError
        Not Parquet, or no day can be told, or its rows span more than one day.
    """
    with uri.open_read(location) as handle:
        meta = pq.ParquetFile(handle).metadata
    names = meta.schema.names
    days = _days_in_footer(meta, names.index(spec.partition.column)) if spec.partition.column in names else None
    if days is None or days[0] is None:
        match = re.search(r"(\d{4})-?(\d{2})-?(\d{2})", batch_id)
        try:
            day = dt.date(*map(int, match.groups())) if match else None
        except ValueError:
            day = None
        if day is None:
            raise SourceError("a raw file whose day is neither in its statistics nor in its name")
        days = (day, day)
    if days[0] != days[1]:
        raise SourceError(f"a raw file spanning {days[0]} to {days[1]}: each is archived under one day")
    return Batch(batch_id, location, meta.num_rows, days[0], days[1], size, kind="raw")


def _days_in_footer(meta, at: int) -> tuple[dt.date | None, dt.date | None] | None:
    first = last = None
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(at).statistics
        if stats is None or not stats.has_min_max:
            return None
        low, high = utc_day(stats.min), utc_day(stats.max)
        if low is None or high is None:
            return None
        first = low if first is None else min(first, low)
        last = high if last is None else max(last, high)
    return first, last


def read(spec: DatasetSpec, location: str, batch_id: str) -> pa.Table:
    """The batch's rows in the spec's columns and types (SourceError when they do not fit)."""
    data = uri.read_bytes(location)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as exc:
        raise SourceError(f"batch {batch_id} ({uri.name_of(location)}) is not readable Parquet: {exc}") from None
    return from_file(spec, table, what=f"batch {batch_id}")


# --- intersections ---------------------------------------------------------------------------


def upsert_intersections(conn, location: str, table_name: str = INTERSECTIONS_DATASET) -> int:
    """Upsert the intersections file into ``table_name`` (made by :func:`.schema.ensure`, with a
    PostGIS point ``geometry`` where the database has PostGIS); returns the rows in the file."""
    import pyarrow.csv as pacsv
    from psycopg import sql

    from opsbook import datasets
    from opsbook.stores import postgres
    from opsbook.stores.postgres import ident

    spec = datasets.get(INTERSECTIONS_DATASET)
    options = pacsv.ConvertOptions(column_types=arrow_schema(spec))
    try:
        table = pacsv.read_csv(pa.BufferReader(uri.read_bytes(location)), convert_options=options)
    except pa.ArrowException as exc:
        raise SourceError(f"{INTERSECTIONS_FILE} is not readable: {exc}") from None
    table = conform(spec, table, what=INTERSECTIONS_FILE)
    columns = spec.column_names
    others = [c for c in columns if c not in spec.key]
    upsert = sql.SQL("INSERT INTO {t} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {sets}").format(
        t=ident(table_name),
        cols=sql.SQL(", ").join(ident(c) for c in columns),
        marks=sql.SQL(", ").join(sql.Placeholder() for _ in columns),
        key=sql.SQL(", ").join(ident(k) for k in spec.key),
        sets=sql.SQL(", ").join(sql.SQL("{} = excluded.{}").format(ident(c), ident(c)) for c in others),
    )
    postgis = postgres.has_postgis(conn)
    rows = [tuple(r[c] for c in columns) for r in table.to_pylist()]
    with conn.transaction():  # the table is made with the dataset's others (schema.ensure)
        with conn.cursor() as cur:
            cur.executemany(upsert, rows)
        if postgis:
            point = sql.SQL("ST_SetSRID(ST_MakePoint(longitude, latitude), 4326)")
            conn.execute(
                sql.SQL("UPDATE {t} SET geometry = {p} WHERE geometry IS NULL OR NOT ST_Equals(geometry, {p})").format(
                    t=ident(table_name), p=point
                )
            )
    return len(rows)
