"""Backfill throughput against the physical limit: backfill_indices vs psql \\copy, in one run.

Generates 30 days of the bucket's daily index files (``processed/indices/indices_<date>.parquet``,
about 2,000,000 rows for 700 intersections; the first nine days in the older column names), then,
interleaved ``--repeat`` times, each after a CHECKPOINT:

1. opsbook's ``backfill_indices`` of the 30 days into an empty ``safety_indices_realtime``
   (partitioned by day, keyed on intersection and timestamp), without the rollups;
2. psql ``\\copy`` of exactly the rows that were loaded (exported from the table as CSV once)
   into a table of the same definition (same partitions, same primary key).

Then once: the rollups of those days (hourly and daily, as ``-p rollups=true`` builds them), and
an unchanged re-run (every day skipped by the ledger). Each opsbook run is a child process, so
its peak memory (VmHWM) is its own.

usage: python bench/backfill_indices.py [--intersections 700] [--days 30] [--repeat 3]
Uses DATABASE_URL when set, else the embedded PostgreSQL; works in a database opsbook_bench.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import PEAK_MB, bench_database, psql, run_child

from opsbook import config, datasets
from opsbook.stores import postgres

START = dt.date(2025, 11, 1)
CHILD = (
    r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from opsbook.procedures import backfill_indices
from opsbook.run import context
# import what the backfill uses before the clock starts: a notebook has them loaded by then too
import adbc_driver_postgresql.dbapi, pyarrow.parquet, pyarrow.compute  # noqa
"""
    + PEAK_MB
    + r"""
ctx = context.make("backfill_indices", source=sys.argv[2], window=sys.argv[3], rollups=sys.argv[4] == "rollups",
                   timezone="America/Toronto")
t0 = time.perf_counter()
plan = backfill_indices.plan(ctx)
result = backfill_indices.run(ctx, plan)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "status": result.verdict().status, "summary": result.verdict().summary,
                  "rows": result.rows, "days": [d.status for d in result.days], "max_rss_mb": peak_mb()}))
"""
)


def generated(intersections: int, days: int) -> Path:
    """The index files (written once, then reused)."""
    from opsbook.demo import safety

    folder = config.state_dir() / "bench" / f"indices-{intersections}x{days}"
    done = folder / ".complete"
    if not done.is_file():
        t0 = time.perf_counter()
        rows = safety.write_index_files(folder, START, [1] * days, intersections, legacy_until=START + dt.timedelta(9))
        done.write_text(f"{rows}\n")
        print(f"generated {rows:,} rows in {time.perf_counter() - t0:.1f}s: {folder}", file=sys.stderr)
    return folder


def child(url: str, source: Path, window: str, mode: str) -> dict:
    return run_child(CHILD, url, str(source), window, mode, what="backfill")


def reset(url: str) -> None:
    with postgres.connection(url, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE IF EXISTS safety_indices_realtime, safety_indices_hourly, safety_indices_daily, "
            "bench_copy CASCADE"
        )
        conn.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
        conn.execute("CHECKPOINT")


def copy_target(url: str, days: int) -> None:
    """``bench_copy``: the realtime table's definition (columns, key, a partition per day)."""
    with postgres.connection(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(
            'CREATE TABLE bench_copy (LIKE safety_indices_realtime INCLUDING ALL) PARTITION BY RANGE ("timestamp")'
        )
        for i in range(days):
            day = START + dt.timedelta(days=i)
            conn.execute(
                f"CREATE TABLE bench_copy_p{day:%Y%m%d} PARTITION OF bench_copy FOR VALUES "
                f"FROM ('{day} 00:00+00') TO ('{day + dt.timedelta(days=1)} 00:00+00')"
            )
        conn.execute("CHECKPOINT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intersections", type=int, default=700)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each; medians are compared")
    args = parser.parse_args()

    url = bench_database()
    source = generated(args.intersections, args.days)
    window = f"{START}..{START + dt.timedelta(days=args.days - 1)}"
    parquet_bytes = sum(p.stat().st_size for p in (source / "processed" / "indices").glob("*.parquet"))
    columns = ", ".join(f'"{c}"' for c in datasets.get("safety_indices").column_names)

    copy_runs, first_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "rows.csv"
        for attempt in range(args.repeat):
            reset(url)
            first_runs.append(child(url, source, window, "load"))
            if attempt == 0:
                psql(url, f"\\copy (SELECT {columns} FROM safety_indices_realtime) TO '{csv_path}' (FORMAT csv)")
            copy_target(url, args.days)
            copy_runs.append(psql(url, f"\\copy bench_copy ({columns}) FROM '{csv_path}' (FORMAT csv)"))
        csv_bytes = csv_path.stat().st_size
        with postgres.connection(url, autocommit=True) as conn:
            copied = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]
            conn.execute("DROP TABLE bench_copy")
    rollups = child(url, source, window, "rollups")  # every day unchanged: the time is the rollups'
    again = child(url, source, window, "load")
    first = first_runs[-1]
    copy_seconds = statistics.median(copy_runs)
    first["seconds"] = statistics.median(r["seconds"] for r in first_runs)
    first["max_rss_mb"] = max(r["max_rss_mb"] for r in first_runs)

    if copied != first["rows"]:
        raise SystemExit(f"row counts differ: opsbook {first['rows']:,}, \\copy {copied:,}")
    if set(first["days"]) != {"loaded"} or set(again["days"]) != {"unchanged"}:
        raise SystemExit(f"unexpected day outcomes: first {set(first['days'])}, re-run {set(again['days'])}")
    print(
        f"rows: {first['rows']:,} over {args.days} days, {args.intersections} intersections "
        f"(input: {parquet_bytes / 1e6:.0f} MB Parquet; \\copy input: {csv_bytes / 1e6:.0f} MB CSV)"
    )
    print(
        f"median of {args.repeat} interleaved runs; \\copy runs: "
        + ", ".join(f"{t:.2f}" for t in copy_runs)
        + "; opsbook runs: "
        + ", ".join(f"{r['seconds']:.2f}" for r in first_runs)
    )
    print(f"{'':40}{'seconds':>9}{'ratio':>8}{'peak RSS':>11}")
    label = "psql \\copy (physical limit)"
    print(f"{label:40}{copy_seconds:9.2f}{1.0:8.2f}")
    for label, run in (
        ("opsbook backfill_indices (load)", first),
        ("rollups of those days (once)", rollups),
        ("opsbook backfill, unchanged re-run", again),
    ):
        print(f"{label:40}{run['seconds']:9.2f}{run['seconds'] / copy_seconds:8.2f}{run['max_rss_mb']:9.0f}MB")
    print("targets: load <= 1.3x \\copy, peak < 500 MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
