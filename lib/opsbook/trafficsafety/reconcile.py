"""Compare the lake (Parquet) with PostgreSQL, key by key, in DuckDB over Arrow.

Both sides are read as Arrow (the lake's Parquet files; PostgreSQL through ADBC's binary
COPY), then joined on the key in DuckDB. A row hash settles identical rows; the others are
compared column by column with each float column's tolerance. Every difference gets a class:

- ``missing in postgres``: the key is in the lake only;
- ``missing in lake``: the key is in PostgreSQL only;
- ``value drift``: both have the key and some value differs beyond tolerance (NULL vs a value
  counts), the columns are named;
- ``timestamp shifted``: a row missing on each side with the same intersection and values, and
  timestamps a whole number of hours apart (a time-zone mistake); the pair is one difference;
- ``duplicate key``: a key more than once on one side.

Timestamps are compared in UTC. Above ``row_limit`` rows, the comparison first pushes
bucketed checksums down to both sides (PostgreSQL computes its own; DuckDB reads the Parquet
files), and fetches only the buckets whose count or checksum differ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.trafficsafety.dualwrite import arrow_schema, join, lake_root

CLASSES = ("missing in postgres", "missing in lake", "value drift", "timestamp shifted", "duplicate key")
BUCKETS = 4096
QUANTUM = 10_000  # floats are compared in checksums at 1e-4 (finer tolerances are settled row by row)


@dataclass
class Comparison:
    days: list[dt.date]
    lake_rows: dict[dt.date, int]
    postgres_rows: dict[dt.date, int]
    differences: list[dict[str, Any]]  # one per key: class, day, key, columns, lake / postgres values
    method: str  # "hash join" or "bucketed checksums (N of M buckets fetched)"
    lake_files: int = 0
    fetched_rows: int = 0

    def counts(self) -> dict[str, int]:
        found = {c: 0 for c in CLASSES}
        for d in self.differences:
            found[d["class"]] += 1
        return found


@dataclass
class Window:
    first: dt.date
    last: dt.date  # inclusive

    @property
    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.first, dt.time(), dt.UTC)
        return start, dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), dt.UTC)


def parse_window(text: str) -> Window:
    """``2025-11-01..2025-11-07`` (both days included) or a single ``2025-11-03``."""
    first, sep, last = text.partition("..")
    try:
        start = dt.date.fromisoformat(first.strip())
        end = dt.date.fromisoformat(last.strip()) if sep else start
    except ValueError:
        raise ValueError(f"{text!r} is not a day window (expected e.g. 2025-11-01..2025-11-07)") from None
    if end < start:
        raise ValueError(f"window {text!r} ends before it starts")
    if (end - start).days > 3660:
        raise ValueError(f"window {text!r} is longer than ten years")
    return Window(start, end)


# --- reading ---------------------------------------------------------------------------------


def lake_files(spec: DatasetSpec, window: Window, root: str | None = None) -> list[str]:
    root = root or lake_root()
    found = []
    for day in window.days:
        prefix = join(root, spec.name, f"date={day.isoformat()}")
        if prefix.startswith("gs://"):
            from opsbook.stores import objects

            found.extend(o.uri for o in objects.list_objects(prefix) if o.uri.endswith(".parquet"))
        else:
            from pathlib import Path

            found.extend(str(p) for p in sorted(Path(prefix).glob("*.parquet")))
    return found


def read_lake(spec: DatasetSpec, files: list[str]) -> pa.Table:
    """Every row of the lake files, with the file each came from (Arrow)."""
    import pyarrow.parquet as pq

    schema = arrow_schema(spec)
    parts = []
    for uri in files:
        if uri.startswith("gs://"):
            from opsbook.stores import objects

            with objects.open_read(uri) as handle:
                table = pq.read_table(pa.BufferReader(handle.read()))
        else:
            table = pq.read_table(uri)
        table = table.select(spec.column_names).cast(schema)
        parts.append(table.append_column("_file", pa.array([uri.rsplit("/", 1)[-1]] * table.num_rows, pa.string())))
    if not parts:
        return schema.empty_table().append_column("_file", pa.array([], pa.string()))
    return pa.concat_tables(parts)


def read_postgres(spec: DatasetSpec, window: Window, where: str = "") -> pa.Table:
    """The window's rows from PostgreSQL as Arrow, through ADBC (binary COPY), not pd.read_sql."""
    import adbc_driver_postgresql.dbapi as adbc

    from opsbook import services
    from opsbook.stores import postgres

    start, end = window.bounds()
    column = spec.partition.column
    query = sql.SQL("SELECT {} FROM {} WHERE {} >= {} AND {} < {}{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names),
        sql.Identifier(spec.table),
        sql.Identifier(column),
        sql.Literal(start),
        sql.Identifier(column),
        sql.Literal(end),
        sql.SQL(f" AND ({where})" if where else ""),
    )
    text = query.as_string()  # psycopg renders identifiers and literals without a connection
    with adbc.connect(postgres.normalize_url(services.database_url())) as conn, conn.cursor() as cur:
        cur.execute(text)
        table = cur.fetch_arrow_table()
    return table.cast(arrow_schema(spec))


