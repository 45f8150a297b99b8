"""Reconcile at scale: opsbook against datacompy, on the same 2,000,000 rows, in one run.

Writes N rows of safety indices (default about 2,000,000: 300 intersections x 70 days) to the
lake (Parquet by day) and to PostgreSQL, plants differences in PostgreSQL (50 deletes, 50
inserts, 100 value changes: NULL <-> value, beyond and within tolerance, time-zone shifts), then
in separate processes, each measured end to end (reading both sides, then comparing):

- opsbook: ``trafficsafety.compare.compare`` (DuckDB over Arrow; and the bucketed-checksum path);
- datacompy: ``datacompy.PandasCompare`` on the same two sides as pandas DataFrames (read the fast
  way too: Parquet through pyarrow, PostgreSQL through ADBC), with the same tolerances.

Prints both times, the speed-up (target: at least 8x), each process's peak memory (target for
opsbook: under 1 GB), and whether both found the same keys.

usage: python bench/reconcile.py [--intersections 300] [--days 70]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import PEAK_MB, ROOT, bench_database, psql

from opsbook import config

CHILD_OPSBOOK = (
    r"""
import datetime as dt, json, sys, time
sys.path.insert(0, sys.argv[1])
from opsbook import datasets
from opsbook.trafficsafety.compare import compare
from opsbook.windows import Days
# libraries imported before the clock starts, in both contenders
import adbc_driver_postgresql.dbapi, duckdb, pyarrow.parquet  # noqa
"""
    + PEAK_MB
    + r"""
spec = datasets.get("safety_indices")
window = Days.parse(sys.argv[2])
t0 = time.perf_counter()
c = compare(spec, window, row_limit=int(sys.argv[3]))
seconds = time.perf_counter() - t0
keys = set()
for d in c.differences:
    keys.add(d["key"])
    if d.get("shifted_to"):
        keys.add(d["shifted_to"])
print(json.dumps({"seconds": seconds, "method": c.method, "counts": c.counts(), "peak_mb": peak_mb(),
                  "keys": sorted([k[0], k[1].isoformat()] for k in keys)}))
"""
)

CHILD_DATACOMPY = (
    r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import datacompy
from opsbook import datasets
from opsbook.trafficsafety import sides
from opsbook.windows import Days
import adbc_driver_postgresql.dbapi, pandas, pyarrow.parquet, sqlalchemy  # noqa
"""
    + PEAK_MB
    + r"""
spec = datasets.get("safety_indices")
window = Days.parse(sys.argv[2])
t0 = time.perf_counter()
files = sides.lake_files(spec, window)
if sys.argv[3] == "fast":  # the same fast readers opsbook uses: pyarrow and ADBC
    lake = sides.read_lake(spec, files).drop(["_file"]).to_pandas()
    pg = sides.read_postgres(spec, window).to_pandas()
else:  # as it is usually done: pandas.read_parquet and pandas.read_sql
    import pandas as pd
    import sqlalchemy
    from opsbook.stores import postgres
    lake = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    start, end = window.bounds()
    engine = sqlalchemy.create_engine(postgres.sqlalchemy_url())
    with engine.connect() as conn:
        columns = ", ".join(f'"{c}"' for c in spec.column_names)
        query = f"SELECT {columns} FROM {spec.table} WHERE timestamp >= :a AND timestamp < :b"
        pg = pd.read_sql(sqlalchemy.text(query), conn, params={"a": start, "b": end})
    pg["timestamp"] = pg["timestamp"].dt.tz_convert("UTC")
compare = datacompy.PandasCompare(lake, pg, join_columns=spec.key, abs_tol=0.0001, rel_tol=0.000001,
                            df1_name="lake", df2_name="postgres")
keys = set()
for frame in (compare.df1_unq_rows, compare.df2_unq_rows, compare.all_mismatch()):
    for row in frame[spec.key].itertuples(index=False):
        keys.add((int(row[0]), row[1].isoformat()))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb(), "keys": sorted([k[0], k[1]] for k in keys)}))
"""
)


