#!/usr/bin/env python3
"""Run an opsbook procedure headless: python run_notebook.py --help"""

import sys
from pathlib import Path

# the workbook runs from a checkout without installing the package too
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from opsbook.run.cli import main
from opsbook.run.redaction import guard_streams

if __name__ == "__main__":
    guard_streams()  # whatever is printed (progress, notes, JSON, a traceback) passes the redactor
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