# --- comparing -------------------------------------------------------------------------------


def _differs(spec: DatasetSpec, column: str) -> str:
    """SQL (DuckDB) true when the column differs between l and p beyond its tolerance."""
    col = spec.column(column)
    a, b = f'l."{column}"', f'p."{column}"'
    if col.type == "double":
        return (
            f"(({a} IS NULL) <> ({b} IS NULL) OR abs({a} - {b}) > "
            f"greatest({col.abs_tolerance!r}, {col.rel_tolerance!r} * abs({b})))"
        )
    return f"({a} IS DISTINCT FROM {b})"


def _lake_relation(lake) -> str:
    """DuckDB SQL for the lake side: an Arrow table registered as ``lake_raw``, or the Parquet
    files read in place (in parallel, without a copy in Python)."""
    if isinstance(lake, pa.Table):
        return "lake_raw"
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in lake)
    return f"(SELECT *, parse_filename(filename) AS _file FROM read_parquet([{listed}], filename = true))"


def compare_tables(spec: DatasetSpec, lake, pg: pa.Table, pg_unique: bool = False) -> list[dict[str, Any]]:
    """Every difference between the lake (an Arrow table, or local Parquet files) and the
    PostgreSQL rows (Arrow), classified (see the module docstring). ``pg_unique``: PostgreSQL
    enforces the key (a primary key), so its side needs no duplicate search."""
    return _compare(spec, lake, pg, pg_unique)[0]


