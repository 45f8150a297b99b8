"""Load throughput against the physical limit: opsbook's load vs psql \\copy, in one run.

Generates N rows of one year in the City's format (a ZIP of CSV parts, as the City ships
them), then in one run:

1. opsbook's load of that year into ``parking_tickets`` (first load, empty table);
2. the same load again, unchanged (opsbook verifies and skips);
3. psql ``\\copy`` of exactly the rows that were loaded (exported from the table as CSV) into a
   table of the same definition (same partitioning, same constraints, no index either side).

Each load runs in a child process so its peak memory (max RSS) is its own.

usage: python bench/load.py [--rows 2000000] [--year 2016]
Uses DATABASE_URL when set, else the embedded PostgreSQL; works in a database opsbook_bench.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import PEAK_MB, bench_database, generated_year, psql, run_child

from opsbook.stores import postgres

CHILD = (
    r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from opsbook.procedures import load
from opsbook.run import context
# import what the load uses before the clock starts: a notebook has them loaded by then too
import adbc_driver_postgresql.dbapi, pyarrow.compute, opsbook.sources.city_csv  # noqa
"""
    + PEAK_MB
    + r"""
ctx = context.make("load", source=sys.argv[2], years=sys.argv[3], force=sys.argv[4] == "force")
plan = load.plan(ctx)
t0 = time.perf_counter()
result = load.run(ctx, plan)
seconds = time.perf_counter() - t0
year = result.years[0]
print(json.dumps({"seconds": seconds, "status": year.status, "rows": year.rows,
                  "rejected": year.rejected, "error": year.error,
                  "max_rss_mb": peak_mb()}))
"""
)


def child_load(url: str, source: Path, year: int, mode: str) -> dict:
    return run_child(CHILD, url, str(source), str(year), mode, what="load")


def checkpoint(url: str) -> None:
    with postgres.connection(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--year", type=int, default=2016)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each; medians are compared")
    args = parser.parse_args()

    url = bench_database()
    work = generated_year(args.rows, args.year)
    zip_bytes = sum(p.stat().st_size for p in work.glob("*.zip"))

    with postgres.connection(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected, bench_copy CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")

    copy_runs, first_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "rows.csv"
        for attempt in range(args.repeat):
            # interleaved, each after a CHECKPOINT, so that both see the same machine state
            checkpoint(url)
            first_runs.append(child_load(url, work, args.year, "force"))
            if attempt == 0:
                psql(url, f"\\copy parking_tickets_{args.year} TO '{csv_path}' (FORMAT csv)")
            with postgres.connection(url, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS bench_copy")
                conn.execute(
                    "CREATE TABLE bench_copy (LIKE parking_tickets INCLUDING ALL) "
                    "PARTITION BY RANGE (date_of_infraction)"
                )
                conn.execute(
                    f"CREATE TABLE bench_copy_{args.year} PARTITION OF bench_copy FOR VALUES "
                    f"FROM ('{args.year}-01-01') TO ('{args.year + 1}-01-01')"
                )
            checkpoint(url)
            copy_runs.append(psql(url, f"\\copy bench_copy FROM '{csv_path}' (FORMAT csv)"))
        csv_bytes = csv_path.stat().st_size
        with postgres.connection(url, autocommit=True) as conn:
            copied = conn.execute("SELECT count(*) FROM bench_copy").fetchone()[0]
            conn.execute("DROP TABLE bench_copy")
    again = child_load(url, work, args.year, "again")
    first = first_runs[-1]
    copy_seconds = statistics.median(copy_runs)
    first["seconds"] = statistics.median(r["seconds"] for r in first_runs)
    first["max_rss_mb"] = max(r["max_rss_mb"] for r in first_runs)

    if copied != first["rows"]:
        raise SystemExit(f"row counts differ: opsbook {first['rows']:,}, \\copy {copied:,}")
    print(
        f"rows: {first['rows']:,} loaded, {first['rejected']:,} quarantined "
        f"(input: {zip_bytes / 1e6:.0f} MB zipped; \\copy input: {csv_bytes / 1e6:.0f} MB CSV)"
    )
    print(
        f"median of {args.repeat} interleaved runs; \\copy runs: "
        + ", ".join(f"{t:.2f}" for t in copy_runs)
        + "; opsbook runs: "
        + ", ".join(f"{r['seconds']:.2f}" for r in first_runs)
    )
    print(f"{'':32}{'seconds':>9}{'ratio':>8}{'peak RSS':>11}")
    label = "psql \\copy (physical limit)"
    print(f"{label:32}{copy_seconds:9.2f}{1.0:8.2f}")
    for label, run in (("opsbook load, first", first), ("opsbook load, unchanged re-run", again)):
        print(
            f"{label:32}{run['seconds']:9.2f}{run['seconds'] / copy_seconds:8.2f}"
            f"{run['max_rss_mb']:9.0f}MB  ({run['status']})"
        )
    print("targets: first load <= 1.3x, unchanged re-run <= 1.0x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
