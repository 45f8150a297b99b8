"""Notebooks as an analyst runs them: "Run all" in JupyterLab, with the parameters cell's defaults."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from opsbook import procedures

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("name", procedures.names())
def test_run_all_with_the_defaults_is_an_interactive_run(name, database_url, db, monkeypatch):
    monkeypatch.delenv("OPSBOOK_RUN_ID", raising=False)
    path = ROOT / "notebooks" / procedures.get(name).NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    before = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'opsbook' AND tablename = 'runs'")
    had_log = before.fetchone()[0] == 1
    previous = set()
    if had_log:
        previous = {r[0] for r in db.execute("SELECT run_id FROM opsbook.runs")}
    # as JupyterLab does: the kernel starts in notebooks/ and inherits the environment
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    rows = db.execute("SELECT run_id, procedure, status, interactive FROM opsbook.runs").fetchall()
    new = [r for r in rows if r[0] not in previous]
    assert len(new) == 1
    run_id, procedure, status, interactive = new[0]
    assert (procedure, status, interactive) == (name, "success", True)
    assert name in run_id