def _compare(
    spec: DatasetSpec, lake, pg: pa.Table, pg_unique: bool, lake_days: dict[dt.date, int] | None = None
) -> tuple[list[dict[str, Any]], dict]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if isinstance(lake, pa.Table):
        con.register("lake_raw", lake)
    con.register("pg_raw", pg)
    sources = {"lake": _lake_relation(lake), "postgres": "pg_raw"}
    key = ", ".join(f'"{k}"' for k in spec.key)
    values = [c for c in spec.column_names if c not in spec.key]
    day_col = spec.partition.column
    differences: list[dict[str, Any]] = []

    # the lake's rows per day, when the Parquet footers did not prove them: counted
    if lake_days is None:
        lake_days = dict(_rows(con, f'SELECT "{day_col}"::DATE, count(*) FROM {sources["lake"]} GROUP BY 1'))
    hashed = ", ".join(f'"{c}"' for c in values)
    on = " AND ".join(f'l."{k}" = p."{k}"' for k in spec.key)

    def differing(sides: dict[str, str]) -> None:
        """Pass 1: the keys whose rows differ, joining on key and a hash of the values only."""
        con.execute(
            "CREATE OR REPLACE TEMP TABLE differing AS SELECT "
            + ", ".join(f'coalesce(l."{k}", p."{k}") AS "{k}"' for k in spec.key)
            + f", l._present AS in_lake, p._present AS in_pg "
            f"FROM (SELECT {key}, hash({hashed}) AS _h, TRUE AS _present FROM {sides['lake']}) l "
            f"FULL JOIN (SELECT {key}, hash({hashed}) AS _h, TRUE AS _present FROM {sides['postgres']}) p ON {on} "
            f"WHERE l._h IS DISTINCT FROM p._h"
        )

    sides = dict(sources)
    if pg_unique:
        differing(sides)
        # PostgreSQL's key is unique, so every lake row of the join is matched or lake-only: when
        # the matched lake rows are as many as the matched PostgreSQL rows and no lake-only key
        # repeats, the lake has no duplicate key either, and is not searched for one
        ((lake_only, pg_only, repeated),) = _rows(
            con,
            "SELECT count(*) FILTER (WHERE in_pg IS NULL), count(*) FILTER (WHERE in_lake IS NULL), "
            f"(SELECT count(*) FROM (SELECT {key} FROM differing WHERE in_pg IS NULL GROUP BY {key} "
            "HAVING count(*) > 1)) FROM differing",
        )
        if sum(lake_days.values()) - lake_only != pg.num_rows - pg_only or repeated:
            sides["lake"] = _one_row_per_key(con, spec, "lake", sources["lake"], differences)
            if sides["lake"] != sources["lake"]:
                differing(sides)
    else:
        for side, name in sources.items():
            sides[side] = _one_row_per_key(con, spec, side, name, differences)
        differing(sides)
    # pass 2: both sides' values for those keys only, and the columns beyond their tolerance
    drift_cols = " , ".join(f"CASE WHEN {_differs(spec, c)} THEN '{c}' END" for c in values)
    keys_out = ", ".join(f'd."{k}"' for k in spec.key)
    l_vals = ", ".join(f'l."{c}"' for c in values)
    p_vals = ", ".join(f'p."{c}"' for c in values)
    joins = " ".join(
        f"LEFT JOIN {sides[side]} {alias} ON " + " AND ".join(f'd."{k}" = {alias}."{k}"' for k in spec.key)
        for side, alias in (("lake", "l"), ("postgres", "p"))
    )
    found = _rows(
        con,
        f"SELECT {keys_out}, d.in_lake, d.in_pg, list_filter([{drift_cols}], lambda x: x IS NOT NULL), "
        f"{l_vals}, {p_vals} FROM differing d {joins}",
    )
    n_key, n_val = len(spec.key), len(values)
    only_lake, only_pg = {}, {}
    for row in found:
        k = tuple(row[:n_key])
        in_lake, in_pg, cols = row[n_key], row[n_key + 1], row[n_key + 2]
        lake_vals = dict(zip(values, row[n_key + 3 : n_key + 3 + n_val], strict=True))
        pg_vals = dict(zip(values, row[n_key + 3 + n_val :], strict=True))
        if in_lake and in_pg:
            if cols:  # else: different bits, within every tolerance
                differences.append(
                    _difference(spec, "value drift", k, columns=list(cols), lake=lake_vals, postgres=pg_vals)
                )
        elif in_lake:
            only_lake[k] = lake_vals
        else:
            only_pg[k] = pg_vals
    con.close()

    # a row missing on each side, same values, whole hours apart: written in the wrong time zone
    if day_col in spec.key and only_lake and only_pg:
        at = spec.key.index(day_col)
        waiting: dict[tuple, list[tuple]] = {}
        for k, vals in only_pg.items():
            rest = tuple(v for i, v in enumerate(k) if i != at)
            waiting.setdefault((rest, _frozen(vals)), []).append(k)
        for k, vals in sorted(only_lake.items()):
            rest = tuple(v for i, v in enumerate(k) if i != at)
            for moved in waiting.get((rest, _frozen(vals)), []):
                gap = (moved[at] - k[at]).total_seconds()
                if moved in only_pg and gap and gap % 3600 == 0 and abs(gap) <= 14 * 3600:
                    del only_pg[moved]
                    del only_lake[k]
                    differences.append(
                        _difference(
                            spec,
                            "timestamp shifted",
                            k,
                            shifted_to=moved,
                            detail=f"postgres has it {gap / 3600:+g} h off, at {moved[at].isoformat()}",
                        )
                    )
                    break
    for k, vals in only_lake.items():
        differences.append(_difference(spec, "missing in postgres", k, lake=vals))
    for k, vals in only_pg.items():
        differences.append(_difference(spec, "missing in lake", k, postgres=vals))
    order = {c: i for i, c in enumerate(CLASSES)}
    return sorted(differences, key=lambda d: (d["day"], order[d["class"]], d["key"])), lake_days


