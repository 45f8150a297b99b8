"""The opsbook schema upgrades in place: a database made by the first release keeps every row."""

import os
from pathlib import Path

import psycopg
import pytest

from opsbook.history import ledger, runs, schema
from opsbook.stores import postgres

FIXTURE = Path(__file__).parent / "fixtures" / "opsbook_schema_v3.sql"
TABLES = ("runs", "partitions", "writes", "locks", "meta")


@pytest.fixture
def old_database(pg_admin_url):
    """A database holding the schema and rows the first release wrote (schema version 3)."""
    name = f"opsbook_upgrade_{os.getpid()}"
    url = postgres.ensure_database(pg_admin_url, name, drop_first=True)
    with psycopg.connect(postgres.normalize_url(url), autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
    yield url
    with psycopg.connect(postgres.normalize_url(pg_admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def digest(conn, table: str, columns: list[str]) -> tuple[int, str]:
    """Row count and an order-independent hash of the given columns of every row."""
    listed = ", ".join(f'"{c}"' for c in columns)
    return conn.execute(
        f"SELECT count(*), coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '') "
        f"FROM (SELECT {listed} FROM opsbook.{table}) r"
    ).fetchone()


def columns_of(conn, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'opsbook' AND table_name = %s "
        "ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def test_upgrading_a_first_release_database_keeps_every_row(old_database):
    with psycopg.connect(postgres.normalize_url(old_database), autocommit=True) as conn:
        assert schema.version(conn) == 3
        before_columns = {t: columns_of(conn, t) for t in TABLES}
        before = {t: digest(conn, t, before_columns[t]) for t in TABLES if t != "meta"}
        assert before["runs"][0] == 4 and before["partitions"][0] == 2 and before["writes"][0] == 72

        assert schema.ensure_schema(conn) == schema.LATEST
        assert schema.version(conn) == schema.LATEST
        for table, (count, checksum) in before.items():
            assert digest(conn, table, before_columns[table]) == (count, checksum), f"opsbook.{table} changed"
        assert "source" in columns_of(conn, "partitions")

        again = {t: digest(conn, t, columns_of(conn, t)) for t in TABLES}
        assert schema.ensure_schema(conn) == schema.LATEST  # a second upgrade changes nothing
        assert {t: digest(conn, t, columns_of(conn, t)) for t in TABLES} == again

        # the upgraded tables take new rows as a current run writes them
        runs.start(conn, "upgrade-check", "load", "toronto_parking_tickets", "2016", {})
        runs.finish(conn, "upgrade-check", "success", 0, rows_out=1)
        assert runs.get(conn, "upgrade-check")["status"] == "success"
        entry = ledger.get(conn, "toronto_parking_tickets", "2016", "load")
        assert entry is not None and entry.status == "success" and entry.source is None  # the old row, kept


def test_a_new_database_gets_every_migration_once(pg_admin_url):
    name = f"opsbook_fresh_{os.getpid()}"
    url = postgres.ensure_database(pg_admin_url, name, drop_first=True)
    try:
        with psycopg.connect(postgres.normalize_url(url), autocommit=True) as conn:
            assert schema.version(conn) == 0
            assert schema.ensure_schema(conn) == schema.LATEST
            assert [columns_of(conn, t) != [] for t in TABLES] == [True] * len(TABLES)
    finally:
        with psycopg.connect(postgres.normalize_url(pg_admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_are_numbered_in_order_and_never_renumbered():
    numbers = [number for number, _title, _ddl in schema.MIGRATIONS]
    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[-1] == schema.LATEST
