"""The bucketed path of a reconcile: checksums pushed down to both sides, mismatches fetched.

Past ``row_limit`` rows, reading both sides whole costs memory for nothing: most buckets agree.
Each side computes, per bucket of keys, a row count and a sum of row checksums (PostgreSQL in
SQL over the window, DuckDB over the Parquet files); only the buckets whose count or checksum
differ are fetched from both sides and compared row by row (:func:`.compare.compare_tables`),
so the differences and their classes are the same as the hash join's.
"""

from __future__ import annotations

import pyarrow as pa

from opsbook.datasets import DatasetSpec
from opsbook.trafficsafety.compare import Comparison, compare_tables
from opsbook.trafficsafety.layout import arrow_schema
from opsbook.trafficsafety.sides import key_is_enforced, read_postgres
from opsbook.windows import Days

BUCKETS = 4096
QUANTUM = 10_000  # floats are compared in checksums at 1e-4 (finer tolerances are settled row by row)


def bucketable(spec: DatasetSpec) -> bool:
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


def compare_bucketed(spec: DatasetSpec, window: Days, files, lake_counts, pg_counts, buckets: int) -> Comparison:
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
    differences = compare_tables(spec, lake, pg, key_is_enforced(spec))
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
