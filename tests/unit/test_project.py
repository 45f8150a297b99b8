"""The project speaks for itself: packaging agrees, notebooks match their models, docs are complete."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsbook import procedures
from opsbook.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit

# conda-forge spells a few packages differently
CONDA_NAMES = {"redis-py": "redis"}


def _requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", text)
    name = CONDA_NAMES.get(match.group(1).lower(), match.group(1).lower()).replace("_", "-")
    return name, match.group(3).replace(" ", "")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed: dict[str, str] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed.update(_requirement(r) for r in dep["pip"])
        elif not dep.startswith(("python=", "pip")) or dep.startswith("pip:"):
            name, spec = _requirement(dep)
            listed[name] = spec
    assert listed == wanted
    assert project["requires-python"] == ">=3.11" and "python=3.11" in env["dependencies"]


def _notebooks():
    return (
        sorted(ROOT.glob("notebooks/*.ipynb"))
        + sorted(ROOT.glob("tests/notebooks/*.ipynb"))
        + sorted(ROOT.glob("bench/notebooks/*.ipynb"))
    )


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell(path):
    nb = json.loads(path.read_text())
    saved = [
        i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])
    ]
    relative = path.relative_to(ROOT)
    assert not saved, (
        f"{relative} was saved with outputs (cells {saved}): strip them with `.venv/bin/nbstripout {relative}`; "
        "`make dev` (or any make target that builds the environment) installs the git filter that strips them"
    )
    tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    for comment_line in "".join(tagged[0]["source"]).splitlines():
        assert "#" in comment_line, f"every parameter has a comment: {comment_line!r}"
    # the procedures' notebooks name the project's kernel (make lab, or any make target, installs it)
    assert nb["metadata"]["kernelspec"]["name"] == ("opsbook" if path.parent == ROOT / "notebooks" else "python3")


@pytest.mark.parametrize("path", sorted(ROOT.glob("notebooks/*.ipynb")), ids=lambda p: p.name)
def test_procedure_notebooks_are_thin(path):
    """Notebooks call opsbook: no SQL, loops, retries or credentials in them; their troubleshooting
    cells only ask questions (opsbook.query runs them read-only), never write."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tree = ast.parse(source)
        assert not any(isinstance(n, ast.For | ast.While | ast.Try) for n in ast.walk(tree)), source
        troubleshooting = "troubleshooting" in cell["metadata"].get("tags", [])
        writes = (
            r"\b(INSERT|UPDATE|DELETE|DROP|TRUNCATE|ALTER)\b"
            if troubleshooting
            else r"\b(SELECT|INSERT|UPDATE|DELETE)\b"
        )
        assert not re.search(writes, source), source
        assert not re.search(r"password|postgresql://|redis://", source, re.I), source


@pytest.mark.parametrize("path", sorted(ROOT.glob("notebooks/*.ipynb")), ids=lambda p: p.name)
def test_every_procedure_notebook_ends_with_its_troubleshooting(path):
    """The runbook's troubleshooting for the procedure, with cells that run its investigation;
    tagged, so headless runs leave them out."""
    cells = json.loads(path.read_text())["cells"]
    verdict = max(i for i, c in enumerate(cells) if "ctx.finish(" in "".join(c["source"]))
    after = cells[verdict + 1 :]
    assert after and all("troubleshooting" in c["metadata"].get("tags", []) for c in after)
    assert "".join(after[0]["source"]).startswith("## Troubleshooting")
    assert any(c["cell_type"] == "code" for c in after)


def test_readme_documents_commands_procedures_and_exit_codes():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for name in procedures.names():
        assert f"`{name}`" in readme, f"procedure {name} missing from the README"
    for code, text in EXIT_CODES.items():
        assert re.search(rf"\|\s*{code}\s*\|\s*{re.escape(text)}", readme), f"exit code {code} undocumented"


def test_every_command_has_help_with_an_example():
    for args in (["--help"], ["services", "--help"], ["runbook", "--help"]):
        out = subprocess.run(
            [sys.executable, str(ROOT / "run_notebook.py"), *args], capture_output=True, text=True, check=True
        )
        assert "example" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "opsbook.demo.tickets", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "example" in out.stdout


def test_code_passes_ruff():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "lib", "tests", "bench", "run_notebook.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_opsbook_is_light():
    """``import opsbook`` loads none of the heavy libraries (timed in bench/runner.py)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys, opsbook, opsbook.run.cli\n"
                "heavy = [m for m in ('pandas', 'pyarrow', 'papermill', 'psycopg', 'nbconvert') if m in sys.modules]\n"
                "print(heavy)"
            ),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == "[]"
