"""PostgreSQL: connections, identifiers, and the DDL of dataset tables.

Identifiers from specs and parameters are validated (see ``datasets.check_identifier``) and
always quoted with ``psycopg.sql.Identifier``; values are always bound, never formatted in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Iterator

import psycopg
from psycopg import sql

from opsbook import services
from opsbook.datasets import DatasetSpec
from opsbook.errors import LockHeld, ServiceError, UsageError


def normalize_url(url: str) -> str:
    """Accept SQLAlchemy and Heroku spellings: ``postgresql+psycopg://``, ``postgres://``."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


# every session opsbook opens waits at most this long for a lock, and runs no statement longer:
# an analyst's open transaction makes a load fail with exit 4 naming it, never hang the night
TIMEOUTS = {"lock_timeout": ("OPSBOOK_LOCK_TIMEOUT", "30s"), "statement_timeout": ("OPSBOOK_STATEMENT_TIMEOUT", "6h")}
_DURATION = re.compile(r"^\d+\s*(ms|s|min|h|d)?$")


def session_options() -> str:
    """The libpq ``options`` every opsbook session starts with: its lock and statement timeouts."""
    parts = []
    for setting, (variable, default) in TIMEOUTS.items():
        value = os.environ.get(variable, "").strip() or default
        if not _DURATION.match(value):
            raise UsageError(f"{variable}={value!r} is not a duration (examples: 30s, 500ms, 10min, 6h; 0 = none)")
        parts.append(f"-c {setting}={value.replace(' ', '')}")
    return " ".join(parts)


def session_conninfo(url: str | None = None, **extra) -> str:
    """The connection string of an opsbook session: ``url`` (default: the configured or
    embedded database) with its timeouts added to whatever ``options`` it already has."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = normalize_url(url or services.database_url())
    try:
        given = conninfo_to_dict(url).get("options") or ""
    except psycopg.ProgrammingError:
        raise ServiceError(f"{services.database_label(url)}: not a PostgreSQL URL or connection string") from None
    return make_conninfo(url, options=f"{given} {session_options()}".strip(), **extra)


def session_url(url: str | None = None) -> str:
    """:func:`session_conninfo` as a ``postgresql://`` URL (for ADBC and SQLAlchemy)."""
    return as_url(session_conninfo(url))


def connect(url: str | None = None, autocommit: bool = False, purpose: str = "") -> psycopg.Connection:
    """A new psycopg connection to ``url`` (default: the configured or embedded database),
    with opsbook's lock and statement timeouts."""
    name = "opsbook" + (f" {purpose}" if purpose else "")
    conninfo = session_conninfo(url)
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, application_name=name[:63], connect_timeout=15)
    except psycopg.OperationalError as exc:
        raise _unreachable(url, exc) from None


def adbc_connect(url: str | None = None):
    """An ADBC PostgreSQL connection (binary COPY of Arrow data), with opsbook's timeouts."""
    import adbc_driver_postgresql.dbapi as adbc

    uri = session_url(url)
    try:
        return adbc.connect(uri)
    except Exception as exc:
        raise _unreachable(url, exc) from None


def _unreachable(url: str | None, exc: Exception) -> ServiceError:
    """The error for a database that cannot be reached: which host and database (never the
    URL itself, which may carry a password in any of its forms), and libpq's reason."""
    from opsbook.run.redaction import Redactor, url_password

    url = url or services.database_url()
    password = url_password(normalize_url(url))
    reason = Redactor([password] if password else [])(_first_line(exc))
    return ServiceError(f"cannot connect to PostgreSQL at {services.database_label(url)}: {reason}")


def blockers(conn: psycopg.Connection, relation: str | None = None) -> str:
    """The other sessions that hold a lock on ``relation`` (or that block this session), in
    words: PostgreSQL pid, user, application, since when, and what it runs."""
    rows = conn.execute(
        """SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,
                  coalesce(a.xact_start, a.query_start) AS since, left(a.query, 80)
           FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE l.granted AND l.pid <> pg_backend_pid()
             AND (l.relation = to_regclass(%s) OR l.pid = ANY (pg_blocking_pids(pg_backend_pid())))
           ORDER BY since""",
        (relation,),
    ).fetchall()
    if not rows:
        return "a session that has since ended"
    return "; ".join(
        f"PostgreSQL pid {pid} (user {user}, application {app or '-'}, {state or 'state unknown'}"
        f"{f' since {since:%Y-%m-%d %H:%M:%S %Z}' if since else ''}; last query: {query.strip()!r})"
        for pid, user, app, state, since, query in rows
    )


