#!/usr/bin/env python3
"""Run an opsbook procedure headless: python run_notebook.py --help"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# the workbook runs from a checkout without installing the package too
sys.path.insert(0, str(ROOT / "lib"))


def missing_package(exc: ModuleNotFoundError) -> int:
    """One line for a Python that lacks opsbook's dependencies (exit 2: the environment, not a check)."""
    venv = ROOT / ".venv" / "bin" / "python"
    how = (
        f"run it with the project's environment: {venv} {' '.join(['run_notebook.py', *sys.argv[1:]])}"
        if venv.exists()
        else "build the project's environment first (make demo, make lab or make test), or pip install -e ."
    )
    print(f"run_notebook.py: {sys.executable} has no module {exc.name!r}, which opsbook needs; {how}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        from opsbook.run.cli import main
        from opsbook.run.redaction import guard_streams

        guard_streams()  # whatever is printed (progress, notes, JSON, a traceback) passes the redactor
        code = main()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "opsbook":
            raise
        code = missing_package(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
