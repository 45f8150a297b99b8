"""The procedures: one module each, all of the same shape.

Each module defines ``Params`` (a ``ProcedureParams`` model whose fields match the notebook's
parameters cell), ``NOTEBOOK`` (its file in ``notebooks/``), ``SUMMARY`` (one line for
``--list``), a function that does the work and returns a typed result with a ``verdict()``,
and functions that present that result in the notebook.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from opsbook.errors import UsageError

# name -> module; listed here so that ``--list`` and "did you mean" need no import
PROCEDURES: dict[str, str] = {
    "aggregate": "opsbook.procedures.aggregate",
    "backfill": "opsbook.procedures.backfill",
    "camera_datasets": "opsbook.procedures.camera_datasets",
    "dual_write": "opsbook.procedures.dual_write",
    "health": "opsbook.procedures.health",
    "load": "opsbook.procedures.load",
    "push_cache": "opsbook.procedures.push_cache",
    "reconcile_dual_write": "opsbook.procedures.reconcile_dual_write",
    "refresh_marts": "opsbook.procedures.refresh_marts",
    "retention": "opsbook.procedures.retention",
    "rollups": "opsbook.procedures.rollups",
    "validate": "opsbook.procedures.validate",
}


def names() -> list[str]:
    return sorted(PROCEDURES)


def get(name: str) -> ModuleType:
    """The procedure module called ``name``; an unknown name is refused with the closest one."""
    if name not in PROCEDURES:
        from opsbook.params import closest

        hint = closest(name, PROCEDURES)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise UsageError(
            f"unknown procedure {name!r}{did_you_mean} Procedures: {', '.join(names())} (python run_notebook.py --list)"
        )
    return importlib.import_module(PROCEDURES[name])
