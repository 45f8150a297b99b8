"""Ad-hoc questions to the data, from a notebook's troubleshooting section or any cell:
``opsbook.query("SELECT ...")`` runs one statement against the database the runs use, in a
read-only transaction (a write is refused by PostgreSQL itself), with a statement timeout, and
returns a DataFrame of at most ``limit`` rows.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LIMIT = 1000
TIMEOUT_S = 60


def query(statement: str, params: Any = None, limit: int = DEFAULT_LIMIT):
    """The rows of a read-only query (a pandas DataFrame; ``df.attrs["truncated"]`` when more
    than ``limit`` rows matched). ``params`` fill ``%s`` / ``%(name)s`` placeholders."""
    import pandas as pd

    from opsbook.stores import postgres

    with postgres.connection(purpose="investigation") as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = '{TIMEOUT_S}s'")
        cursor = conn.execute(statement, params)
        if cursor.description is None:
            conn.rollback()
            return pd.DataFrame()
        columns = [c.name for c in cursor.description]
        rows = cursor.fetchmany(limit + 1)
        conn.rollback()
    frame = pd.DataFrame(rows[:limit], columns=columns)
    frame.attrs["truncated"] = len(rows) > limit
    if frame.attrs["truncated"]:
        print(f"first {limit:,} rows shown (query(..., limit=N) for more)")
    return frame
