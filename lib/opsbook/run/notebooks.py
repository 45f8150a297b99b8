"""Notebooks given by path (``run_notebook.py path/to/any.ipynb``): their parameters cell as a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsbook.run.params import ProcedureParams


def parameters_cell(path: Path) -> list[tuple[str, str | None, Any]]:
    """``(name, annotation, default)`` for each assignment in a notebook's parameters cell."""
    import ast
    import json

    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            found = []
            for node in ast.parse(source).body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    default = ast.literal_eval(node.value) if node.value is not None else None
                    found.append((node.target.id, ast.unparse(node.annotation), default))
                elif isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            found.append((target.id, None, ast.literal_eval(node.value)))
            return found
    return []


def model_from_notebook(path: Path) -> type[ProcedureParams]:
    """A parameters model built from a notebook's parameters cell (for notebooks run by path)."""
    from pydantic import create_model

    types = {"int": int, "float": float, "bool": bool, "str": str}
    fields = {}
    for name, annotation, default in parameters_cell(path):
        kind = types.get(annotation or "", type(default) if default is not None else Any)
        fields[name] = (kind, default)
    return create_model(f"{path.stem}_parameters", __base__=ProcedureParams, **fields)
