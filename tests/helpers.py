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


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> Completed:
    """``python run_notebook.py ARGS`` in a subprocess, as cron would call it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_notebook.py"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )
    return Completed(out.returncode, out.stdout, out.stderr)


def kernel_processes() -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ipykernel_launcher" in cmd and "opsbook-kernel-" in cmd:
            found.append(proc.info["pid"])
    return found
