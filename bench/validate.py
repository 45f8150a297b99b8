"""The whole parking_tickets check suite against a plain count of the same rows, in one run.

Loads N generated rows of one year (the same City-format input as bench/load.py), then in a
child process, several times interleaved: ``SELECT count(*)`` over the window, and
opsbook's validate (every check of params/datasets/toronto_parking_tickets.checks.yaml). Prints
the medians, their ratio (target: at most 5x) and the child's peak memory (target: < 300 MB).

usage: python bench/validate.py [--rows 2000000] [--repeat 5]
Uses DATABASE_URL when set, else the embedded PostgreSQL; works in a database opsbook_bench.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import PEAK_MB, ROOT, bench_database, generated_year

from opsbook.stores import postgres

CHILD = (
    r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from opsbook.procedures import validate
from opsbook.run import context
from opsbook.stores import postgres
"""
    + PEAK_MB
    + r"""
year, repeat = int(sys.argv[2]), int(sys.argv[3])
ctx = context.make("validate", window=str(year))
validate.run(ctx)  # warm: imports, the reference figures, the table in the OS cache
count_times, suite_times = [], []
with postgres.connection(autocommit=True) as conn:
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = conn.execute(
            "SELECT count(*) FROM parking_tickets WHERE date_of_infraction >= %s AND date_of_infraction < %s",
            (f"{year}-01-01", f"{year + 1}-01-01")).fetchone()[0]
        count_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = validate.run(ctx)
        suite_times.append(time.perf_counter() - t0)
print(json.dumps({"rows": rows, "count": count_times, "suite": suite_times, "checks": len(result.suite.results),
                  "statuses": {r.name: r.status for r in result.suite.results}, "peak_mb": peak_mb()}))
"""
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--year", type=int, default=2016)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    url = bench_database()
    work = generated_year(args.rows, args.year)
    env = dict(os.environ, DATABASE_URL=url)
    for command in (
        ["load", "-p", f"source={work}", "-p", f"years={args.year}"],
        ["aggregate", "-p", "years=2011-2023", "-p", "cameras=demo", "-p", "allow_demo=true"],
    ):
        done = subprocess.run(
            [sys.executable, str(ROOT / "run_notebook.py"), *command, "--quiet"],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"{command[0]} failed:\n{done.stderr}")
    with postgres.connection(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE parking_tickets")
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "lib"), str(args.year), str(args.repeat)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"validate failed:\n{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    import statistics

    count, suite = statistics.median(data["count"]), statistics.median(data["suite"])
    print(
        f"{data['rows']:,} rows, {data['checks']} checks, medians of {args.repeat} interleaved runs "
        f"({time.perf_counter() - t0:.1f}s in all)"
    )
    print(f"{'SELECT count(*) over the window':40}{count:8.3f}s")
    print(f"{'opsbook validate (whole suite)':40}{suite:8.3f}s")
    print(f"{'ratio (target <= 5)':40}{suite / count:8.2f}")
    print(f"{'peak memory of the process':40}{data['peak_mb']:8.0f} MB (target < 300)")
    failed = {k: v for k, v in data["statuses"].items() if v != "pass"}
    if failed:
        print(f"checks not passing (expected: the generated year is not the demo's 1 % scale): {failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
