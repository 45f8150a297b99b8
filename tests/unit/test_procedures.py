"""Every procedure keeps the one contract (opsbook.procedures.protocol): walked from the registry."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from opsbook import procedures
from opsbook.procedures import protocol
from opsbook.run.notebooks import parameters_cell
from opsbook.run.params import ProcedureParams

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def embedded_database(monkeypatch):
    """Default parameters name stand-in sources, which only the embedded database accepts."""
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.mark.parametrize("name", procedures.names())
def test_module_keeps_the_contract(name):
    entry = procedures.entry(name)
    module = procedures.get(name)
    assert issubclass(module.Params, ProcedureParams)
    assert list(inspect.signature(module.run).parameters)[:2] == ["ctx", "plan"]
    if hasattr(module, "plan"):
        assert list(inspect.signature(module.plan).parameters) == ["ctx"]
    if hasattr(module, "locks"):
        assert isinstance(module.locks(module.Params()), list)
    assert not hasattr(module, "NOTEBOOK") and not hasattr(module, "SUMMARY"), "the registry holds them"
    assert (ROOT / "notebooks" / entry.notebook).is_file()
    assert entry.team and entry.summary
    shows = [n for n, f in vars(module).items() if n.startswith("show_") and callable(f)]
    assert shows, "a procedure presents its result"


@pytest.mark.parametrize("name", procedures.names())
def test_notebook_parameters_cell_matches_its_model(name):
    module = procedures.get(name)
    cell = parameters_cell(ROOT / "notebooks" / procedures.entry(name).notebook)
    fields = module.Params.model_fields
    assert [n for n, _, _ in cell] == list(fields), "same names in the same order"
    defaults = module.Params().notebook_parameters()
    for field_name, annotation, default in cell:
        assert default == defaults[field_name], f"{field_name}: notebook default differs from the model's"
        assert annotation == type(defaults[field_name]).__name__, f"{field_name}: annotation"


@pytest.mark.parametrize("name", procedures.names())
def test_papermill_reads_every_parameter_of_the_notebook(name):
    """papermill skips a parameters line holding a second '=' (in a string or a comment) and then
    warns of an "unknown parameter" on every run that passes it."""
    import nbformat
    from papermill.translators import PythonTranslator

    nb = nbformat.read(ROOT / "notebooks" / procedures.entry(name).notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    read = [p.name for p in PythonTranslator.inspect(cell)]
    assert read == list(procedures.get(name).Params.model_fields)


@pytest.mark.parametrize("name", procedures.names())
def test_notebook_starts_the_run_with_every_parameter(name):
    nb = json.loads((ROOT / "notebooks" / procedures.entry(name).notebook).read_text())
    code = [
        "".join(c["source"])
        for c in nb["cells"]
        if c["cell_type"] == "code" and "troubleshooting" not in c["metadata"].get("tags", [])
    ]
    start = next(c for c in code if "opsbook.start(" in c)
    assert f'opsbook.start(\n    "{name}"' in start or f'opsbook.start("{name}"' in start
    for field_name in procedures.get(name).Params.model_fields:
        assert f"{field_name}={field_name}" in start, f"{field_name} is not passed to opsbook.start"
    assert code[-1].startswith("ctx.finish("), "the last step records the verdict (troubleshooting follows)"


def test_listing_and_validating_import_nothing_heavy():
    """--list and parameter validation stay fast: no pyarrow, pandas, duckdb, geopandas... loaded."""
    script = (
        "import sys\n"
        "from opsbook import procedures\n"
        "from opsbook.run import cli, runner\n"
        "cli.list_procedures()\n"
        "for name in procedures.names():\n"
        "    procedures.get(name).Params()\n"
        f"print([m for m in {protocol.HEAVY_MODULES!r} if m in sys.modules])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "DATABASE_URL"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_procedure_names_the_closest():
    from opsbook.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'rollups'"):
        procedures.get("rolups")
