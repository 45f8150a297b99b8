"""Step 1, land: find the source files and stage them, as they came, for the run.

Source files are ``<source>/<location>/<YYYY-MM-DD>.json`` in Open-Meteo's hourly shape, in a
folder or under a ``gs://`` prefix. Staging (``raw.weather_landing``, keyed by run) writes
nothing to raw or core: the transform moves the staged files into raw in the same transaction
as everything it derives from them, so that too many rejections leave raw untouched too.
Landing again replaces the run's staged files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from opsbook.windows import Days

# staged files of a run that never finished are removed by a later landing after this long
STAGE_KEEP_HOURS = 24
PROGRESS_EVERY = 200  # files


@dataclass(frozen=True)
class SourceFile:
    uri: str  # a local path or a gs:// object
    name: str  # relative to the source: "Toronto/2024-11-01.json"
    location: str | None  # the folder the file sits in
    day: dt.date | None  # from the file name; None when it holds no date
    size: int


@dataclass(frozen=True)
class Found:
    """The files a run works on and the dates they cover."""

    files: list[SourceFile]
    days: Days  # the window asked for, or the first..last date of the files (empty: none dated)
    outside: int  # files of the source outside the window


def list_files(location: str) -> list[SourceFile]:
    """Every ``*.json`` under ``location`` (a folder or a gs:// prefix), sorted; the location
    and date read from the path."""
    from opsbook.stores import uri

    uri.check_folder(location)
    base = str(location).rstrip("/") + "/"
    found = []
    for item in uri.listing(location):
        if not item.name.endswith(".json"):
            continue
        name = item.uri[len(base) :] if item.uri.startswith(base) else item.name
        parts = name.split("/")
        try:
            day = dt.date.fromisoformat(parts[-1].removesuffix(".json"))
        except ValueError:
            day = None
        location_name = parts[-2] if len(parts) >= 2 else None
        found.append(SourceFile(item.uri, name, location_name, day, item.size))
    return found


def find(location: str, window: Days) -> Found:
    """The files of ``location`` (of ``window``'s dates when it is set); SourceError when none."""
    from opsbook.errors import SourceError

    files = list_files(location)
    if not files:
        raise SourceError(f"no *.json files under {location} (expected <location>/<YYYY-MM-DD>.json)")
    if window:
        inside = [f for f in files if f.day and window.first <= f.day <= window.last]
        if not inside:
            raise SourceError(f"no files under {location} are dated within {window}")
        return Found(inside, window, len(files) - len(inside))
    dated = [f.day for f in files if f.day]
    return Found(files, Days(min(dated), max(dated)) if dated else Days(), 0)


@dataclass(frozen=True)
class Landed:
    files: int
    bytes: int
    new: int  # not in raw yet (same file name and SHA-256)
    already: int
    replaced: int = 0  # a window rerun: raw files of the window the transform deletes first


def payload_text(data: bytes) -> str:
    """The payload as PostgreSQL text: UTF-8 as it came; undecodable bytes and NULs, which text
    cannot hold, become U+FFFD (the SHA-256 is of the original bytes)."""
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def stage(
    conn: psycopg.Connection,
    files: list[SourceFile],
    source: str,
    run_id: str,
    replacing: Days,
    progress: Callable[..., None] = lambda *a, **k: None,
) -> Landed:
    """COPY the files of ``source`` into ``raw.weather_landing`` for ``run_id`` (replacing what the run staged
    before), in one transaction, and count those raw does not hold yet. ``replacing``: the
    window a rerun deletes from raw first (its files all count as new)."""
    from opsbook.stores import uri

    size = 0
    started = time.monotonic()
    with conn.transaction():
        conn.execute(
            "DELETE FROM raw.weather_landing WHERE run_id = %s OR landed_at < now() - make_interval(hours => %s)",
            (run_id, STAGE_KEEP_HOURS),
        )
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY raw.weather_landing (run_id, source_file, location_name, file_date, payload, payload_sha256, "
                "source) FROM STDIN"
            ) as copy,
        ):
            for index, item in enumerate(files, 1):
                data = uri.read_bytes(item.uri)
                size += len(data)
                copy.write_row(
                    (
                        run_id,
                        item.name,
                        item.location,
                        item.day,
                        payload_text(data),
                        hashlib.sha256(data).hexdigest(),
                        source,
                    )
                )
                if index % PROGRESS_EVERY == 0:
                    progress(
                        f"read {index:,}/{len(files):,} files ({time.monotonic() - started:.0f} s)", transient=True
                    )
        window = {"run_id": run_id, "rerun": bool(replacing), "first": replacing.first, "last": replacing.last}
        new = conn.execute(
            """SELECT count(*) FROM raw.weather_landing l
               WHERE l.run_id = %(run_id)s AND NOT EXISTS (
                   SELECT 1 FROM raw.weather_observations r
                   WHERE r.source_file = l.source_file AND r.payload_sha256 = l.payload_sha256
                     AND NOT (%(rerun)s AND r.file_date BETWEEN %(first)s AND %(last)s))""",
            window,
        ).fetchone()[0]
        replaced = 0
        if replacing:
            replaced = conn.execute(
                "SELECT count(*) FROM raw.weather_observations WHERE file_date BETWEEN %(first)s AND %(last)s", window
            ).fetchone()[0]
    progress(f"staged {len(files):,} files ({size:,} bytes): {new:,} new, {len(files) - new:,} already in raw")
    return Landed(len(files), size, new, len(files) - new, replaced)


def staged(conn: psycopg.Connection, run_id: str) -> int:
    return conn.execute("SELECT count(*) FROM raw.weather_landing WHERE run_id = %s", (run_id,)).fetchone()[0]


def drop_staged(conn: psycopg.Connection, run_id: str) -> None:
    """Remove what the run staged (its last step does, however the run went)."""
    conn.execute("DELETE FROM raw.weather_landing WHERE run_id = %s", (run_id,))
