"""opsbook.query: the troubleshooting sections' questions to the runs' database, read-only."""

import psycopg
import pytest

import opsbook

pytestmark = pytest.mark.integration


def test_query_answers_with_a_table_and_cannot_write(db):
    db.execute("DROP TABLE IF EXISTS investigated; CREATE TABLE investigated (n int)")
    db.execute("INSERT INTO investigated SELECT generate_series(1, 30)")
    frame = opsbook.query("SELECT n FROM investigated WHERE n > %s ORDER BY n", [25])
    assert frame["n"].tolist() == [26, 27, 28, 29, 30] and not frame.attrs["truncated"]
    cut = opsbook.query("SELECT n FROM investigated ORDER BY n", limit=10)
    assert len(cut) == 10 and cut.attrs["truncated"]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        opsbook.query("DELETE FROM investigated")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        opsbook.query("SELECT 1; DROP TABLE investigated")  # a second statement is read-only too
    assert db.execute("SELECT count(*) FROM investigated").fetchone()[0] == 30