def _one_row_per_key(con, spec: DatasetSpec, side: str, name: str, differences: list) -> str:
    """Report each key ``name`` holds more than once, and return a relation with one row per key
    (the last written file's, on the lake); ``name`` itself when no key repeats."""
    key = ", ".join(f'"{k}"' for k in spec.key)
    columns = ", ".join(f'"{c}"' for c in spec.column_names)
    duplicated = _rows(con, f"SELECT {key}, count(*) FROM {name} GROUP BY {key} HAVING count(*) > 1 ORDER BY {key}")
    for row in duplicated:
        k = tuple(row[: len(spec.key)])
        differences.append(_difference(spec, "duplicate key", k, side=side, detail=f"{row[-1]} rows in {side}"))
    if not duplicated:
        return name
    order = "ORDER BY _file DESC" if side == "lake" else ""
    con.execute(
        f"CREATE TEMP TABLE {side}_one AS SELECT {columns}{', _file' if side == 'lake' else ''} FROM "
        f"(SELECT *, row_number() OVER (PARTITION BY {key} {order}) AS _rn FROM {name}) WHERE _rn = 1"
    )
    return f"{side}_one"


def _frozen(values: dict) -> tuple:
    return tuple(sorted(values.items()))


def _rows(con, query: str) -> list[tuple]:
    """Result rows as tuples, converted through Arrow (timestamps with time zone included)."""
    table = con.sql(query).to_arrow_table()
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def _difference(spec: DatasetSpec, klass: str, key: tuple, **extra) -> dict[str, Any]:
    moment = key[spec.key.index(spec.partition.column)] if spec.partition.column in spec.key else None
    day = moment.astimezone(dt.UTC).date() if isinstance(moment, dt.datetime) else moment
    return {"class": klass, "day": day, "key": key, **extra}


def compare(spec: DatasetSpec, window: Window, row_limit: int = 5_000_000, buckets: int = BUCKETS) -> Comparison:
    """Compare lake and PostgreSQL over the window (the bucketed path above ``row_limit`` rows)."""
    files = lake_files(spec, window)
    remote = any(f.startswith("gs://") for f in files)
    lake_days, total = None, 0
    if not remote:  # one read of the footers: rows per day when their statistics prove it, else rows
        lake_days = _day_counts_in_metadata(spec, files)
        lake_rows = sum(lake_days.values()) if lake_days is not None else _lake_rows_in_metadata(files)
        total = lake_rows + _postgres_rows(spec, window)
    if total > row_limit and not remote and _bucketable(spec):
        lake_counts, pg_counts = _day_counts(spec, window, files)
        return _compare_bucketed(spec, window, files, lake_counts, pg_counts, buckets)
    from concurrent.futures import ThreadPoolExecutor

    halves = _split(window)
    with ThreadPoolExecutor(len(halves)) as pool:  # PostgreSQL streams while DuckDB reads the files
        parts = [pool.submit(read_postgres, spec, part) for part in halves]
        lake = read_lake(spec, files) if remote else files
        pg_unique = _key_is_enforced(spec)
        pg = pa.concat_tables([p.result() for p in parts])
    differences, lake_counts = _compare(spec, lake, pg, pg_unique, lake_days)
    pg_counts = _counts_by_day(spec, pg)
    return Comparison(
        window.days,
        lake_counts,
        pg_counts,
        differences,
        "hash join",
        len(files),
        sum(lake_counts.values()) + sum(pg_counts.values()),
    )


def _split(window: Window) -> list[Window]:
    """Two halves of a window of several days (two PostgreSQL sessions read faster than one)."""
    days = window.days
    if len(days) < 2:
        return [window]
    middle = days[len(days) // 2]
    return [Window(window.first, middle - dt.timedelta(days=1)), Window(middle, window.last)]


def _day_counts_in_metadata(spec: DatasetSpec, files: list[str]) -> dict[dt.date, int] | None:
    """Rows per UTC day from the Parquet footers, when every row group's statistics prove it
    holds a single day and no NULL; None (count by scanning) otherwise."""
    import pyarrow.parquet as pq

    counts: dict[dt.date, int] = {}
    for path in files:
        meta = pq.ParquetFile(path).metadata
        try:
            at = meta.schema.names.index(spec.partition.column)
        except ValueError:
            return None
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            stats = group.column(at).statistics
            if group.num_rows == 0:
                continue
            if stats is None or not stats.has_min_max or stats.null_count:
                return None
            first, last = (_utc_day(v) for v in (stats.min, stats.max))
            if first is None or first != last:
                return None
            counts[first] = counts.get(first, 0) + group.num_rows
    return counts


def _utc_day(value) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).date() if value.tzinfo else None
    return value if isinstance(value, dt.date) else None


