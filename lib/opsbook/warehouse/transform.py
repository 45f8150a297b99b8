"""Step 2, transform: the staged files into raw and core, in one transaction.

A window rerun deletes the window's core observations and raw files first. The staged files
go into ``raw.weather_observations`` (a file already there with the same bytes is not stored
again); the rows transformed are the raw copies of exactly the bytes the run staged. A file
whose structure is wrong is rejected whole, an hour with a bad value alone; when more than
``max_rejected_ratio`` of the files have a rejection the transaction is rolled back and
nothing is written (the rejections are still returned, for the report). Otherwise the
quarantine of these files is replaced by this run's findings and ``core.location`` and
``core.weather`` are upserted: a row is rewritten only when a value changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from opsbook.warehouse import schema
from opsbook.windows import Days

# Open-Meteo hourly series -> core.weather column
MEASURES = {
    "temperature_2m": "temperature_celsius",
    "relative_humidity_2m": "humidity",
    "precipitation": "precipitation_mm",
    "wind_speed_10m": "wind_speed_kmh",
}
REJECT_SAMPLE = 50


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
    raw_inserted: int = 0  # files new to raw.weather_observations
    core_deleted: int = 0  # a window rerun: core rows of the window deleted first
    raw_deleted: int = 0  # a window rerun: raw files of the window deleted first
    rolled_back: bool = False  # too many rejections: nothing was written
    seconds: float = 0.0
    rejects: list[dict] = field(default_factory=list)  # the first rejections, for the report

    @property
    def rejected_ratio(self) -> float:
        return self.files_rejected / self.files if self.files else 0.0


def transform(
    conn: psycopg.Connection,
    run_id: str,
    replacing: Days,
    max_rejected_ratio: float,
    progress: Callable[..., None] = lambda *a, **k: None,
) -> Transformed:
    """Move what ``run_id`` staged into raw and core, all or nothing (see the module docstring).
    ``conn`` is in autocommit; ProcedureFailed when the run staged nothing."""
    from opsbook.errors import ProcedureFailed
    from opsbook.warehouse import land

    if not land.staged(conn, run_id):
        raise ProcedureFailed(f"run {run_id} has no staged files: run the land step (again) first")
    out = Transformed()
    started = time.monotonic()
    with conn.transaction() as tx:
        if replacing:
            out.core_deleted, out.raw_deleted = delete_window(conn, replacing)
            progress(f"window {replacing}: deleted {out.core_deleted:,} core rows and {out.raw_deleted:,} raw files")
        out.raw_inserted = conn.execute(
            """INSERT INTO raw.weather_observations
                   (source_file, location_name, file_date, payload, payload_sha256, source, run_id)
               SELECT source_file, location_name, file_date, payload, payload_sha256, source, run_id
               FROM raw.weather_landing WHERE run_id = %s
               ON CONFLICT (source_file, payload_sha256) DO NOTHING""",
            (run_id,),
        ).rowcount
        _find_problems(conn, run_id, out)
        progress(
            f"parsed {out.files:,} files: {out.hours:,} hours, {out.files_rejected:,} files with rejections "
            f"({out.rejected_ratio:.1%})"
        )
        if out.rejected_ratio > max_rejected_ratio:
            out.rolled_back = True
            raise psycopg.Rollback(tx)  # raw and core as they were
        _quarantine(conn, run_id)
        _upsert(conn, out)
        if out.inserted or out.updated or out.core_deleted or out.locations_inserted or out.locations_updated:
            schema.mark_core_changed(conn, run_id)
    out.seconds = time.monotonic() - started
    if out.rolled_back:
        progress(f"too many rejections ({out.rejected_ratio:.1%}, limit {max_rejected_ratio:.0%}): rolled back")
    else:
        progress(f"core.weather: {out.inserted:,} inserted, {out.updated:,} updated, {out.unchanged:,} unchanged")
    return out


def delete_window(conn: psycopg.Connection, days: Days) -> tuple[int, int]:
    """Delete the window's core observations and raw files (and their rejects): (core, raw) rows."""
    start, end = days.bounds()
    core = conn.execute("DELETE FROM core.weather WHERE observed_at >= %s AND observed_at < %s", (start, end)).rowcount
    conn.execute("DELETE FROM raw.weather_rejected WHERE file_date BETWEEN %s AND %s", (days.first, days.last))
    raw = conn.execute(
        "DELETE FROM raw.weather_observations WHERE file_date BETWEEN %s AND %s", (days.first, days.last)
    ).rowcount
    return core, raw


# --- the checks ------------------------------------------------------------------------------


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


def _find_problems(conn: psycopg.Connection, run_id: str, out: Transformed) -> None:
    """Parse the run's files and list their problems (temporary tables of the transaction:
    ``wx_scope`` the files, ``wx_hours`` the hours of the files accepted whole, ``wx_problems``)."""
    # CREATE TABLE AS takes no bound parameter: the run id goes in as a quoted literal
    conn.execute(
        sql.SQL(
            """CREATE TEMP TABLE wx_scope ON COMMIT DROP AS
               SELECT r.id AS raw_id, r.source_file, r.location_name, r.file_date, r.payload, p.doc, p.error
               FROM raw.weather_observations r
               JOIN raw.weather_landing l ON l.run_id = {run_id} AND l.source_file = r.source_file
                                         AND l.payload_sha256 = r.payload_sha256
               CROSS JOIN LATERAL raw.parse_json(r.payload) p"""
        ).format(run_id=sql.Literal(run_id))
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


def _quarantine(conn: psycopg.Connection, run_id: str) -> None:
    """The quarantine of these files is replaced by this run's findings."""
    conn.execute("DELETE FROM raw.weather_rejected WHERE source_file IN (SELECT source_file FROM wx_scope)")
    conn.execute(
        """INSERT INTO raw.weather_rejected
               (raw_id, source_file, location_name, file_date, field, position, reason, raw_text, run_id)
           SELECT p.raw_id, s.source_file, s.location_name, s.file_date, p.field, p.position,
                  s.source_file || ': ' || p.reason, p.raw_text, %s
           FROM wx_problems p JOIN wx_scope s USING (raw_id)""",
        (run_id,),
    )


def _upsert(conn: psycopg.Connection, out: Transformed) -> None:
    """``core.location`` from the newest accepted file of each location, then ``core.weather``
    from the accepted hours, each row rewritten only when a value changed."""
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


def _fetch_rejects(conn: psycopg.Connection, limit: int = REJECT_SAMPLE) -> list[dict]:
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
