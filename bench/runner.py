"""The runner's own cost: run_notebook.py against papermill + nbconvert by hand, in one run.

Runs bench/notebooks/trivial.ipynb (one print) three ways, interleaved, N times each:

1. ``python run_notebook.py bench/notebooks/trivial.ipynb`` (validate, execute, write the
   .ipynb and the HTML report, runs.jsonl, index.html, run-log row);
2. by hand: ``papermill trivial.ipynb out.ipynb -p greeting hi`` then
   ``jupyter nbconvert --to html out.ipynb``;

and times ``python -c "import opsbook"`` against ``python -c pass``.

usage: python bench/runner.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from opsbook import services  # noqa: E402

NOTEBOOK = ROOT / "bench" / "notebooks" / "trivial.ipynb"
BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    # the runner writes its run-log row; have the database up before the clock starts
    env = dict(os.environ, DATABASE_URL=services.database_url())
    runner, by_hand, imports, bare = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        env["OPSBOOK_REPORTS_DIR"] = str(Path(tmp) / "reports")
        out = Path(tmp) / "out.ipynb"
        for _ in range(args.repeat):
            runner.append(
                timed([sys.executable, "run_notebook.py", str(NOTEBOOK), "-p", "greeting=hi", "--quiet"], env)
            )
            by_hand.append(
                timed(
                    [str(BIN / "papermill"), str(NOTEBOOK), str(out), "-p", "greeting", "hi", "--no-progress-bar"], env
                )
                + timed([str(BIN / "jupyter"), "nbconvert", "--to", "html", str(out)], env)
            )
            imports.append(timed([sys.executable, "-c", "import opsbook"], env))
            bare.append(timed([sys.executable, "-c", "pass"], env))
    r, h = statistics.median(runner), statistics.median(by_hand)
    ratios = [a / b for a, b in zip(runner, by_hand, strict=True)]

    def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
        return f"{statistics.median(values):7.{digits}f}{unit}  ({min(values):.{digits}f}-{max(values):.{digits}f})"

    print(f"medians (and ranges) of {args.repeat} interleaved runs")
    print(f"{'run_notebook.py (execute + report + index + run log)':56}{spread(runner)}")
    print(f"{'papermill + jupyter nbconvert --to html, by hand':56}{spread(by_hand)}")
    label = "ratio runner / by hand, per pair (target <= 1.0)"
    print(f"{label:56}{spread(ratios, '')}   median of medians {r / h:.2f}")
    label = 'python -c "import opsbook" (target < 0.5 s)'
    print(f"{label:56}{spread(imports, 's', 3)}")
    print(f"{'python -c pass (interpreter start alone)':56}{spread(bare, 's', 3)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