def _lake_rows_in_metadata(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files if not f.startswith("gs://"))


def _postgres_rows(spec: DatasetSpec, window: Window) -> int:
    """The planner's estimate of the window's rows: enough to choose a path, without a scan."""
    from opsbook.stores import postgres

    start, end = window.bounds()
    col = sql.Identifier(spec.partition.column)
    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        plan = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {} >= %s AND {} < %s").format(
                sql.Identifier(spec.table), col, col
            ),
            (start, end),
        ).fetchone()[0]
    return int(plan[0]["Plan"]["Plan Rows"])


def _key_is_enforced(spec: DatasetSpec) -> bool:
    """True when PostgreSQL has a unique index on exactly the dataset's key."""
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        indexes = conn.execute(
            """SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
               WHERE i.indrelid = to_regclass(%s) AND i.indisunique GROUP BY i.indexrelid""",
            (spec.table,),
        ).fetchall()
    return any(sorted(row[0]) == sorted(spec.key) for row in indexes)


def _counts_by_day(spec: DatasetSpec, table: pa.Table) -> dict[dt.date, int]:
    import pyarrow.compute as pc

    days, counts = _value_counts(pc.cast(table.column(spec.partition.column), pa.date32()))
    return dict(zip(days, counts, strict=True))


def _day_counts(spec: DatasetSpec, window: Window, files: list[str]) -> tuple[dict, dict]:
    from opsbook.stores import postgres

    col = spec.partition.column
    lake: dict[dt.date, int] = {}
    local = [f for f in files if not f.startswith("gs://")]
    if local:
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for day, n in con.execute(
            f'SELECT "{col}"::DATE, count(*) FROM read_parquet(?) GROUP BY 1', [local]
        ).fetchall():
            lake[day] = n
        con.close()
    remote = [f for f in files if f.startswith("gs://")]
    if remote:
        import pyarrow.compute as pc

        table = read_lake(spec, remote)
        for day, n in zip(*_value_counts(pc.cast(table.column(col), pa.date32())), strict=True):
            lake[day] = lake.get(day, 0) + n
    start, end = window.bounds()
    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT ({c} AT TIME ZONE 'UTC')::date, count(*) FROM {t} WHERE {c} >= %s AND {c} < %s GROUP BY 1"
            ).format(c=sql.Identifier(col), t=sql.Identifier(spec.table)),
            (start, end),
        ).fetchall()
    return lake, dict(rows)


def _value_counts(array) -> tuple[list, list]:
    import pyarrow.compute as pc

    counted = pc.value_counts(array)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


# --- the bucketed path -----------------------------------------------------------------------


def _bucketable(spec: DatasetSpec) -> bool:
    kinds = {spec.column(k).type for k in spec.key}
    return kinds <= {"integer", "bigint", "timestamptz"}


def _bucket_sql(spec: DatasetSpec, dialect: str, buckets: int) -> str:
    parts = []
    for k in spec.key:
        if spec.column(k).type == "timestamptz":
            parts.append(
                f'(extract(epoch from "{k}")::bigint / 60)' if dialect == "pg" else f'(epoch("{k}")::BIGINT // 60)'
            )
        else:
            parts.append(f'"{k}"::bigint')
    expr = parts[0]
    for p in parts[1:]:
        expr = f"({expr} * 1000003 + {p})"
    if dialect == "pg":  # mod(), not %: the text also goes through psycopg's placeholders
        return f"mod(mod({expr}, {buckets}) + {buckets}, {buckets})"
    return f"((({expr}) % {buckets}) + {buckets}) % {buckets}"


# Row checksums both sides compute alike with integer arithmetic only: each value is made an
# integer (floats at 1e-4, timestamps in microseconds, NULL a constant of its own), then folded
# into a polynomial hash modulo the Mersenne prime 2^31 - 1. Sums per bucket then compare the
# buckets; a changed row goes unseen only if its hash collides (odds about 1 in 2 billion), and
# every bucket that differs is compared row by row.
_PRIME = 2_147_483_647
_BASE = 1_000_003
_NULL = 1_234_567


