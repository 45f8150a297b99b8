"""Compare the lake (Parquet) with PostgreSQL, key by key, in DuckDB over Arrow.

Both sides are read as Arrow (:mod:`.sides`: the lake's Parquet files; PostgreSQL through
ADBC's binary COPY), then joined on the key in DuckDB in two passes: pass 1 joins on the key and
a hash of the values only, keeping the keys whose rows differ; pass 2 fetches both sides' values
for those keys alone and compares them column by column with each float column's tolerance.
Every difference gets a class:

- ``missing in postgres``: the key is in the lake only;
- ``missing in lake``: the key is in PostgreSQL only;
- ``value drift``: both have the key and some value differs beyond tolerance (NULL vs a value
  counts), the columns are named;
- ``timestamp shifted``: a row missing on each side with the same intersection and values, and
  timestamps a whole number of hours apart (a time-zone mistake); the pair is one difference;
- ``duplicate key``: a key more than once on one side.

Timestamps are compared in UTC. Above ``row_limit`` rows, :func:`compare` takes the bucketed
path instead (:mod:`.buckets`): checksums pushed down to both sides, only the buckets whose
count or checksum differ fetched, then compared here.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from opsbook.datasets import DatasetSpec
from opsbook.trafficsafety import sides
from opsbook.windows import Days

CLASSES = ("missing in postgres", "missing in lake", "value drift", "timestamp shifted", "duplicate key")
ROW_LIMIT = 5_000_000


@dataclass
class Comparison:
    days: list[dt.date]
    lake_rows: dict[dt.date, int]
    postgres_rows: dict[dt.date, int]
    differences: list[dict[str, Any]]  # one per key: class, day, key, columns, lake / postgres values
    method: str  # "hash join" or "bucketed checksums (N of M buckets fetched)"
    lake_files: int = 0
    fetched_rows: int = 0
    seconds: float = 0.0  # reading both sides and comparing them

    def counts(self) -> dict[str, int]:
        found = {c: 0 for c in CLASSES}
        for d in self.differences:
            found[d["class"]] += 1
        return found


def compare(spec: DatasetSpec, window: Days, row_limit: int = ROW_LIMIT, buckets: int | None = None) -> Comparison:
    """Compare lake and PostgreSQL over the window (the bucketed path above ``row_limit`` rows).

    Parameters
    ----------
    spec
        The dataset: its key, columns, tolerances and day column.
    window
        UTC days, both ends included.
    row_limit
        Above this many rows (both sides, from the footers and the planner's estimate) the
        bucketed checksums are compared first; a lake on GCS always takes the hash join.
    buckets
        How many buckets the bucketed path uses (default :data:`.buckets.BUCKETS`).
    """
    from opsbook.trafficsafety import buckets as bucketed

    started = time.monotonic()
    files = sides.lake_files(spec, window)
    # remote files, or files in older column names, are read through Arrow, not in place
    remote = not sides.in_spec_names(spec, files)
    lake_days, total = None, 0
    if not remote:  # one read of the footers: rows per day when their statistics prove it, else rows
        lake_days = sides.day_counts_in_metadata(spec, files)
        lake_rows = sum(lake_days.values()) if lake_days is not None else sides.lake_rows_in_metadata(files)
        total = lake_rows + sides.postgres_rows(spec, window)
    if total > row_limit and not remote and bucketed.bucketable(spec):
        lake_counts, pg_counts = sides.day_counts(spec, window, files)
        found = bucketed.compare_bucketed(spec, window, files, lake_counts, pg_counts, buckets or bucketed.BUCKETS)
        found.seconds = time.monotonic() - started
        return found
    from concurrent.futures import ThreadPoolExecutor

    halves = sides.split(window)
    with ThreadPoolExecutor(len(halves)) as pool:  # PostgreSQL streams while DuckDB reads the files
        parts = [pool.submit(sides.read_postgres, spec, part) for part in halves]
        lake = sides.read_lake(spec, files) if remote else files
        pg_unique = sides.key_is_enforced(spec)
        pg = pa.concat_tables([p.result() for p in parts])
    differences, lake_counts = _compare(spec, lake, pg, pg_unique, lake_days)
    pg_counts = sides.counts_by_day(spec, pg)
    return Comparison(
        window.days,
        lake_counts,
        pg_counts,
        differences,
        "hash join",
        len(files),
        sum(lake_counts.values()) + sum(pg_counts.values()),
        time.monotonic() - started,
    )


# --- the hash join ---------------------------------------------------------------------------


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
