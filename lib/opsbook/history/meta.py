"""``opsbook.meta``: small named values kept with the data, such as the digest of an input file
last loaded (so an unchanged file is not loaded again)."""

from __future__ import annotations

import psycopg


def get(conn: psycopg.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM opsbook.meta WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def put(conn: psycopg.Connection, key: str, value: str) -> None:
    """Set ``key`` (in the caller's transaction, so it commits with the data it describes)."""
    conn.execute(
        "INSERT INTO opsbook.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