@contextlib.contextmanager
def lock_wait(conn: psycopg.Connection, relation: str, what: str) -> Iterator[None]:
    """Run DDL on ``relation`` in the block; if it waited past ``lock_timeout`` for another
    session's lock, raise LockHeld (exit 4) naming that session, after rolling back."""
    try:
        yield
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        waited = conn.execute("SHOW lock_timeout").fetchone()[0]
        conn.rollback()
        raise LockHeld(
            f"{what}: waited {waited} (OPSBOOK_LOCK_TIMEOUT) for a lock on {relation} held by "
            f"{blockers(conn, relation)}; nothing was changed. Run again once that session ends"
        ) from None


@contextlib.contextmanager
def connection(url: str | None = None, autocommit: bool = False, purpose: str = "") -> Iterator[psycopg.Connection]:
    conn = connect(url, autocommit=autocommit, purpose=purpose)
    try:
        yield conn
    finally:
        close(conn)


def close(conn: psycopg.Connection) -> None:
    """Release the session's advisory locks, then close it. The server drops a closed session's
    locks only once it notices the close: a run or step starting right after would find them
    still held."""
    if not conn.closed and not conn.broken:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock_all()")
    conn.close()


def sqlalchemy_url(url: str | None = None) -> str:
    return "postgresql+psycopg://" + session_url(url).removeprefix("postgresql://")


# libpq's messages for a connection the server ended: backend terminated, restart, crash
_LOST_CONNECTION = ("server closed the connection", "terminating connection", "connection to server", "no connection")


def _connection_lost(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _LOST_CONNECTION)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def dicts(conn: psycopg.Connection, query, params=None) -> list[dict]:
    """Every row of a query as a dict (psycopg's dict_row factory)."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def has_postgis(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'postgis'").fetchone()
    return bool(row and row[0])


# --- dataset tables --------------------------------------------------------------------------


def column_definitions(spec: DatasetSpec) -> sql.Composed:
    parts = []
    for col in spec.columns:
        not_null = sql.SQL(" NOT NULL") if col.required else sql.SQL("")
        parts.append(sql.SQL("{} {}{}").format(ident(col.name), sql.SQL(col.sql_type), not_null))
    return sql.SQL(", ").join(parts)


def partition_table(spec: DatasetSpec, year: int) -> str:
    return f"{spec.table}_{year}"


def ensure_dataset_tables(conn: psycopg.Connection, spec: DatasetSpec) -> None:
    """Create the partitioned table and its quarantine table when missing (idempotent)."""
    with conn.transaction():
        # concurrent first runs would otherwise race on CREATE TABLE IF NOT EXISTS
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"opsbook.ddl.{spec.table}",))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}) PARTITION BY RANGE ({})").format(
                ident(spec.table), column_definitions(spec), ident(spec.partition.column)
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " year integer NOT NULL,"
                " source_file text NOT NULL,"
                " line_number bigint NOT NULL,"
                " field text,"
                " reason text NOT NULL,"
                " raw_line text,"
                " run_id text,"
                " rejected_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident(spec.rejected_table))
        )
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (year)").format(
                ident(f"{spec.rejected_table}_year_idx"), ident(spec.rejected_table)
            )
        )


def day_partitions(conn: psycopg.Connection, table: str) -> dict[dt.date, str]:
    """A range-partitioned table's partitions that hold one UTC day each, by that day (a missing
    table has none)."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (table,),
    ).fetchall()
    named = {}
    for name, bound in rows:
        match = re.match(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)", bound or "")
        if match:
            named[name] = match.groups()
    if not named:
        return {}
    # the server reads its own literals back, all at once
    bounds = conn.execute(
        "SELECT unnest(%s::timestamptz[]), unnest(%s::timestamptz[])",
        ([b[0] for b in named.values()], [b[1] for b in named.values()]),
    ).fetchall()
    found = {}
    for name, (start, end) in zip(named, bounds, strict=True):
        start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        if end - start == dt.timedelta(days=1) and start.time() == dt.time():
            found[start.date()] = name
    return found


