#!/usr/bin/env python3
"""Run an opsbook procedure headless: python run_notebook.py --help"""

import sys
from pathlib import Path

# the workbook runs from a checkout without installing the package too
sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))

from opsbook.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
