"""The warehouse's tables, its lock, and the version of core.

``raw.weather_landing``       the files a run has read, as they came, until the run ends
                              (UNLOGGED: a staging area, never the record)
``raw.weather_observations``  each source file exactly as it came (payload as text, so that
                              malformed JSON is kept), with its SHA-256: landing the same
                              bytes again adds nothing
``raw.weather_rejected``      what the transform refused, one row per file or hour, with the
                              file, the field and the reason
``core.location``             one row per location (name from the file's folder, coordinates
                              from the payload)
``core.weather``              hourly observations, PK (location_id, observed_at), upserted:
                              a row is rewritten only when a value changed
``mart.daily_weather_aggregates``  a materialized view per location and UTC date, with a
                              unique index so it can be refreshed CONCURRENTLY
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import psycopg

from opsbook.history import locks

LOCK = locks.key("refresh_marts", "weather")
# opsbook.meta key: changes with every transaction that changes core (see mark_core_changed)
CORE_VERSION_KEY = "warehouse.weather.core_version"

DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS mart;
CREATE UNLOGGED TABLE IF NOT EXISTS raw.weather_landing (
    run_id         text NOT NULL,
    source_file    text NOT NULL,
    location_name  text,
    file_date      date,
    payload        text NOT NULL,
    payload_sha256 text NOT NULL,
    source         text,
    landed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, source_file)
);
CREATE TABLE IF NOT EXISTS raw.weather_observations (
    id             bigserial PRIMARY KEY,
    source_file    text NOT NULL,
    location_name  text,
    file_date      date,
    payload        text NOT NULL,
    payload_sha256 text NOT NULL,
    source         text,
    ingested_at    timestamptz NOT NULL DEFAULT now(),
    run_id         text,
    UNIQUE (source_file, payload_sha256)
);
CREATE INDEX IF NOT EXISTS weather_observations_file_date_idx ON raw.weather_observations (file_date);
CREATE TABLE IF NOT EXISTS raw.weather_rejected (
    id            bigserial PRIMARY KEY,
    raw_id        bigint,
    source_file   text NOT NULL,
    location_name text,
    file_date     date,
    field         text,
    position      integer,
    reason        text NOT NULL,
    raw_text      text,
    run_id        text,
    rejected_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS weather_rejected_file_idx ON raw.weather_rejected (source_file);
CREATE TABLE IF NOT EXISTS core.location (
    location_id   serial PRIMARY KEY,
    location_name text NOT NULL UNIQUE,
    latitude      double precision NOT NULL,
    longitude     double precision NOT NULL,
    elevation_m   double precision,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS core.weather (
    location_id         integer NOT NULL REFERENCES core.location,
    observed_at         timestamptz NOT NULL,
    temperature_celsius double precision,
    humidity            double precision,
    precipitation_mm    double precision,
    wind_speed_kmh      double precision,
    source_file         text,
    loaded_at           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz,
    PRIMARY KEY (location_id, observed_at)
);
CREATE INDEX IF NOT EXISTS weather_observed_at_idx ON core.weather (observed_at);
-- PostgreSQL 15 has no pg_input_is_valid(): an exception block turns a parse error into a value
CREATE OR REPLACE FUNCTION raw.parse_json(payload text, OUT doc jsonb, OUT error text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    detail text;
BEGIN
    doc := payload::jsonb;
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    error := SQLERRM || coalesce(' (' || nullif(detail, '') || ')', '');
END $$;
CREATE OR REPLACE FUNCTION raw.try_timestamp(value text) RETURNS timestamp
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN value::timestamp;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
CREATE MATERIALIZED VIEW IF NOT EXISTS mart.daily_weather_aggregates AS
SELECT w.location_id,
       l.location_name,
       (w.observed_at AT TIME ZONE 'UTC')::date AS observation_date,
       min(w.temperature_celsius) AS min_temperature_celsius,
       max(w.temperature_celsius) AS max_temperature_celsius,
       round(avg(w.temperature_celsius)::numeric, 2) AS avg_temperature_celsius,
       round(sum(w.precipitation_mm)::numeric, 2) AS total_precipitation_mm,
       round(avg(w.humidity)::numeric, 1) AS avg_humidity,
       max(w.wind_speed_kmh) AS max_wind_speed_kmh,
       count(*) AS observation_count
FROM core.weather w
JOIN core.location l USING (location_id)
GROUP BY w.location_id, l.location_name, (w.observed_at AT TIME ZONE 'UTC')::date
WITH NO DATA;
-- REFRESH ... CONCURRENTLY needs a unique index on plain columns covering every row
CREATE UNIQUE INDEX IF NOT EXISTS daily_weather_aggregates_key
    ON mart.daily_weather_aggregates (location_id, observation_date);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the schemas, tables, functions and views when missing (idempotent, race-safe)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.weather_warehouse'))")
        conn.execute(DDL)


@contextlib.contextmanager
def session(run_id: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection that holds the warehouse lock (LockHeld, exit 4, when another
    run holds it), with the opsbook and warehouse schemas in place. The lock goes with the
    connection, however the step ends."""
    from opsbook.history import schema as history
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"refresh_marts {run_id}") as conn:
        history.ensure_schema(conn)
        locks.try_lock(conn, LOCK, f"run {run_id}")
        ensure_schema(conn)
        yield conn


def core_version(conn: psycopg.Connection) -> str | None:
    """Which change of core is the latest (None: none recorded yet)."""
    from opsbook.history import meta

    return meta.get(conn, CORE_VERSION_KEY)


def mark_core_changed(conn: psycopg.Connection, run_id: str) -> None:
    """Record, in the caller's transaction, that it changes core: a checkpoint taken before no
    longer describes it."""
    from opsbook.history import meta

    meta.put(conn, CORE_VERSION_KEY, f"{run_id} at {dt.datetime.now(dt.UTC).isoformat()}")
