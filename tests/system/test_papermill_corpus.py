"""The runner runs what papermill runs: each notebook of tests/notebooks/corpus/ is run by
papermill and by the runner, from the same folder with the same command-line arguments, and
ends the same way (passed or failed, the same printed results, the same error), except where
the runner refuses on purpose: exit 2, the reason in words, before any kernel starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "notebooks" / "corpus"
pytestmark = pytest.mark.notebook


@dataclass
class Ended:
    passed: bool
    results: list[str]  # the RESULT lines the notebook printed, in order
    error: str | None  # "Type: message" of the failing cell


def results_of(path: Path) -> tuple[list[str], str | None]:
    """The RESULT lines, and the error of the failing cell: its error output, or for a cell that
    failed printing its error on stderr (a line magic's UsageError), that line."""
    nb = nbformat.read(path, as_version=4)
    lines, error = [], None
    for cell in nb.cells:
        failed = cell.get("metadata", {}).get("papermill", {}).get("exception")
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                lines += [line for line in output.text.splitlines() if line.startswith("RESULT")]
                if failed and output.name == "stderr" and error is None:
                    error = next((x for x in output.text.splitlines() if x.startswith("UsageError: ")), None)
            elif output.output_type == "error" and not (output.ename == "SystemExit" and output.evalue in ("", "0")):
                error = f"{output.ename}: {output.evalue}"
    return lines, error


@pytest.fixture
def env(tmp_path, database_url, redis_url):
    """A kernel named opsbook-corpus (this Python) beside the usual ones, as another project's
    kernel would be; the reports of the runs in the test's folder."""
    spec = tmp_path / "jupyter" / "kernels" / "opsbook-corpus"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Corpus",
                "language": "python",
            }
        )
    )
    return {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter")}


def papermill(env, tmp_path, notebook: str, *args: str, cwd: Path = CORPUS) -> tuple[int, Ended, str]:
    out = tmp_path / f"papermill-{Path(notebook).name}"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", notebook, str(out), *args, "--no-progress-bar"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if not out.exists():  # papermill failed before it wrote anything (a kernel it cannot find)
        return done.returncode, Ended(False, [], done.stderr.strip().splitlines()[-1]), done.stderr
    lines, error = results_of(out)
    return done.returncode, Ended(done.returncode == 0, lines, error), done.stderr


def runner(env, notebook: str, *args: str, cwd: Path = CORPUS) -> tuple[int, Ended, dict | None, str]:
    done = run_cli(notebook, *args, "--json", env=env, cwd=cwd)
    outcome = done.json()
    if outcome["run_id"] is None:  # refused before it started
        return done.code, Ended(False, [], outcome["error"]), outcome, done.stderr
    lines, error = results_of(Path(outcome["reports"]["ipynb"]))
    return done.code, Ended(outcome["status"] != "fail", lines, error), outcome, done.stderr


SAME = [
    ("literals.ipynb", ("-p", "n", "5", "-r", "name", "7", "-y", "ratio: 0.25")),
    ("literals.ipynb", ()),
    ("expressions.ipynb", ()),
    ("expressions.ipynb", ("-p", "a", "4")),
    ("expressions.ipynb", ("-p", "d", "no")),  # an expression takes any value, as papermill types it
    ("expressions.ipynb", ("-y", 'd: "42"')),  # a YAML string stays a string
    ("literals.ipynb", ("-y", "name: 2025-11-03")),  # and a date in YAML stays text, as papermill reads it
    ("no_parameters.ipynb", ()),
    ("reads_beside.ipynb", ()),
    ("line_magic.ipynb", ()),
    ("exit_zero.ipynb", ()),
    ("exit_one.ipynb", ()),
    ("raise_system_exit.ipynb", ()),
    ("raises.ipynb", ()),
    ("other_kernel.ipynb", ("-p", "greeting", "hello")),
]


@pytest.mark.parametrize(("notebook", "args"), SAME, ids=[f"{n} {' '.join(a)}".strip() for n, a in SAME])
def test_the_runner_ends_as_papermill_does(env, tmp_path, notebook, args):
    code, by_papermill, said = papermill(env, tmp_path, notebook, *args)
    run_code, by_runner, outcome, stderr = runner(env, notebook, *args)
    assert by_runner == by_papermill, f"papermill said: {said[-1500:]}\nthe runner said: {stderr[-1500:]}"
    assert (code == 0) == (run_code == 0)
    if by_runner.passed:
        assert outcome["status"] == "pass" and outcome["exit_code"] == 0
        assert "FAILED" not in stderr  # sys.exit(0) included: it ends the notebook, it does not fail a cell
    else:
        # the failing cell's error, named in the summary and the JSON
        assert run_code == 3 and outcome["summary"] == by_papermill.error == outcome["error"]
        html = Path(outcome["reports"]["html"]).read_text()
        assert by_papermill.error.split(": ")[0] in html
    assert "Traceback" not in stderr


def test_a_literal_parameter_keeps_its_type(env, tmp_path):
    _, by_runner, _, _ = runner(env, "literals.ipynb", "-p", "n", "5", "-p", "flag", "true")
    assert by_runner.results == ["RESULT n=5 name='world' ratio=0.5 flag=True tags=['a', 'b']"]
    code, _, refused, _ = runner(env, "literals.ipynb", "-p", "n=five")
    assert code == 2 and refused["error"] == (
        "parameter 'n' (from -p): Input should be a valid integer, unable to parse string as an integer (got 'five')"
    )


@pytest.mark.parametrize(
    ("notebook", "args", "reason"),
    [
        (
            "bad_parameters.ipynb",
            (),
            "its parameters cell (cell 2) does not parse: line 2: '(' was never closed: y = (2,",
        ),
        (
            "no_parameters.ipynb",
            ("-p", "n", "5"),
            "no_parameters.ipynb has no parameters cell, so it takes no parameters (given: n)",
        ),
        (
            "missing_kernel.ipynb",
            (),
            "missing_kernel.ipynb asks for the kernel 'no-such-kernel', which is not installed here (installed: ",
        ),
    ],
    ids=["parameters cell does not parse", "no parameters cell", "kernel not installed"],
)
def test_refused_on_purpose_with_the_reason_in_words(env, tmp_path, notebook, args, reason):
    papermill_code, _, _ = papermill(env, tmp_path, notebook, *args)
    code, _, outcome, stderr = runner(env, notebook, *args)
    assert code == 2 and outcome["run_id"] is None
    assert reason in outcome["error"]
    assert stderr.strip().splitlines() == [f"error: {outcome['error']}"] or stderr.startswith("error: ")
    assert "Traceback" not in stderr
    if notebook == "missing_kernel.ipynb":
        assert "opsbook-corpus (python)" in outcome["error"] and papermill_code != 0
    if notebook == "no_parameters.ipynb":
        assert papermill_code == 0  # papermill injects the value above the first cell, where nothing reads it


def test_the_working_directory_is_where_the_runner_starts_or_cwd(env, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    notebook = str(CORPUS / "reads_beside.ipynb")
    _, by_papermill, _ = papermill(env, tmp_path, notebook, cwd=elsewhere)
    _, by_runner, _, _ = runner(env, notebook, cwd=elsewhere)
    assert by_runner == by_papermill and not by_runner.passed and by_runner.error.startswith("FileNotFoundError")
    _, with_cwd, _, _ = runner(env, notebook, "--cwd", str(CORPUS), cwd=elsewhere)
    assert with_cwd.passed and with_cwd.results == ["RESULT beside the notebook"]


def test_another_kernel_by_name_and_dash_k(env, tmp_path):
    _, ran, outcome, _ = runner(env, "missing_kernel.ipynb", "-k", "opsbook-corpus")
    assert ran.passed and ran.results == ["RESULT never"]
    executed = nbformat.read(outcome["reports"]["ipynb"], as_version=4)
    assert executed.metadata["papermill"]["parameters"] == {}  # as papermill: only what is given is injected
    assert executed.metadata["papermill"]["input_path"] == str(CORPUS / "missing_kernel.ipynb")


def test_prepare_only_injects_parameters_in_the_notebooks_language(env, tmp_path):
    """An R notebook (no R here): prepared by both, the same R cell injected."""
    args = ("-p", "msg", "hello", "-p", "count", "3", "--prepare-only")
    subprocess.run(
        [sys.executable, "-m", "papermill", "r_language.ipynb", str(tmp_path / "by-papermill.ipynb"), *args],
        cwd=CORPUS,
        env=env,
        capture_output=True,
        check=True,
    )
    done = run_cli("r_language.ipynb", str(tmp_path / "by-runner.ipynb"), *args, env=env, cwd=CORPUS)
    assert done.code == 0, done.stderr

    def injected(path):
        nb = nbformat.read(path, as_version=4)
        return [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]

    assert injected(tmp_path / "by-runner.ipynb") == injected(tmp_path / "by-papermill.ipynb")
    assert injected(tmp_path / "by-runner.ipynb") == ['# Parameters\nmsg = "hello"\ncount = 3\n']


def test_output_path_log_output_and_report_mode(env, tmp_path):
    out = tmp_path / "out_9.ipynb"  # papermill's {parameter} fields in the output path, filled in
    done = run_cli(
        "literals.ipynb",
        str(tmp_path / "out_{n}.ipynb"),
        "-p",
        "n",
        "9",
        "--log-output",
        "--report-mode",
        env=env,
        cwd=CORPUS,
    )
    assert done.code == 0, done.stderr
    assert "RESULT n=9 name='world'" in done.stderr  # the cell's output, as it came
    written = nbformat.read(out, as_version=4)
    assert results_of(out)[0] == ["RESULT n=9 name='world' ratio=0.5 flag=False tags=['a', 'b']"]
    code = [c for c in written.cells if c.cell_type == "code"]
    assert code and all(c.metadata.get("jupyter", {}).get("source_hidden") for c in code)


def test_help_params_names_types_and_expressions(env):
    done = run_cli("expressions.ipynb", "--help-params", env=env, cwd=CORPUS)
    assert done.code == 0
    lines = done.stdout.splitlines()
    assert lines[0] == "expressions.ipynb: kernel python3, language python"
    assert lines[1].split() == ["a", "int", "default", "3"]
    assert "any (its default is an expression)" in lines[2] and "a == 3" in lines[2]


@pytest.mark.parametrize(
    "args",
    [
        ("no_such_notebook.ipynb",),
        ("not_a_notebook.ipynb",),
        ("literals.ipynb", "-y", "ratio: [unclosed"),
        ("literals.ipynb", "-y", "- a list, not a mapping"),
        ("literals.ipynb", "-p", "n"),
        ("literals.ipynb", "-p"),
        ("literals.ipynb", "--cwd", "/no/such/folder"),
        ("literals.ipynb", "/no/such/folder/out.ipynb"),
        ("literals.ipynb", "--prepare-only"),
        ("literals.ipynb", "-", "--json"),
        ("literals.ipynb", "-k", "no-such-kernel"),
        ("literals.ipynb", "-p", "nn=1"),
        ("load", "--cwd", "."),
        ("load", "years=2017"),  # a forgotten -p is not an output path
        ("literals.ipynb", "out.txt"),
        ("literals.ipynb", "out_{nope}.ipynb"),
        ("literals.ipynb", "--prepare-only", "/no/such/folder/out.ipynb"),
        ("no_such_procedure",),
    ],
)
def test_bad_input_is_refused_in_words_never_a_traceback(env, tmp_path, args):
    (tmp_path / "not_a_notebook.ipynb").write_text("this is not JSON")
    args = tuple(str(tmp_path / a) if a == "not_a_notebook.ipynb" else a for a in args)
    done = run_cli(*args, env=env, cwd=CORPUS, timeout=120)
    assert done.code == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(("error: ", "run_notebook.py: error: ")), done.stderr  # the reason, in one line
