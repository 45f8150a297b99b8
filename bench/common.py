"""What the benchmarks share: the database they work in, the generated input, peak memory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from opsbook import config, services  # noqa: E402
from opsbook.demo import tickets as demodata  # noqa: E402
from opsbook.stores import postgres  # noqa: E402

# pasted into child processes: VmHWM, not ru_maxrss, which Linux carries over from the parent across exec
PEAK_MB = """
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def bench_database() -> str:
    """A URL for the database opsbook_bench on DATABASE_URL's server, else on the embedded one."""
    return postgres.ensure_database(services.database_url(), "opsbook_bench")


def generated_year(rows: int, year: int) -> Path:
    """A folder holding ``rows`` City-format rows of ``year`` (written once, then reused)."""
    folder = config.state_dir() / "bench" / f"load-{rows}"
    if not any(folder.glob("*.zip")):
        t0 = time.perf_counter()
        demodata.write_year(folder, year, rows=rows)
        print(f"generated {rows:,} rows in {time.perf_counter() - t0:.1f}s: {folder}", file=sys.stderr)
    return folder


def run_child(code: str, url: str, *args: str, what: str) -> dict:
    """Run ``code`` (a Python program given the lib folder and ``args``) in a fresh process
    against ``url``; the JSON object it prints last. A failure stops the benchmark, naming ``what``."""
    import json
    import os

    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "lib"), *args],
        env=dict(os.environ, DATABASE_URL=url),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def psql(url: str, command: str) -> float:
    """Seconds ``psql -c command`` takes against ``url`` (the physical limit a benchmark compares with)."""
    t0 = time.perf_counter()
    subprocess.run(
        [postgres.psql_executable(), url, "-v", "ON_ERROR_STOP=1", "-q", "-c", command],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0
