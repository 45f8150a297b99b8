"""Notebooks as an analyst runs them: "Run all" in JupyterLab, with the parameters cells' defaults."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from opsbook import procedures

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.notebook

# the runbooks' order: each notebook's defaults work on what the ones before it made
RUNBOOK_ORDER = [
    "load",
    "aggregate",
    "camera_datasets",
    "push_cache",
    "validate",
    "backfill",
    "dual_write",
    "migrate_to_bucket",
    "backfill_indices",
    "rollups",
    "reconcile_dual_write",
    "refresh_marts",
    "retention",
    "health",
]


def test_every_procedure_is_in_the_runbook_order():
    assert sorted(RUNBOOK_ORDER) == procedures.names()


def test_run_all_with_the_defaults_are_interactive_runs(database_url, redis_url, db, monkeypatch, tmp_path):
    monkeypatch.delenv("OPSBOOK_RUN_ID", raising=False)
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected, safety_indices_realtime CASCADE")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    for name in RUNBOOK_ORDER:
        nb = nbformat.read(ROOT / "notebooks" / procedures.entry(name).notebook, as_version=4)
        if "allow_demo" in procedures.get(name).Params.model_fields:
            # the defaults read the demo's stand-in data, which a configured database (this test's)
            # accepts only when told; an analyst on the embedded database changes nothing
            tagged = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
            nb.cells.insert(tagged + 1, nbformat.v4.new_code_cell("allow_demo = True"))
        # as JupyterLab does: the kernel starts in notebooks/ and inherits the environment
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
        row = db.execute(
            "SELECT procedure, status, interactive FROM opsbook.runs WHERE procedure = %s "
            "ORDER BY started_at DESC LIMIT 1",
            (name,),
        ).fetchone()
        assert row == (name, "success", True), f"{name}: {row}"