def child(code: str, *args: str, env: dict) -> dict:
    """Run one contender in a process of its own (its peak memory is its own) and read its JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "lib"), *args], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intersections", type=int, default=300)
    parser.add_argument("--days", type=int, default=70)
    args = parser.parse_args()

    import datetime as dt

    import adbc_driver_postgresql.dbapi as adbc

    from opsbook import datasets
    from opsbook.demo import safety as safetydata
    from opsbook.stores import postgres
    from opsbook.trafficsafety import dualwrite, layout
    from opsbook.trafficsafety import schema as tables

    url = bench_database()
    lake = config.state_dir() / "bench" / "reconcile-lake"
    env = dict(os.environ, DATABASE_URL=url, LAKE_URL=str(lake), ARCHIVE_URL=str(lake.parent / "reconcile-archive"))
    os.environ.update(env)
    spec = datasets.get("safety_indices")
    start = dt.date(2025, 1, 1)
    window = f"{start}..{start + dt.timedelta(days=args.days - 1)}"

    t0 = time.perf_counter()
    table, _ = safetydata.readings(start, args.days, args.intersections)
    import shutil

    shutil.rmtree(lake, ignore_errors=True)
    dualwrite.write_lake(spec, table, str(lake))
    with postgres.connection(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {spec.table}")
        dualwrite.ensure_tables(conn, spec)
        tables.ensure_partitions(conn, spec, layout.days_of(spec, table))
    with adbc.connect(postgres.normalize_url(url)) as conn, conn.cursor() as cur:
        cur.adbc_ingest(spec.table, table, mode="append")
        conn.commit()
    with postgres.connection(url, autocommit=True) as conn:
        planted = safetydata.plant_differences(conn, spec.table)
        conn.execute(f"VACUUM ANALYZE {spec.table}")
    print(
        f"{table.num_rows:,} rows written to the lake and PostgreSQL, differences planted: "
        + ", ".join(f"{k} {len(v)}" for k, v in planted.items())
        + f" ({time.perf_counter() - t0:.0f}s)"
    )

    # the physical limit: PostgreSQL's side of the window through binary COPY, to nowhere
    first, last = window.split("..")
    columns = ", ".join(f'"{c}"' for c in spec.column_names)
    copy = (
        f"\\copy (SELECT {columns} FROM {spec.table} WHERE timestamp >= '{first}' "
        f"AND timestamp < '{dt.date.fromisoformat(last) + dt.timedelta(days=1)}') TO '/dev/null' WITH (FORMAT binary)"
    )
    floor = min(psql(postgres.normalize_url(url), copy) for _ in range(3))

    ours = child(CHILD_OPSBOOK, window, str(5_000_000), env=env)
    bucketed = child(CHILD_OPSBOOK, window, "0", env=env)
    theirs = child(CHILD_DATACOMPY, window, "fast", env=env)
    usual = child(CHILD_DATACOMPY, window, "usual", env=env)

    expected = set()
    for klass, keys in planted.items():
        for k in keys:
            expected.add((k[0], k[1].isoformat()))
            if klass == "timestamp shifted":
                expected.add((k[0], (k[1] + dt.timedelta(hours=5)).isoformat()))
    found = {tuple(k) for k in ours["keys"]}
    print(f"{'':44}{'seconds':>9}{'peak memory':>14}")
    print(f"{'opsbook reconcile (' + ours['method'] + ')':44}{ours['seconds']:9.2f}{ours['peak_mb']:11.0f} MB")
    label = "opsbook reconcile (" + bucketed["method"].split(" (")[0] + ")"
    print(f"{label:44}{bucketed['seconds']:9.2f}{bucketed['peak_mb']:11.0f} MB")
    print(f"{'datacompy, read with pyarrow and ADBC':44}{theirs['seconds']:9.2f}{theirs['peak_mb']:11.0f} MB")
    print(f"{'datacompy, read with read_parquet / read_sql':44}{usual['seconds']:9.2f}{usual['peak_mb']:11.0f} MB")
    label = "psql \\copy of the PostgreSQL side (the floor)"
    print(f"{label:44}{floor:9.2f}")
    print(
        f"speed-up over datacompy: {theirs['seconds'] / ours['seconds']:.1f}x with the same readers, "
        f"{usual['seconds'] / ours['seconds']:.1f}x as usually run (target >= 8); "
        f"{ours['seconds'] / floor:.1f}x the floor; opsbook classes: {ours['counts']}"
    )
    print(
        f"same keys as datacompy: {found == {tuple(k) for k in theirs['keys']}}; as planted: {found == expected}; "
        f"both paths agree: {ours['keys'] == bucketed['keys']}"
    )
    # repair=true at this scale: the lake's rows over the differing keys, then compare again
    from opsbook.trafficsafety import repair
    from opsbook.trafficsafety.compare import compare
    from opsbook.windows import Days

    days = Days.parse(window)
    done = repair.apply(spec, repair.plan(compare(spec, days), days, "lake"))
    left = compare(spec, days).differences
    print(f"repair from the lake: {done}; differences left: {len(left)}")
    return 0 if found == expected and not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
