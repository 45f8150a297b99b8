"""Environment problems end with the right exit code and one line, never a traceback; a run
that could not leave its report is never PASS."""

import os

import pytest
from helpers import ROOT, run_cli

pytestmark = pytest.mark.notebook


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_reports_folder_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path, db):
    (tmp_path / "file").write_text("")
    before = runs_logged(db)
    done = run_cli(
        "validate",
        "-f",
        "params/demo/toronto/validate.yaml",
        "--json",
        env={"OPSBOOK_REPORTS_DIR": str(tmp_path / "file" / "reports")},
    )
    assert done.code == 2
    line = one_line(done.stderr)
    assert line.startswith(f"error: the reports folder {tmp_path / 'file' / 'reports'} cannot be written")
    assert done.json()["run_id"] is None
    assert runs_logged(db) == before  # refused before the run log


def runs_logged(db) -> int:
    if db.execute("SELECT to_regclass('opsbook.runs')").fetchone()[0] is None:
        return 0
    return db.execute("SELECT count(*) FROM opsbook.runs").fetchone()[0]


def test_a_run_whose_report_cannot_be_written_is_not_pass(database_url, reports_dir):
    done = run_cli(str(ROOT / "tests/notebooks/unreportable.ipynb"), "--json")
    assert done.code == 3, done.stderr
    outcome = done.json()
    assert outcome["status"] == "fail"
    assert outcome["summary"].startswith("the run's executed notebook and HTML report could not be written")
    assert "it ended PASS" in outcome["summary"]
    assert any(note.startswith("executed notebook not written: NotADirectoryError") for note in outcome["notes"])
    assert "Traceback" not in done.stderr
    assert outcome["reports"] == {"ipynb": None, "html": None}


@pytest.mark.parametrize("kind", ["folder", "fifo", "binary", "long name"])
def test_a_params_path_that_is_no_yaml_file_is_one_line_exit_2(kind, tmp_path):
    if kind == "folder":
        path = tmp_path
    elif kind == "fifo":
        path = tmp_path / "p.yaml"
        os.mkfifo(path)
    elif kind == "binary":
        path = tmp_path / "p.yaml"
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    else:
        path = tmp_path / ("p" * 300 + ".yaml")
    done = run_cli("validate", "-f", str(path), timeout=60)
    assert done.code == 2
    assert one_line(done.stderr).startswith("error: parameters file ")


def test_a_temporary_folder_too_deep_for_a_socket_still_runs(tmp_path, database_url, reports_dir):
    """The kernel talks over Unix sockets, whose path holds about 100 bytes: a deeper TMPDIR
    (CI runners, pytest's own folders) must not stop the run."""
    deep = tmp_path / ("t" * 60) / ("u" * 60)
    deep.mkdir(parents=True)
    done = run_cli(str(ROOT / "tests/notebooks/sleep.ipynb"), "--json", env={"TMPDIR": str(deep)})
    assert done.code == 0, done.stderr
    assert done.json()["status"] == "pass"


def test_a_python_without_the_dependencies_gets_one_line_and_exit_2():
    """run_notebook.py from a Python that lacks opsbook's packages (here: without site-packages)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "run_notebook.py"), "health", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no module" in lines[0] and "which opsbook needs" in lines[0], done.stderr
    assert done.stdout == ""
