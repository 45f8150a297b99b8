"""``make demo``: build the demo input and run the demo runbook through the runner.

With DATABASE_URL / REDIS_URL unset the runs use the embedded servers, which this command
stops when it is done (``--keep-services`` leaves them up for exploring in JupyterLab).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsbook import config

# the demo runbook: (procedure, params file, extra -p overrides)
RUNBOOK: list[tuple[str, str, list[str]]] = [
    ("load", "params/toronto/load.yaml", []),
    ("aggregate", "params/toronto/aggregate.yaml", []),
    ("camera_datasets", "params/toronto/camera_datasets.yaml", []),
    ("push_cache", "params/toronto/push_cache.yaml", []),
    ("validate", "params/toronto/validate.yaml", []),
    ("dual_write", "params/trafficsafety/dual_write.yaml", []),
    ("rollups", "params/trafficsafety/rollups.yaml", []),
    ("reconcile_dual_write", "params/trafficsafety/reconcile.yaml", []),
    ("refresh_marts", "params/warehouse/refresh_marts.yaml", []),
    ("retention", "params/trafficsafety/retention.yaml", []),
    ("health", "params/ops/health.yaml", []),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsbook.demo",
        description="Build realistic demo input and run the demo runbook; print where the reports are.",
        epilog="example: python -m opsbook.demo --keep-services",
    )
    parser.add_argument("--keep-services", action="store_true", help="leave embedded servers running")
    args = parser.parse_args(argv)

    from opsbook import services
    from opsbook.demo import tickets as demodata
    from opsbook.run import runner

    failed = 0
    try:
        files = demodata.build()
        print(f"demo input: {demodata.demo_source_dir()} ({len(files)} file(s) written)", file=sys.stderr)
        for procedure, params_file, overrides in RUNBOOK:
            outcome = runner.execute(procedure, [config.project_root() / params_file], overrides)
            print(f"{outcome.status.upper():5} {procedure:<22} {outcome.summary}", file=sys.stderr)
            if outcome.exit_code != 0:
                failed += 1
    finally:
        if not args.keep_services:
            stopped = services.stop()
            if stopped:
                print(f"stopped embedded services: {', '.join(stopped)}", file=sys.stderr)
    index = Path(config.reports_dir()) / "index.html"
    print(index)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