def _integer_sql(spec: DatasetSpec, column, dialect: str) -> str:
    name = f'"{column.name}"'
    if column.type == "double":
        value = (
            f"floor({name} * {QUANTUM} + 0.5)::bigint"
            if dialect == "pg"
            else f"floor({name} * {QUANTUM} + 0.5)::BIGINT"
        )
    elif column.type == "timestamptz":
        value = f"(extract(epoch from {name}) * 1000000)::bigint" if dialect == "pg" else f"epoch_us({name})"
    else:
        value = f"{name}::bigint" if dialect == "pg" else f"{name}::BIGINT"
    if dialect == "pg":
        return f"coalesce(mod(mod({value}, {_PRIME}) + {_PRIME}, {_PRIME}), {_NULL})"
    return f"coalesce((({value} % {_PRIME}) + {_PRIME}) % {_PRIME}, {_NULL})"


def _checksum_sql(spec: DatasetSpec, dialect: str) -> str:
    h = "0"
    for column in spec.columns:
        term = _integer_sql(spec, column, dialect)
        h = f"mod({h} * {_BASE} + {term}, {_PRIME})" if dialect == "pg" else f"(({h}) * {_BASE} + {term}) % {_PRIME}"
    return h


def _compare_bucketed(spec: DatasetSpec, window: Window, files, lake_counts, pg_counts, buckets: int) -> Comparison:
    import duckdb

    from opsbook.stores import postgres

    col = spec.partition.column
    start, end = window.bounds()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    lake_sums = {
        (b, n, s)
        for b, n, s in con.execute(
            f"SELECT {_bucket_sql(spec, 'duck', buckets)} AS b, count(*), sum({_checksum_sql(spec, 'duck')}) "
            f"FROM read_parquet(?) GROUP BY 1",
            [files],
        ).fetchall()
    }
    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        pg_sums = {
            (b, n, int(s))
            for b, n, s in conn.execute(
                f"SELECT {_bucket_sql(spec, 'pg', buckets)} AS b, count(*), sum({_checksum_sql(spec, 'pg')}::numeric) "
                f'FROM "{spec.table}" WHERE "{col}" >= %s AND "{col}" < %s GROUP BY 1',
                (start, end),
            ).fetchall()
        }
    lake_sums = {(b, n, int(s)) for b, n, s in lake_sums}
    mismatched = sorted({b for b, _, _ in lake_sums ^ pg_sums})
    if not mismatched:
        con.close()
        return Comparison(
            window.days,
            lake_counts,
            pg_counts,
            [],
            f"bucketed checksums (0 of {buckets} buckets fetched)",
            len(files),
            0,
        )
    wanted = ", ".join(map(str, mismatched))
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    lake = con.sql(
        f"SELECT *, parse_filename(filename) AS _file FROM read_parquet([{listed}], filename = true) "
        f"WHERE {_bucket_sql(spec, 'duck', buckets)} IN ({wanted})"
    ).to_arrow_table()
    con.close()
    lake = lake.select([*spec.column_names, "_file"]).cast(arrow_schema(spec).append(pa.field("_file", pa.string())))
    pg = read_postgres(spec, window, where=f"{_bucket_sql(spec, 'pg', buckets)} IN ({', '.join(map(str, mismatched))})")
    differences = compare_tables(spec, lake, pg, _key_is_enforced(spec))
    return Comparison(
        window.days,
        lake_counts,
        pg_counts,
        differences,
        f"bucketed checksums ({len(mismatched)} of {buckets} buckets fetched)",
        len(files),
        lake.num_rows + pg.num_rows,
    )


# --- the archive against the write ledger ----------------------------------------------------


