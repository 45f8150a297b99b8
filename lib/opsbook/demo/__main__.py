"""``make demo``: run the demo runbooks (``params/demo/<team>/runbook.yaml``) through the runner.

Each runbook is the team's own, pointed at the demo's stand-in sources; with DATABASE_URL /
REDIS_URL unset the runs use the embedded servers, which this command stops when it is done
(``--keep-services`` leaves them up for exploring in JupyterLab).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsbook import config

RUNBOOKS = ("toronto", "trafficsafety", "warehouse", "ops")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsbook.demo",
        description="Run the demo runbooks (params/demo/<team>/runbook.yaml) on the demo's stand-in data; "
        "print where the reports are.",
        epilog="example: python -m opsbook.demo --keep-services",
    )
    parser.add_argument("--keep-services", action="store_true", help="leave embedded servers running")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
    args = parser.parse_args(argv)

    from opsbook import services
    from opsbook.errors import OpsbookError
    from opsbook.run import runbook

    failed = 0
    try:
        for team in RUNBOOKS:
            path = config.params_dir() / "demo" / team / "runbook.yaml"
            try:
                outcome = runbook.execute(str(path), progress=None if args.quiet else sys.stderr)
            except OpsbookError as exc:
                print(f"FAIL  runbook {team}: {exc}", file=sys.stderr)
                failed += 1
                continue
            for step in outcome.steps:
                print(f"{step.status.upper():7} {team:<14} {step.procedure:<22} {step.summary}", file=sys.stderr)
            failed += outcome.exit_code != 0
    finally:
        if not args.keep_services:
            stopped = services.stop()
            if stopped:
                print(f"stopped embedded services: {', '.join(stopped)}", file=sys.stderr)
    print(Path(config.reports_dir()) / "index.html")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
