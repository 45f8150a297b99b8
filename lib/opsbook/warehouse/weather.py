"""The weather warehouse: raw -> core -> mart in PostgreSQL, every step set-based SQL.

``raw.weather_observations``  each source file exactly as it came (payload as text, so that
                              malformed JSON is kept), with its SHA-256: landing the same
                              bytes again adds nothing.
``raw.weather_rejected``      what the transform refused, one row per file or hour, with the
                              file, the field and the reason.
``core.location``             one row per location (name from the file's folder, coordinates
                              from the payload).
``core.weather``              hourly observations, PK (location_id, observed_at), upserted:
                              a row is rewritten only when a value changed.
``mart.daily_weather_aggregates``  a materialized view per location and UTC date, with a
                              unique index so it can be refreshed CONCURRENTLY.

Source files are ``<folder>/<location>/<YYYY-MM-DD>.json`` in Open-Meteo's hourly shape (see
``opsbook.demo.weather``). Python only reads the files and feeds them to COPY; parsing,
checking and upserting the observations happen in the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

# Open-Meteo hourly series -> core.weather column
MEASURES = {
    "temperature_2m": "temperature_celsius",
    "relative_humidity_2m": "humidity",
    "precipitation": "precipitation_mm",
    "wind_speed_10m": "wind_speed_kmh",
}
TEMPERATURE_RANGE = (-50, 60)  # °C, the runbook's expectation
HUMIDITY_RANGE = (0, 100)  # %
HOURS_PER_DAY = 24
SAMPLE_ROWS = 5

DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS mart;
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

# materialized view -> its date column, for the before/after figures
MARTS = {"mart.daily_weather_aggregates": "observation_date"}


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create the schemas, tables, functions and views when missing (idempotent, race-safe)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.weather_warehouse'))")
        conn.execute(DDL)


# --- source files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    path: Path
    name: str  # relative to the source folder: "Toronto/2024-11-01.json"
    location: str | None  # the folder the file sits in
    day: dt.date | None  # from the file name; None when it holds no date


def list_files(folder: Path) -> list[SourceFile]:
    """Every ``*.json`` under ``folder``, sorted; location and date read from the path."""
    found = []
    for path in sorted(folder.rglob("*.json")):
        rel = path.relative_to(folder)
        try:
            day = dt.date.fromisoformat(path.stem)
        except ValueError:
            day = None
        location = rel.parts[-2] if len(rel.parts) >= 2 else None
        found.append(SourceFile(path, rel.as_posix(), location, day))
    return found


# --- 1. land ---------------------------------------------------------------------------------


@dataclass
class Landed:
    files: int = 0
    new: int = 0
    already: int = 0
    bytes: int = 0
    raw_deleted: int = 0  # a window rerun: raw rows of the window deleted first


def payload_text(data: bytes) -> str:
    """The payload as PostgreSQL text: UTF-8 as it came; undecodable bytes and NULs, which text
    cannot hold, become U+FFFD (the SHA-256 is of the original bytes)."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def land(
    conn: psycopg.Connection,
    files: list[SourceFile],
    source: str,
    run_id: str,
    progress: Callable[[str], None] = lambda line: None,
) -> Landed:
    """COPY the files into a staging table, then insert those not landed before (same file name
    and SHA-256). Runs in the caller's transaction; leaves ``wx_landing`` for the transform."""
    landed = Landed(files=len(files))
    conn.execute(
        "CREATE TEMP TABLE wx_landing (source_file text PRIMARY KEY, location_name text, file_date date, "
        "payload text NOT NULL, payload_sha256 text NOT NULL) ON COMMIT DROP"
    )
    started = time.monotonic()
    with conn.cursor() as cur, cur.copy("COPY wx_landing FROM STDIN") as copy:
        for index, item in enumerate(files, 1):
            data = item.path.read_bytes()
            landed.bytes += len(data)
            copy.write_row((item.name, item.location, item.day, payload_text(data), hashlib.sha256(data).hexdigest()))
            if index % 1000 == 0:
                progress(f"read {index:,}/{len(files):,} files ({time.monotonic() - started:.0f}s)")
    landed.new = conn.execute(
        """INSERT INTO raw.weather_observations
               (source_file, location_name, file_date, payload, payload_sha256, source, run_id)
           SELECT source_file, location_name, file_date, payload, payload_sha256, %s, %s FROM wx_landing
           ON CONFLICT (source_file, payload_sha256) DO NOTHING""",
        (source, run_id),
    ).rowcount
    landed.already = landed.files - landed.new
    return landed


