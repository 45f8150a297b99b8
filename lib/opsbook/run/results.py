"""Record results inside a notebook and read them back from an executed one (scrapbook).

A notebook records its verdict and key figures with :func:`record`; the runner reads them
from the executed notebook with :func:`read` to decide the exit code, fill the run log and
print ``--json``.
"""

from __future__ import annotations

import json
from typing import Any

VERDICT = "verdict"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def record(name: str, value: Any) -> None:
    """Record a JSON-serializable value under ``name`` in the notebook's outputs."""
    import scrapbook

    scrapbook.glue(name, _jsonable(value), encoder="json")


def read(notebook) -> dict[str, Any]:
    """Every recorded value of an executed notebook (a path or a NotebookNode)."""
    import scrapbook

    book = scrapbook.read_notebook(notebook) if isinstance(notebook, str) else scrapbook.models.Notebook(notebook)
    return {name: scrap.data for name, scrap in book.scraps.items()}
