"""The contract every procedure module keeps (checked for each by ``tests/unit/test_procedures.py``).

A module is thin: parameters, calls into its team's domain package, and displays. It imports
nothing heavy at import time (pyarrow, pandas, duckdb, geopandas, plotly load when the work
runs), so ``--list`` and parameter validation stay fast.
"""

from __future__ import annotations

from typing import Any, Protocol

from opsbook.run.context import RunContext
from opsbook.run.params import ProcedureParams
from opsbook.run.verdict import Verdict


class Result(Protocol):
    """What ``run`` returns: a typed result that judges itself."""

    def verdict(self) -> Verdict: ...


class Procedure(Protocol):
    Params: type[ProcedureParams]

    def run(self, ctx: RunContext, plan: Any) -> Result:
        """Do the work (``plan`` is what ``plan(ctx)`` returned, or None without a plan step)."""
        ...


OPTIONAL = {
    "plan": "plan(ctx) -> a plan, shown before anything changes",
    "locks": "locks(params) -> list of lock keys the runner probes before starting a kernel",
}
HEAVY_MODULES = ("pyarrow", "pandas", "duckdb", "geopandas", "plotly", "numpy", "papermill", "shapely")