def year_bounds_check(spec: DatasetSpec, year: int) -> sql.Composed:
    """The CHECK that lets ATTACH PARTITION skip its validation scan."""
    column = ident(spec.partition.column)
    return sql.SQL("{} IS NOT NULL AND {} >= {} AND {} < {}").format(
        column, column, sql.Literal(f"{year}-01-01"), column, sql.Literal(f"{year + 1}-01-01")
    )


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for a URL or a libpq ``key=value`` string (SQLAlchemy needs URLs)."""
    from urllib.parse import quote, urlencode

    from psycopg.conninfo import conninfo_to_dict

    dsn = normalize_url(dsn)
    if dsn.startswith("postgresql://"):
        return dsn
    params = conninfo_to_dict(dsn)
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    database = quote(params.pop("dbname", ""), safe="")
    if host.startswith("/"):  # a Unix socket folder goes in the query
        params["host"] = host
        host = ""
    where = f"{host}:{port}" if host and port else host
    if not host and port:
        params["port"] = port
    query = f"?{urlencode(params, quote_via=quote)}" if params else ""  # libpq reads %20, not +
    return f"postgresql://{auth}{where}/{database}{query}"


def with_database(url: str, database: str) -> str:
    """The same server, another database (as a URL)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(normalize_url(url))
    params["dbname"] = database
    return as_url(make_conninfo(**params))


def ensure_database(url: str, database: str, drop_first: bool = False) -> str:
    """Create ``database`` on the server behind ``url`` if missing; return a URL for it."""
    from opsbook.datasets import check_identifier

    check_identifier(database, "database")
    with psycopg.connect(normalize_url(url), autocommit=True) as conn:
        if drop_first:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(database)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident(database)))
    return with_database(url, database)


def psql_executable() -> str:
    """The machine's psql, else the one inside the pgserver wheel."""
    import shutil

    found = shutil.which("psql")
    if found:
        return found
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")


# --- Arrow in: binary COPY through ADBC ------------------------------------------------------

_DONE = object()


def copy_arrow(url: str | None, setup: list[str], table: str, schema, tables, conn=None) -> tuple[int, str]:
    """Binary-COPY a stream of Arrow tables into ``table``, in one transaction; commit.

    ``conn``: an ADBC connection (:func:`adbc_connect`) to use and leave open, for a caller
    copying many tables (opening one costs tens of milliseconds); else one is opened and closed.

    ``setup`` statements (e.g. CREATE TABLE) run first in the same transaction. ``tables`` is
    consumed in a background thread, so that reading and checking the input overlaps the
    server's work; at most a few batches wait in between (bounded memory). An exception raised
    by ``tables`` aborts the transaction and is re-raised here as it was.

    Returns the number of rows stored and the transaction id (as a 32-bit xid, which every
    stored row carries as ``xmin``).
    """
    import queue
    import threading

    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    pending: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for item in tables:
                for batch in item.to_batches():
                    while not stop.is_set():
                        try:
                            pending.put(batch, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
        except BaseException as exc:  # handed to the consumer, re-raised below
            failure.append(exc)
        # always tell the consumer the stream ended (unless it gave up listening)
        while not stop.is_set():
            try:
                pending.put(_DONE, timeout=0.5)
                break
            except queue.Full:
                continue

    def consume():
        while True:
            item = pending.get()
            if item is _DONE:
                if failure:
                    raise RuntimeError("input failed")  # aborts the COPY; the cause is in failure
                return
            yield item

    producer = threading.Thread(target=produce, name=f"opsbook-read-{table}", daemon=True)
    owned = conn is None
    conn = adbc_connect(url) if owned else conn
    try:
        cur = conn.cursor()
        try:
            for statement in setup:
                cur.execute(statement)
            producer.start()
            try:
                rows = cur.adbc_ingest(table, pa.RecordBatchReader.from_batches(schema, consume()), mode="append")
            except Exception:
                if failure:
                    raise failure[0] from None
                raise
            if failure:
                raise failure[0]
            cur.execute("SELECT pg_current_xact_id()::text")
            xid = int(cur.fetchone()[0]) % 2**32
            conn.commit()
            return rows, str(xid)
        except adbc.Error as exc:
            if _connection_lost(exc):
                # libpq's own words ("server closed the connection unexpectedly... terminated
                # abnormally") hide what matters to whoever reads the report
                raise ServiceError(
                    f"the PostgreSQL connection was terminated during the COPY into {table} "
                    f"({_first_line(exc)}); its transaction was rolled back"
                ) from exc
            raise
        finally:
            stop.set()
            cur.close()
            if producer.is_alive():
                producer.join(timeout=30)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise
    finally:
        if owned:
            conn.close()