def delete_window(conn: psycopg.Connection, first: dt.date, last: dt.date) -> tuple[int, int]:
    """Delete the window's core observations and raw files (and their rejects): (core, raw) rows."""
    start, end = window_bounds(first, last)
    core = conn.execute("DELETE FROM core.weather WHERE observed_at >= %s AND observed_at < %s", (start, end)).rowcount
    conn.execute("DELETE FROM raw.weather_rejected WHERE file_date BETWEEN %s AND %s", (first, last))
    raw = conn.execute("DELETE FROM raw.weather_observations WHERE file_date BETWEEN %s AND %s", (first, last)).rowcount
    return core, raw


def window_bounds(first: dt.date, last: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC for the dates ``first`` .. ``last``."""
    start = dt.datetime.combine(first, dt.time(), dt.UTC)
    return start, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC)


# --- 2. transform ----------------------------------------------------------------------------


@dataclass
class Transformed:
    files: int = 0
    files_rejected: int = 0  # files with at least one rejection
    files_refused: int = 0  # files rejected whole
    hours: int = 0  # hourly observations read from the accepted files
    hours_rejected: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    locations_inserted: int = 0
    locations_updated: int = 0
    core_deleted: int = 0  # a window rerun: core rows of the window deleted first
    rejects: list[dict] = field(default_factory=list)  # the first rejections, for the report

    @property
    def rejected_ratio(self) -> float:
        return self.files_rejected / self.files if self.files else 0.0


def _typed(label: str, path: str, expected: str, required: bool = True) -> tuple[str, str, str]:
    """A file-level check that the value at ``path`` (a text[] literal) is a JSON ``expected``."""
    value = f"(s.doc #> '{path}')"
    if required:
        bad = f"jsonb_typeof({value}) IS DISTINCT FROM '{expected}'"
    else:
        bad = f"({value}) IS NOT NULL AND jsonb_typeof({value}) <> '{expected}'"
    reason = (
        f"CASE WHEN {value} IS NULL THEN '{label} is missing' "
        f"ELSE '{label} is ' || left({value}::text, 40) || ' (' || jsonb_typeof({value}) "
        f"|| '), expected {expected}' END"
    )
    return label, bad, reason


def _length(path: str) -> str:
    value = f"(s.doc #> '{path}')"
    return f"CASE WHEN jsonb_typeof({value}) = 'array' THEN jsonb_array_length({value}) END"


def _file_checks() -> list[tuple[str, str, str]]:
    """(field, condition that fails the file, reason), in the order they are reported."""
    checks = [
        (
            "file name",
            "s.file_date IS NULL OR s.location_name IS NULL",
            "'the path is not <location>/<YYYY-MM-DD>.json'",
        ),
        ("payload", "s.error IS NOT NULL", "'not valid JSON: ' || s.error"),
        (
            "payload",
            "jsonb_typeof(s.doc) <> 'object'",
            "'the payload is a JSON ' || jsonb_typeof(s.doc) || ', expected an object'",
        ),
        _typed("latitude", "{latitude}", "number"),
        _typed("longitude", "{longitude}", "number"),
        _typed("utc_offset_seconds", "{utc_offset_seconds}", "number", required=False),
        _typed("hourly", "{hourly}", "object"),
        _typed("hourly.time", "{hourly,time}", "array"),
    ]
    checks += [_typed(f"hourly.{m}", f"{{hourly,{m}}}", "array") for m in MEASURES]
    checks.append(("hourly.time", f"{_length('{hourly,time}')} = 0", "'hourly.time is empty'"))
    for m in MEASURES:
        checks.append(
            (
                f"hourly.{m}",
                f"{_length('{hourly,' + m + '}')} <> {_length('{hourly,time}')}",
                f"'hourly.{m} has ' || {_length('{hourly,' + m + '}')} || ' values, hourly.time has ' "
                f"|| {_length('{hourly,time}')}",
            )
        )
    checks.append(
        (
            "hourly_units.temperature_2m",
            "coalesce(s.doc #>> '{hourly_units,temperature_2m}', '°C') <> '°C'",
            "'hourly_units.temperature_2m is ' || (s.doc #>> '{hourly_units,temperature_2m}') || ', expected °C'",
        )
    )
    return checks


def _hour_checks() -> list[tuple[str, str, str, str]]:
    """(field, condition that rejects the hour, reason, the offending value), in reporting order."""
    where = "'hourly.time[' || h.position || ']'"
    checks = [
        (
            "hourly.time",
            "h.observed_at IS NULL",
            f"{where} || ' is ' || left(h.time_value::text, 40) || ', expected YYYY-MM-DDTHH:MM'",
            "h.time_value::text",
        ),
        (
            "hourly.time",
            "(h.observed_at AT TIME ZONE 'UTC')::date <> h.file_date",
            f"{where} || ' (' || (h.time_value #>> '{{}}') || ') is not on the file''s date ' || h.file_date",
            "h.time_value::text",
        ),
    ]
    for m in MEASURES:
        checks.append(
            (
                f"hourly.{m}",
                f"jsonb_typeof(h.{m}) NOT IN ('number', 'null')",
                f"'hourly.{m}[' || h.position || '] is ' || left(h.{m}::text, 40) || ' (' || jsonb_typeof(h.{m}) "
                "|| '), expected a number or null'",
                f"h.{m}::text",
            )
        )
    return checks


def _checks_values(checks: list[tuple[str, ...]]) -> str:
    """A VALUES list (order, field, failed, reason[, offending value]) of checks."""
    return ",\n".join(
        f"({order}, '{label}', ({bad}) IS TRUE, {', '.join(rest)})" for order, (label, bad, *rest) in enumerate(checks)
    )


def transform(
    conn: psycopg.Connection,
    run_id: str,
    max_rejected_ratio: float,
    progress: Callable[[str], None] = lambda line: None,
) -> Transformed:
    """Parse, check and upsert the files in ``wx_landing`` (in the caller's transaction).

    The rows come from the raw copies of exactly the bytes landed by this run. A file whose
    structure is wrong is rejected whole; an hour with a bad value is rejected alone. When more
    than ``max_rejected_ratio`` of the files have a rejection, nothing is written: the caller
    rolls back and the rejections are returned for the report.
    """
    out = Transformed()
    conn.execute(
        """CREATE TEMP TABLE wx_scope ON COMMIT DROP AS
           SELECT r.id AS raw_id, r.source_file, r.location_name, r.file_date, r.payload, p.doc, p.error
           FROM raw.weather_observations r
           JOIN wx_landing l USING (source_file, payload_sha256)
           CROSS JOIN LATERAL raw.parse_json(r.payload) p"""
    )
    conn.execute(
        "CREATE TEMP TABLE wx_problems (raw_id bigint NOT NULL, field text, position integer, "
        "reason text NOT NULL, raw_text text) ON COMMIT DROP"
    )
    # whole files: the first failing check of each
    conn.execute(
        f"""INSERT INTO wx_problems (raw_id, field, reason, raw_text)
            SELECT DISTINCT ON (s.raw_id) s.raw_id, c.field, c.reason, left(s.payload, 200)
            FROM wx_scope s
            CROSS JOIN LATERAL (VALUES {_checks_values(_file_checks())}) c(ord, field, bad, reason)
            WHERE c.bad
            ORDER BY s.raw_id, c.ord"""
    )
    # the accepted files, one row per hour; every series has as many values as hourly.time
    measures = ",\n".join(f"s.doc #> '{{hourly,{m}}}' -> (t.n::int - 1) AS {m}" for m in MEASURES)
    conn.execute(
        f"""CREATE TEMP TABLE wx_hours ON COMMIT DROP AS
            SELECT s.raw_id, s.source_file, s.location_name, s.file_date, (t.n - 1)::int AS position,
                   t.value AS time_value,
                   (CASE WHEN jsonb_typeof(t.value) = 'string'
                              AND (t.value #>> '{{}}') ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}T\\d{{2}}:\\d{{2}}(:\\d{{2}})?$'
                         THEN raw.try_timestamp(t.value #>> '{{}}') END
                    - make_interval(secs => coalesce((s.doc ->> 'utc_offset_seconds')::numeric, 0)))
                   AT TIME ZONE 'UTC' AS observed_at,
                   {measures}
            FROM wx_scope s
            CROSS JOIN LATERAL jsonb_array_elements(s.doc #> '{{hourly,time}}') WITH ORDINALITY t(value, n)
            WHERE NOT EXISTS (SELECT 1 FROM wx_problems p WHERE p.raw_id = s.raw_id)"""
    )
    conn.execute(
        f"""INSERT INTO wx_problems (raw_id, field, position, reason, raw_text)
            SELECT DISTINCT ON (h.raw_id, h.position) h.raw_id, c.field, h.position, c.reason, c.value
            FROM wx_hours h
            CROSS JOIN LATERAL (VALUES {_checks_values(_hour_checks())}) c(ord, field, bad, reason, value)
            WHERE c.bad
            ORDER BY h.raw_id, h.position, c.ord"""
    )
    # the same location and hour twice in this run: the later file (by date, then name) wins
    conn.execute(
        """INSERT INTO wx_problems (raw_id, field, position, reason, raw_text)
           SELECT raw_id, 'hourly.time', position,
                  'hourly.time[' || position || '] duplicates ' || location_name || ' at '
                  || to_char(observed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"') || ', kept from ' || winner,
                  time_value::text
           FROM (SELECT h.*, first_value(h.source_file) OVER w AS winner, row_number() OVER w AS rank
                 FROM wx_hours h
                 WHERE NOT EXISTS (SELECT 1 FROM wx_problems p WHERE p.raw_id = h.raw_id
                                   AND p.position = h.position)
                 WINDOW w AS (PARTITION BY location_name, observed_at ORDER BY file_date DESC, source_file DESC)) d
           WHERE rank > 1"""
    )
    row = conn.execute(
        """SELECT (SELECT count(*) FROM wx_scope),
                  (SELECT count(DISTINCT raw_id) FROM wx_problems),
                  (SELECT count(*) FROM wx_problems WHERE position IS NULL),
                  (SELECT count(*) FROM wx_hours),
                  (SELECT count(*) FROM wx_problems WHERE position IS NOT NULL)"""
    ).fetchone()
    out.files, out.files_rejected, out.files_refused, out.hours, out.hours_rejected = row
    out.rejects = _fetch_rejects(conn)
    progress(
        f"parsed {out.files:,} files: {out.hours:,} hours, {out.files_rejected:,} files with rejections "
        f"({out.rejected_ratio:.1%})"
    )
    if out.rejected_ratio > max_rejected_ratio:
        return out
    # the quarantine of these files is replaced by this run's findings
    conn.execute("DELETE FROM raw.weather_rejected WHERE source_file IN (SELECT source_file FROM wx_scope)")
    conn.execute(
        """INSERT INTO raw.weather_rejected
               (raw_id, source_file, location_name, file_date, field, position, reason, raw_text, run_id)
           SELECT p.raw_id, s.source_file, s.location_name, s.file_date, p.field, p.position,
                  s.source_file || ': ' || p.reason, p.raw_text, %s
           FROM wx_problems p JOIN wx_scope s USING (raw_id)""",
        (run_id,),
    )
    out.locations_inserted, out.locations_updated = conn.execute(
        """WITH up AS (
               INSERT INTO core.location AS l (location_name, latitude, longitude, elevation_m)
               SELECT DISTINCT ON (s.location_name) s.location_name, (s.doc ->> 'latitude')::float8,
                      (s.doc ->> 'longitude')::float8,
                      CASE WHEN jsonb_typeof(s.doc -> 'elevation') = 'number' THEN (s.doc ->> 'elevation')::float8 END
               FROM wx_scope s
               WHERE NOT EXISTS (SELECT 1 FROM wx_problems p WHERE p.raw_id = s.raw_id AND p.position IS NULL)
               ORDER BY s.location_name, s.file_date DESC, s.source_file DESC
               ON CONFLICT (location_name) DO UPDATE
                   SET latitude = excluded.latitude, longitude = excluded.longitude,
                       elevation_m = excluded.elevation_m, updated_at = now()
                   WHERE (l.latitude, l.longitude, l.elevation_m)
                         IS DISTINCT FROM (excluded.latitude, excluded.longitude, excluded.elevation_m)
               RETURNING (xmax = 0) AS inserted)
           SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"""
    ).fetchone()
    columns = list(MEASURES.values())
    values = ", ".join(f"(h.{m} #>> '{{}}')::float8" for m in MEASURES)
    changed = sql.SQL(", ").join(sql.SQL("w.{}").format(sql.Identifier(c)) for c in columns)
    incoming = sql.SQL(", ").join(sql.SQL("excluded.{}").format(sql.Identifier(c)) for c in columns)
    assign = sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns)
    out.inserted, out.updated = conn.execute(
        sql.SQL(
            """WITH up AS (
                   INSERT INTO core.weather AS w (location_id, observed_at, {columns}, source_file)
                   SELECT l.location_id, h.observed_at, {values}, h.source_file
                   FROM wx_hours h
                   JOIN core.location l USING (location_name)
                   WHERE NOT EXISTS (SELECT 1 FROM wx_problems p WHERE p.raw_id = h.raw_id
                                     AND p.position = h.position)
                   ON CONFLICT (location_id, observed_at) DO UPDATE
                       SET {assign}, source_file = excluded.source_file, updated_at = now()
                       WHERE ({changed}) IS DISTINCT FROM ({incoming})
                   RETURNING (xmax = 0) AS inserted)
               SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"""
        ).format(
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            values=sql.SQL(values),
            assign=assign,
            changed=changed,
            incoming=incoming,
        )
    ).fetchone()
    out.unchanged = out.hours - out.hours_rejected - out.inserted - out.updated
    progress(f"core.weather: {out.inserted:,} inserted, {out.updated:,} updated, {out.unchanged:,} unchanged")
    return out


def _fetch_rejects(conn: psycopg.Connection, limit: int = 50) -> list[dict]:
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT s.source_file AS file, p.field, p.position, s.source_file || ': ' || p.reason AS reason,
                  p.raw_text AS "raw text"
           FROM wx_problems p JOIN wx_scope s USING (raw_id)
           ORDER BY s.source_file, p.position NULLS FIRST
           LIMIT %s""",
        (limit,),
    )


# --- 3. data-quality checkpoint --------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    rule: str
    checked: int
    failing: int
    status: str  # pass, warn (failing within tolerance) or fail
    samples: list[dict] = field(default_factory=list)


@dataclass
class Checkpoint:
    first: dt.date
    last: dt.date
    checks: list[CheckResult] = field(default_factory=list)
    coverage: list[dict] = field(default_factory=list)  # observations per location and date

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]


def _row_check(conn, name: str, rule: str, bad: str, columns: str, window: dict, params: tuple = ()) -> CheckResult:
    """A check that each observation of the window meets ``rule`` (``bad`` selects those that don't)."""
    from opsbook.stores.postgres import dicts

    scope = "w.observed_at >= %(start)s AND w.observed_at < %(end)s"
    values = {**window, **dict(params)}
    checked, failing = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {bad}) FROM core.weather w WHERE {scope}", values
    ).fetchone()
    samples = []
    if failing:
        samples = dicts(
            conn,
            f"""SELECT {columns} FROM core.weather w LEFT JOIN core.location l USING (location_id)
                WHERE {scope} AND ({bad}) ORDER BY w.observed_at, w.location_id LIMIT {SAMPLE_ROWS}""",
            values,
        )
    return CheckResult(name, rule, checked, failing, "fail" if failing else "pass", samples)


def checkpoint(conn: psycopg.Connection, first: dt.date, last: dt.date, max_incomplete_days: float) -> Checkpoint:
    """The expectations core must meet over the window before the marts may be refreshed."""
    from opsbook.stores.postgres import dicts

    start, end = window_bounds(first, last)
    window = {"start": start, "end": end}
    shown = (
        "l.location_name AS location, w.location_id, w.observed_at, w.temperature_celsius, w.humidity, w.source_file"
    )
    low, high = TEMPERATURE_RANGE
    h_low, h_high = HUMIDITY_RANGE
    result = Checkpoint(first, last)
    result.checks.append(
        _row_check(
            conn,
            "temperature range",
            f"temperature_celsius between {low} and {high} °C",
            "w.temperature_celsius NOT BETWEEN %(low)s AND %(high)s",
            shown,
            window,
            (("low", low), ("high", high)),
        )
    )
    result.checks.append(
        _row_check(
            conn,
            "humidity range",
            f"humidity between {h_low} and {h_high} %",
            "w.humidity NOT BETWEEN %(h_low)s AND %(h_high)s",
            shown,
            window,
            (("h_low", h_low), ("h_high", h_high)),
        )
    )
    result.checks.append(
        _row_check(
            conn,
            "key fields not null",
            "location_id and observed_at are set",
            "w.location_id IS NULL OR w.observed_at IS NULL",
            shown,
            window,
        )
    )
    result.checks.append(
        _row_check(
            conn,
            "referential integrity",
            "every location_id is in core.location",
            "NOT EXISTS (SELECT 1 FROM core.location c WHERE c.location_id = w.location_id)",
            shown,
            window,
        )
    )
    duplicates = dicts(
        conn,
        """SELECT location_id, observed_at, count(*) AS copies FROM core.weather
           WHERE observed_at >= %(start)s AND observed_at < %(end)s
           GROUP BY location_id, observed_at HAVING count(*) > 1 ORDER BY observed_at""",
        window,
    )
    checked = result.checks[0].checked
    result.checks.append(
        CheckResult(
            "unique keys",
            "one row per (location_id, observed_at)",
            checked,
            len(duplicates),
            "fail" if duplicates else "pass",
            duplicates[:SAMPLE_ROWS],
        )
    )
    # every location seen in the window, on every date of the window, has 24 hourly observations
    result.coverage = dicts(
        conn,
        """WITH days AS (SELECT d::date AS observation_date FROM generate_series(%(first)s::date, %(last)s::date,
                                                                                   interval '1 day') d),
                places AS (SELECT DISTINCT w.location_id, l.location_name FROM core.weather w
                           LEFT JOIN core.location l USING (location_id)
                           WHERE w.observed_at >= %(start)s AND w.observed_at < %(end)s),
                counts AS (SELECT location_id, (observed_at AT TIME ZONE 'UTC')::date AS observation_date,
                                  count(*) AS observations
                           FROM core.weather WHERE observed_at >= %(start)s AND observed_at < %(end)s
                           GROUP BY 1, 2)
           SELECT p.location_name AS location, p.location_id, d.observation_date AS date,
                  coalesce(c.observations, 0) AS observations
           FROM places p CROSS JOIN days d
           LEFT JOIN counts c USING (location_id, observation_date)
           ORDER BY p.location_name, d.observation_date""",
        {**window, "first": first, "last": last},
    )
    incomplete = [c for c in result.coverage if c["observations"] != HOURS_PER_DAY]
    cells = len(result.coverage)
    share = len(incomplete) / cells if cells else 0.0
    status = "pass" if not incomplete else ("warn" if share <= max_incomplete_days else "fail")
    result.checks.append(
        CheckResult(
            "observations per location per day",
            f"{HOURS_PER_DAY} per location and date; at most {max_incomplete_days:.0%} of location-days short",
            cells,
            len(incomplete),
            status,
            incomplete[:SAMPLE_ROWS],
        )
    )
    return result


# --- 4. marts --------------------------------------------------------------------------------


@dataclass
class MartState:
    populated: bool
    rows: int | None = None
    first: dt.date | None = None
    last: dt.date | None = None


@dataclass
class MartRefresh:
    view: str
    before: MartState
    after: MartState | None = None
    mode: str = ""  # "concurrently", "first population" or "" when not refreshed
    seconds: float = 0.0


def _view(name: str) -> sql.Identifier:
    schema, view = name.split(".")
    return sql.Identifier(schema, view)


def mart_state(conn: psycopg.Connection, name: str) -> MartState:
    schema, view = name.split(".")
    row = conn.execute(
        "SELECT ispopulated FROM pg_matviews WHERE schemaname = %s AND matviewname = %s", (schema, view)
    ).fetchone()
    if not row or not row[0]:
        return MartState(False)
    rows, first, last = conn.execute(
        sql.SQL("SELECT count(*), min({d}), max({d}) FROM {v}").format(d=sql.Identifier(MARTS[name]), v=_view(name))
    ).fetchone()
    return MartState(True, rows, first, last)


def refresh(conn: psycopg.Connection, name: str, before: MartState) -> MartRefresh:
    """Refresh one view; ``conn`` must be in autocommit (CONCURRENTLY cannot run in a transaction).

    A view that was never populated cannot be refreshed CONCURRENTLY
    (https://www.postgresql.org/docs/15/sql-refreshmaterializedview.html), so its first
    population is a plain REFRESH; afterwards readers are never blocked.
    """
    done = MartRefresh(name, before, mode="concurrently" if before.populated else "first population")
    concurrently = sql.SQL("CONCURRENTLY ") if before.populated else sql.SQL("")
    started = time.monotonic()
    conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(concurrently, _view(name)))
    done.seconds = time.monotonic() - started
    done.after = mart_state(conn, name)
    return done


def daily_rows(conn: psycopg.Connection, first: dt.date, last: dt.date) -> list[dict]:
    """The daily aggregates of the window, for the report's chart."""
    from opsbook.stores.postgres import dicts

    return dicts(
        conn,
        """SELECT location_name AS location, observation_date AS date, min_temperature_celsius,
                  max_temperature_celsius, avg_temperature_celsius::float8 AS avg_temperature_celsius,
                  total_precipitation_mm::float8 AS total_precipitation_mm, observation_count
           FROM mart.daily_weather_aggregates WHERE observation_date BETWEEN %s AND %s
           ORDER BY location_name, observation_date""",
        (first, last),
    )