def archive_findings(control, spec: DatasetSpec, window: Window) -> list[dict[str, Any]]:
    """Archive objects against the write ledger: missing objects, pending writes, strays."""
    from opsbook.trafficsafety.dualwrite import archive_root
    from opsbook.stores.postgres import dicts

    root = archive_root()
    present: set[str] = set()
    for day in window.days:
        prefix = join(root, "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}")
        if prefix.startswith("gs://"):
            from opsbook.stores import objects

            try:
                present.update(o.uri for o in objects.list_objects(prefix))
            except Exception as exc:  # the archive cannot be read: that is a finding, not a crash
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                return [
                    {
                        "batch": "",
                        "finding": "archive unreachable",
                        "attempts": None,
                        "last error": f"{type(exc).__name__}: {first}"[:300],
                        "object": prefix,
                    }
                ]
        else:
            from pathlib import Path

            present.update(join(prefix, p.name) for p in Path(prefix).glob("*.json.gz"))
    entries = dicts(
        control,
        "SELECT batch_id, status, attempts, last_error, last_day FROM opsbook.writes WHERE dataset = %s "
        "AND target = 'archive' AND last_day BETWEEN %s AND %s ORDER BY batch_id",
        (spec.name, window.first, window.last),
    )
    findings, expected = [], set()
    for e in entries:
        day = e["last_day"]
        uri = join(root, "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}", f"{e['batch_id']}.json.gz")
        expected.add(uri)
        if e["status"] == "pending":
            findings.append(
                {
                    "batch": e["batch_id"],
                    "finding": "archive write pending",
                    "attempts": e["attempts"],
                    "last error": e["last_error"] or "",
                    "object": uri,
                }
            )
        elif uri not in present:
            findings.append(
                {
                    "batch": e["batch_id"],
                    "finding": "archive object missing",
                    "attempts": e["attempts"],
                    "last error": "",
                    "object": uri,
                }
            )
    for uri in sorted(present - expected):
        findings.append(
            {
                "batch": uri.rsplit("/", 1)[-1].removesuffix(".json.gz"),
                "finding": "object not in the ledger",
                "attempts": None,
                "last error": "",
                "object": uri,
            }
        )
    return findings


# --- repair ----------------------------------------------------------------------------------


def repair(spec: DatasetSpec, window: Window, comparison: Comparison, source_of_truth: str) -> dict[str, int]:
    """Re-apply the source of truth to the differing keys only; returns what was done."""
    from opsbook.trafficsafety import dualwrite

    done = {"upserted": 0, "deleted": 0, "lake days rewritten": 0}
    if not comparison.differences:
        return done
    if source_of_truth == "lake":
        wanted = {
            d["key"]
            for d in comparison.differences
            if d["class"] in ("missing in postgres", "value drift", "timestamp shifted", "duplicate key")
        }
        extra = {d["key"] for d in comparison.differences if d["class"] == "missing in lake"}
        extra |= {d["shifted_to"] for d in comparison.differences if d["class"] == "timestamp shifted"}
        lake = _dedupe_last(spec, read_lake(spec, lake_files(spec, window)))
        rows = lake.filter(_key_mask(spec, lake, wanted)) if wanted else None
        if rows is not None and rows.num_rows:
            done["upserted"] = dualwrite.write_postgres(spec, rows.select(spec.column_names))
        if extra:
            done["deleted"] = _delete_keys(spec, extra)
        return done
    # postgres is the source of truth: rewrite each affected day of the lake from it
    days = sorted({d["day"] for d in comparison.differences})
    for day in days:
        one = Window(day, day)
        table = read_postgres(spec, one)
        old = lake_files(spec, one)
        uri = join(dualwrite.lake_root(), spec.name, f"date={day.isoformat()}", f"repair-{_stamp()}.parquet")
        dualwrite.put(uri, dualwrite._parquet_bytes(table))
        for stale in old:
            _remove(stale)
        done["lake days rewritten"] += 1
    return done


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")


def _remove(uri: str) -> None:
    if uri.startswith("gs://"):
        from opsbook.stores import objects

        bucket, name = objects.split_uri(uri)
        objects.client().bucket(bucket).blob(name).delete()
    else:
        from pathlib import Path

        Path(uri).unlink(missing_ok=True)


def _dedupe_last(spec: DatasetSpec, table: pa.Table) -> pa.Table:
    """One row per key: the one from the file written last (names sort by time)."""
    import duckdb

    con = duckdb.connect()
    con.register("t", table)
    key = ", ".join(f'"{k}"' for k in spec.key)
    out = con.sql(
        f"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _file DESC) "
        f"AS _rn FROM t) WHERE _rn = 1"
    ).to_arrow_table()
    con.close()
    return out


def _key_mask(spec: DatasetSpec, table: pa.Table, keys: set[tuple]):
    columns = [table.column(k).to_pylist() for k in spec.key]
    return pa.array([tuple(values) in keys for values in zip(*columns, strict=True)])


def _delete_keys(spec: DatasetSpec, keys: set[tuple]) -> int:
    from opsbook.stores import postgres

    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key)
    deleted = 0
    with postgres.connection(purpose="reconcile repair") as conn, conn.transaction(), conn.cursor() as cur:
        for key in sorted(keys):
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(spec.table), where), key)
            deleted += cur.rowcount
    return deleted
