"""Embedded default services: started on demand, reused, shown, stopped, no orphans."""

import os

import psutil
import pytest
from helpers import run_cli

pytestmark = pytest.mark.integration


def processes_under(folder) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmd:
            found.append(cmd)
    return found


def test_embedded_servers_start_are_reused_and_stop(tmp_path):
    state = tmp_path / "state"
    env = {"OPSBOOK_STATE_DIR": str(state), "DATABASE_URL": "", "REDIS_URL": ""}
    try:
        started = run_cli("services", "start", env=env)
        assert started.code == 0, started.stderr
        assert "postgres   embedded   running" in started.stdout
        assert "redis      embedded   running" in started.stdout
        servers = processes_under(state)
        assert any("postgres" in cmd for cmd in servers) and any("redis-server" in cmd for cmd in servers)

        # a second start reuses the running servers: the same processes
        again = run_cli("services", "start", env=env)
        assert again.code == 0
        assert processes_under(state) == servers

        # the embedded URLs work for real clients
        env_py = dict(os.environ, **env)
        import subprocess
        import sys

        check = subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "from opsbook import services; from opsbook.stores import postgres; import redis\n"
                    "with postgres.connection(autocommit=True) as c: print(c.execute('select 41 + 1').fetchone()[0])\n"
                    "r = redis.Redis.from_url(services.redis_url()); r.set('k', 'v'); print(r.get('k').decode())"
                ),
            ],
            env=env_py,
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        assert check.stdout.split() == ["42", "v"]

        stopped = run_cli("services", "stop", env=env)
        assert stopped.code == 0 and "postgres" in stopped.stdout and "redis" in stopped.stdout
        status = run_cli("services", "status", env=env)
        assert "postgres   embedded   stopped" in status.stdout
        assert "redis      embedded   stopped" in status.stdout
        assert processes_under(state) == []
    finally:
        run_cli("services", "stop", env=env)
    assert processes_under(state) == []


def test_configured_services_are_shown_without_the_password(tmp_path):
    env = {
        "OPSBOOK_STATE_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://u:topsecret@db.example:5432/x",
        "REDIS_URL": "redis://:alsosecret@cache.example:6379/0",
    }
    status = run_cli("services", "status", env=env)
    assert status.code == 0
    assert "configured" in status.stdout and "db.example" in status.stdout
    assert "topsecret" not in status.stdout and "alsosecret" not in status.stdout


def test_services_url_prints_where_to_connect_without_a_password():
    env = {"DATABASE_URL": "postgresql://alice:s3cret-pw@db.example:5432/ts", "REDIS_URL": "redis://:r3dis-pw@r:6379/0"}
    done = run_cli("services", "url", env=env)
    assert done.code == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert lines["database"].startswith("postgresql://alice@db.example:5432/ts  (password left out")
    assert lines["redis"].startswith("redis://r:6379/0  (password left out")
    assert "s3cret-pw" not in done.stdout + done.stderr and "r3dis-pw" not in done.stdout + done.stderr
