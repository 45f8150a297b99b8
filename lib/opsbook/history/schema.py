"""The ``opsbook`` schema: created and upgraded by numbered migrations, and by nothing else.

Each migration is applied once, in order, inside one transaction that also records its
number in ``opsbook.meta`` (key ``schema_version``). A database made by any earlier release is
brought up to date by applying the migrations it lacks; rows are never dropped. Migrations
1-3 reproduce the schema the first releases created (their ``schema_version`` was 3), so
they are written to be idempotent (``IF NOT EXISTS``): a database created by those releases
has their tables already.

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import psycopg

META_KEY = "schema_version"

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "run log, partition ledger, locks, meta",
        """
CREATE SCHEMA IF NOT EXISTS opsbook;
CREATE TABLE IF NOT EXISTS opsbook.runs (
    run_id          text PRIMARY KEY,
    procedure       text NOT NULL,
    dataset         text,
    "window"        text,
    params          jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL CHECK (status IN ('running', 'success', 'warn', 'failed')),
    exit_code       integer,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    heartbeat_at    timestamptz,
    rows_in         bigint,
    rows_out        bigint,
    rows_rejected   bigint,
    error           text,
    report_path     text,
    html_path       text,
    host            text,
    os_user         text,
    git_revision    text,
    opsbook_version text,
    interactive     boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS runs_started_idx ON opsbook.runs (started_at DESC);
CREATE INDEX IF NOT EXISTS runs_procedure_idx ON opsbook.runs (procedure, dataset, started_at DESC);
CREATE TABLE IF NOT EXISTS opsbook.partitions (
    dataset           text NOT NULL,
    partition         text NOT NULL,
    step              text NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'success', 'failed', 'interrupted')),
    params_hash       text,
    input_fingerprint jsonb,
    rows              bigint,
    rejected          bigint,
    checksum          text,
    table_oid         bigint,
    run_id            text,
    started_at        timestamptz,
    finished_at       timestamptz,
    heartbeat_at      timestamptz,
    error             text,
    PRIMARY KEY (dataset, partition, step)
);
CREATE TABLE IF NOT EXISTS opsbook.locks (
    key         text PRIMARY KEY,
    holder      text NOT NULL,
    host        text,
    pid         integer,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS opsbook.meta (key text PRIMARY KEY, value text NOT NULL);
""",
    ),
    (
        2,
        "the process that keeps a run's row (runner or interactive kernel)",
        "ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS pid integer;",
    ),
    (
        3,
        "the PostgreSQL session that took a lock",
        "ALTER TABLE opsbook.locks ADD COLUMN IF NOT EXISTS backend_pid integer;",
    ),
    (
        4,
        "the write ledger of dual-writes (made on first use by earlier releases)",
        """
CREATE TABLE IF NOT EXISTS opsbook.writes (
    dataset     text NOT NULL,
    batch_id    text NOT NULL,
    target      text NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'success')),
    attempts    integer NOT NULL DEFAULT 0,
    rows        bigint,
    first_day   date,
    last_day    date,
    last_error  text,
    staged_path text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, batch_id, target)
);
""",
    ),
    (
        5,
        "where a partition's input came from (a folder, a gs:// prefix or a registered source)",
        "ALTER TABLE opsbook.partitions ADD COLUMN IF NOT EXISTS source text;",
    ),
    (
        6,
        "interactive runs whose kernel is gone are 'abandoned'; a lead's sign-off of a run's report",
        """
ALTER TABLE opsbook.runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE opsbook.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'success', 'warn', 'failed', 'abandoned'));
ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS signed_off_by text;
ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS signed_off_at timestamptz;
ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS signoff_comment text;
ALTER TABLE opsbook.runs ADD COLUMN IF NOT EXISTS signoff_sha256 text;
""",
    ),
)

LATEST = MIGRATIONS[-1][0]


def version(conn: psycopg.Connection) -> int:
    """The schema version of the database (0: no opsbook schema yet)."""
    if not conn.execute("SELECT to_regclass('opsbook.meta')").fetchone()[0]:
        return 0
    row = conn.execute("SELECT value FROM opsbook.meta WHERE key = %s", (META_KEY,)).fetchone()
    return int(row[0]) if row else 0


def ensure_schema(conn: psycopg.Connection) -> int:
    """Bring the ``opsbook`` schema up to date; returns its version. Idempotent and race-safe:
    concurrent first runs serialize on an advisory lock, and each migration commits with its
    number, so an interrupted upgrade resumes where it stopped."""
    if version(conn) >= LATEST:
        return LATEST
    applied = 0
    for number, _title, ddl in MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.schema'))")
            have = version(conn)
            if have >= number:
                applied = have
                continue
            conn.execute(ddl)
            conn.execute(
                "INSERT INTO opsbook.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (META_KEY, str(number)),
            )
            applied = number
    return applied
