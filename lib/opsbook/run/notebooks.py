"""Notebooks given by path (``run_notebook.py path/to/any.ipynb``): what they ask for, read the
way papermill reads them.

- The kernel and language come from the notebook's kernelspec (``-k`` overrides the kernel);
  parameters are injected by papermill's translator for that language.
- A Python notebook's parameters cell gives each parameter its type: its annotation (``int``,
  ``float``, ``bool``, ``str``), else the type of its literal default. A default that is not a
  literal (``d = a == 3``, ``items = list(range(a))``) is an expression: the parameter takes
  any ``-p`` value, typed as papermill's command line types it (``True``/``False``/``None``,
  an integer, a float, else the text), and is injected only when given.
- A parameters cell that does not parse is refused (exit 2) naming the cell and the line; a
  notebook without a parameters cell takes no ``-p`` (papermill would inject the values above
  its first cell, where nothing reads them).
- A notebook in another language is not read: any ``-p`` is taken as papermill types it.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, ConfigDict, create_model

from opsbook.errors import UsageError
from opsbook.run.params import ProcedureParams

TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: str | None
    default: Any  # the literal's value (None when not a literal)
    source: str  # the default as written
    literal: bool

    @property
    def kind(self) -> str:
        """The type a value must have, as --help-params says it."""
        if not self.literal:
            return "any (its default is an expression)"
        if self.annotation in TYPES:
            return self.annotation
        return type(self.default).__name__ if self.default is not None else "any"


@dataclass(frozen=True)
class NotebookInfo:
    path: Path
    kernel: str | None  # the kernelspec's name
    language: str
    parameters_cell: int | None  # its index among the cells (None: the notebook has none)
    parameters: tuple[Parameter, ...] = ()

    @property
    def read(self) -> bool:
        """Whether the parameters were read (a Python notebook)."""
        return self.language == "python"


def inspect(path: Path) -> NotebookInfo:
    """The notebook's kernel, language and parameters cell; UsageError (exit 2) for a file that
    is not a notebook or a parameters cell that does not parse."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a readable notebook: {exc}") from None
    metadata = nb.get("metadata", {})
    spec = metadata.get("kernelspec") or {}
    language = str(spec.get("language") or (metadata.get("language_info") or {}).get("name") or "python")
    language = "python" if language.lower() == "python" else language
    for index, cell in enumerate(cells):
        if "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        found = _python_parameters(path, index, source) if language == "python" else ()
        return NotebookInfo(path, spec.get("name"), language, index, found)
    return NotebookInfo(path, spec.get("name"), language, None)


def _python_parameters(path: Path, index: int, source: str) -> tuple[Parameter, ...]:
    try:
        body = ast.parse(source).body
    except SyntaxError as exc:
        raise UsageError(
            f"{path}: its parameters cell (cell {index + 1}) does not parse: line {exc.lineno}: {exc.msg}"
            + (f": {exc.text.strip()}" if exc.text else "")
        ) from None
    found: dict[str, Parameter] = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found[node.target.id] = _parameter(node.target.id, ast.unparse(node.annotation), node.value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = _parameter(target.id, None, node.value)
    return tuple(found.values())


def _parameter(name: str, annotation: str | None, value: ast.expr) -> Parameter:
    source = ast.unparse(value)
    try:
        return Parameter(name, annotation, ast.literal_eval(value), source, True)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # an expression (or a literal Python cannot build, {[1]: 2}): papermill runs it, the
        # runner cannot know its type
        return Parameter(name, annotation, None, source, False)


def parameters_cell(path: Path) -> list[tuple[str, str | None, Any]]:
    """``(name, annotation, default)`` for each literal parameter of a notebook's parameters cell."""
    return [(p.name, p.annotation, p.default) for p in inspect(path).parameters if p.literal]


def papermill_value(value: Any) -> Any:
    """A value typed as papermill's command line types ``-p NAME VALUE``: ``True``, ``False``,
    ``None``, an integer, a float, else the text itself."""
    from opsbook.run.options import Raw

    if not isinstance(value, str):
        return value
    if isinstance(value, Raw):  # -r: text, as papermill's --parameters_raw
        return str(value)
    from papermill.cli import _resolve_type

    return _resolve_type(value)


Untyped = Annotated[Any, BeforeValidator(papermill_value)]


class NotebookParams(ProcedureParams):
    """Parameters of a notebook run by path: checked against its parameters cell, and, as
    papermill does, only the values given are injected (the cell itself sets the defaults)."""

    notebook: ClassVar[str] = ""  # the notebook's file name
    no_parameters_cell: ClassVar[bool] = False

    def notebook_parameters(self) -> dict[str, Any]:
        values = super().notebook_parameters()
        return {k: v for k, v in values.items() if k in self.model_fields_set}

    @classmethod
    def refuse_values(cls, names: list[str]) -> None:
        """Refuse values for a notebook that has no parameters cell: nothing in it would read them."""
        if cls.no_parameters_cell and names:
            raise UsageError(
                f"{cls.notebook} has no parameters cell, so it takes no parameters (given: {', '.join(names)}). "
                "Tag the cell that sets them 'parameters' (JupyterLab: the property inspector's Cell Tags)"
            )


class UnreadNotebookParams(NotebookParams):
    """A notebook in a language opsbook does not read: every value is taken, typed as papermill
    types it, and injected."""

    model_config = ConfigDict(extra="allow")

    def notebook_parameters(self) -> dict[str, Any]:
        return {k: papermill_value(v) for k, v in (self.model_extra or {}).items()}


def model_from_notebook(info: NotebookInfo) -> type[NotebookParams]:
    """A parameters model built from the notebook's parameters cell; an expression's parameter
    takes any value and has none by default (only what is given is injected)."""
    fields: dict[str, Any] = {}
    for p in info.parameters:
        if not p.literal:
            fields[p.name] = (Untyped, None)
            continue
        kind = TYPES.get(p.annotation or "") or (type(p.default) if p.default is not None else Untyped)
        fields[p.name] = (kind, p.default)
    base = NotebookParams if info.read else UnreadNotebookParams
    model = create_model(f"{info.path.stem}_parameters", __base__=base, **fields)
    model.notebook = info.path.name
    model.no_parameters_cell = info.parameters_cell is None
    return model


def describe(info: NotebookInfo) -> str:
    """The parameters a notebook takes, for --help-params."""
    lines = [f"{info.path.name}: kernel {info.kernel or 'python3'}, language {info.language}"]
    if info.parameters_cell is None:
        lines.append("no parameters cell: it takes no parameters")
    elif not info.read:
        lines.append(
            f"parameters cell {info.parameters_cell + 1} is {info.language}, which opsbook does not read: any -p "
            "is injected as papermill types it (True/False/None, a number, else text)"
        )
    else:
        for p in info.parameters:
            shown = f"{p.source}" if p.literal else f"{p.source}  (an expression: injected only when given)"
            lines.append(f"  {p.name:<20} {p.kind:<38} default {shown}")
    return "\n".join(lines)
