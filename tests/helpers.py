"""Shared by the tests that run notebooks end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Completed:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)  # the whole of stdout is one JSON object


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT) -> Completed:
    """``python run_notebook.py ARGS`` in a subprocess started in ``cwd``, as cron would call it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_notebook.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
    return Completed(out.returncode, out.stdout, out.stderr)


def call(procedure: str, **values):
    """Run a procedure in this process, as its notebook would (plan, then run), recording
    nothing; returns its result. ``values`` are its parameters."""
    from opsbook import procedures
    from opsbook.run import context

    ctx = context.make(procedure, **values)
    module = procedures.get(procedure)
    plan = module.plan(ctx) if hasattr(module, "plan") else None
    return module.run(ctx, plan)


def load_and_aggregate(db, source, years: str) -> None:
    """A fresh database holding ``years`` loaded from ``source`` and their yearly tables built."""
    from conftest import drop_tickets

    drop_tickets(db)
    call("load", source=str(source), years=years)
    call("aggregate", years="2011-2023", cameras="demo", allow_demo=True)


def kernel_processes() -> list[int]:
    """Kernels of runs against this test session's database (a run's kernel inherits the run id
    and DATABASE_URL from its runner; other suites may run on the machine)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "ipykernel_launcher" not in " ".join(proc.info["cmdline"] or []):
            continue
        try:
            env = proc.environ()
        except psutil.Error:  # gone, or not ours to read
            continue
        if env.get("OPSBOOK_RUN_ID") and env.get("DATABASE_URL") == os.environ.get("DATABASE_URL"):
            found.append(proc.info["pid"])
    return found


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python run_notebook.py ARGS`` started in the background (for tests that kill it)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_notebook.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    )


def postgis(conn) -> None:
    """Make sure the session database has PostGIS; where the server has none, skip the test
    (and fail it in CI, where OPSBOOK_REQUIRE_SERVICES=1 demands every service)."""
    import pytest

    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        reason = f"PostGIS is not installed on this PostgreSQL ({first}); Debian: postgresql-15-postgis-3"
        if os.environ.get("OPSBOOK_REQUIRE_SERVICES") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason + "; the shapely path is tested without it")


def fresh_health_state(db) -> None:
    """A database where health has nothing to say but what the test does: no run history and
    no day-partitioned table another test left behind (it would lack tomorrow's partition)."""
    from opsbook import datasets

    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")
    for name in datasets.available():
        spec = datasets.get(name)
        if spec.partition.by == "day":
            db.execute(f'DROP TABLE IF EXISTS "{spec.table}" CASCADE')
