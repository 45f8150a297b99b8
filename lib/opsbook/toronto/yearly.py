"""Toronto's yearly tables per location, one year at a time, idempotently.

``parking_ticket_yearly_locations`` from the tickets table (tickets, revenue, the most common
infraction and the first and last date per location, with the location's coordinates when it
is geocoded); ``red_light_yearly_locations`` and ``ase_yearly_locations`` from the camera
charges files, which are loaded into ``*_camera_charges`` tables when their content changed
(their digests are kept in ``opsbook.meta``).

Each year is replaced in one transaction, holding the year's lock, with its ledger entry: if
anything fails, the year keeps its previous rows. A year whose inputs are unchanged since its
last build (the same load of that year, the same camera files, the same builder) is skipped
unless forced.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from psycopg import sql

from opsbook.errors import OpsbookError, SourceError
from opsbook.history import ledger, locks, meta, schema
from opsbook.stores import postgres, uri
from opsbook.stores.postgres import ident

STEP = "aggregate"
LOAD_STEP = "load"  # the step whose ledger entry says which load of a year the build read
BUILDER_VERSION = "1"  # bump when the output for the same inputs changes: it invalidates "unchanged"

PARKING_TABLE = "parking_ticket_yearly_locations"
PROGRAMS = ("red_light", "ase")
CAMERA_TABLES = {"red_light": "red_light_yearly_locations", "ase": "ase_yearly_locations"}
CHARGES_TABLES = {"red_light": "red_light_camera_charges", "ase": "ase_camera_charges"}
CAMERA_FILES = {"red_light": "red_light_camera_charges.csv", "ase": "ase_camera_charges.csv"}
CHARGES_COLUMNS = ("site_code", "location", "latitude", "longitude", "year", "charges", "fines")
ADDRESS_TABLE = "toronto_address_points"

DDL = f"""
CREATE TABLE IF NOT EXISTS {ADDRESS_TABLE} (
    address text PRIMARY KEY, latitude double precision NOT NULL, longitude double precision NOT NULL);
CREATE TABLE IF NOT EXISTS {PARKING_TABLE} (
    year integer NOT NULL, location text NOT NULL, latitude double precision, longitude double precision,
    ticket_count bigint NOT NULL, total_revenue numeric(16,2) NOT NULL, top_infraction text,
    first_date date, last_date date, PRIMARY KEY (year, location));
""" + "".join(
    f"""
CREATE TABLE IF NOT EXISTS {charges} (
    site_code text NOT NULL, location text NOT NULL, latitude double precision, longitude double precision,
    year integer NOT NULL, charges bigint NOT NULL, fines numeric(16,2) NOT NULL);
CREATE TABLE IF NOT EXISTS {CAMERA_TABLES[program]} (
    year integer NOT NULL, site_code text NOT NULL, location text NOT NULL, latitude double precision,
    longitude double precision, ticket_count bigint NOT NULL, total_revenue numeric(16,2) NOT NULL,
    PRIMARY KEY (year, site_code));
"""
    for program, charges in CHARGES_TABLES.items()
)


@dataclass
class YearResult:
    year: int
    status: str  # built | unchanged | failed
    tables: dict[str, dict] = field(default_factory=dict)  # table -> rows, tickets, revenue
    seconds: float = 0.0
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.tables.values())


@dataclass(frozen=True)
class CameraFile:
    program: str
    uri: str
    bytes: int
    digest: str  # sha256 of the content, 16 hex digits
    loaded: str  # unchanged | changed | new: against the content the charges table holds


@dataclass(frozen=True)
class YearInput:
    """What a year's build reads, and what its last build read."""

    year: int
    tickets_rows: int | None  # the year's last successful load (None: never loaded)
    tickets_run: str | None
    last_build: str | None  # the status of the year's last build, with its run
    last_rows: int | None


# --- setup -----------------------------------------------------------------------------------


def ensure_tables(conn) -> None:
    """The yearly tables, the camera charges tables and the address points exist (idempotent)."""
    with conn.transaction():
        conn.execute(sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(sql.Literal(locks.key("ddl", STEP))))
        conn.execute(DDL)


def ensure_address_points(conn) -> int:
    """The geocoded addresses (shipped with opsbook) as a table, loaded once; returns their count."""
    from opsbook import config

    path = config.package_data("toronto", "addresses_geocoded.csv")
    with path.open(encoding="utf-8") as handle:
        lines = sum(1 for _ in handle) - 1
    have = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(ADDRESS_TABLE))).fetchone()[0]
    if have == lines:
        return have
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(ident(ADDRESS_TABLE)))
        copy_sql = sql.SQL("COPY {} (address, latitude, longitude) FROM STDIN (FORMAT csv, HEADER true)")
        with conn.cursor() as cur, cur.copy(copy_sql.format(ident(ADDRESS_TABLE))) as copy:
            copy.write(path.read_bytes())
    return lines


# --- camera charges --------------------------------------------------------------------------


def _meta_key(program: str) -> str:
    return f"camera_charges:{program}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _camera_files(location: str) -> dict[str, str]:
    """program -> URI of its charges file in ``location`` (a program without a file is absent)."""
    uri.check_folder(location)
    present = {o.name for o in uri.listing(location, recursive=False)}
    return {p: uri.join(location, name) for p, name in CAMERA_FILES.items() if name in present}


def camera_files(conn, location: str) -> list[CameraFile]:
    """The charges files in ``location``, each with whether the table holds its content already
    (read-only; ``conn`` may have no opsbook schema yet)."""
    found = _camera_files(location)
    if not found:
        raise SourceError(f"no camera charges file in {location} (expected {', '.join(CAMERA_FILES.values())})")
    has_history = schema.version(conn) > 0
    files = []
    for program, file_uri in found.items():
        data = uri.read_bytes(file_uri)
        digest = _digest(data)
        stored = meta.get(conn, _meta_key(program)) if has_history else None
        loaded = "new" if stored is None else ("unchanged" if stored.split(" ")[0] == digest else "changed")
        files.append(CameraFile(program, file_uri, len(data), digest, loaded))
    return files


def load_camera_charges(conn, location: str) -> dict[str, str]:
    """Replace each program's charges table from its file when the file's content (or the table)
    changed since it was loaded; returns program -> digest of the content loaded (the cameras'
    part of every year's fingerprint)."""
    found = _camera_files(location)
    if not found:
        raise SourceError(f"no camera charges file in {location} (expected {', '.join(CAMERA_FILES.values())})")
    fingerprint = {}
    for program, file_uri in found.items():
        data = uri.read_bytes(file_uri)
        digest = fingerprint[program] = _digest(data)
        table = CHARGES_TABLES[program]
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(table))).fetchone()[0]
        if meta.get(conn, _meta_key(program)) == f"{digest} {count}":
            continue
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(ident(table)))
            columns = sql.SQL(", ").join(ident(c) for c in CHARGES_COLUMNS)
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(ident(table), columns)
            try:
                with conn.cursor() as cur:
                    with cur.copy(copy_sql) as copy:
                        copy.write(data)
                    rows = cur.rowcount
            except Exception as exc:  # PostgreSQL names the line and column
                raise SourceError(f"{file_uri}: {str(exc).strip()}") from None
            # the digest with the row count it gave: a table emptied or filled since is reloaded
            meta.put(conn, _meta_key(program), f"{digest} {rows}")
    return fingerprint


def prepare(control, location: str | None) -> dict[str, str]:
    """History, tables, address points and camera charges in place (``location`` None: no
    cameras); returns the cameras' fingerprint (empty without cameras)."""
    schema.ensure_schema(control)
    ensure_tables(control)
    ensure_address_points(control)
    return load_camera_charges(control, location) if location is not None else {}


# --- what a year reads -----------------------------------------------------------------------


def loaded_years(conn, dataset: str) -> list[int]:
    """The years of ``dataset`` whose last load succeeded."""
    if schema.version(conn) == 0:
        return []
    return sorted(int(e.partition) for e in ledger.entries(conn, dataset, step=LOAD_STEP, status="success"))


def year_inputs(conn, dataset: str, years: list[int]) -> list[YearInput]:
    """Per year: the load a build would read, and the year's last build (read-only)."""
    has_history = schema.version(conn) > 0
    found = []
    for year in years:
        load = ledger.get(conn, dataset, str(year), LOAD_STEP) if has_history else None
        build = ledger.get(conn, dataset, str(year), STEP) if has_history else None
        loaded = load if load and load.status == "success" else None
        found.append(
            YearInput(
                year,
                loaded.rows if loaded else None,
                loaded.run_id if loaded else None,
                f"{build.status} (run {build.run_id})" if build else None,
                build.rows if build else None,
            )
        )
    return found


def year_fingerprint(control, dataset: str, year: int, cameras: dict[str, str]) -> dict:
    """The inputs of a year's build: the load of that year (its run and row count), the cameras."""
    load = ledger.get(control, dataset, str(year), LOAD_STEP)
    tickets = (
        {"run": load.run_id, "rows": load.rows, "xmin": load.checksum} if load and load.status == "success" else None
    )
    return {"tickets": tickets, "cameras": cameras, "builder": BUILDER_VERSION}


# --- one year --------------------------------------------------------------------------------


def build_year(
    control, dataset: str, tickets_table: str, year: int, cameras: dict[str, str], run_id: str, force: bool = False
) -> YearResult:
    """Replace one year of the yearly tables in one transaction, holding the year's lock (or skip
    it when its inputs are unchanged). A database or data problem fails the year, which keeps its
    previous rows; a held lock raises LockHeld; a bug raises."""
    import psycopg

    t0 = time.monotonic()
    result = YearResult(year, "failed")
    lock_key = locks.partition_lock(STEP, dataset, str(year))
    locks.try_lock(control, lock_key, f"run {run_id}")
    try:
        fingerprint = year_fingerprint(control, dataset, year, cameras)
        phash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        previous = ledger.get(control, dataset, str(year), STEP)
        same_inputs = not force and previous and previous.status == "success" and previous.params_hash == phash
        if same_inputs and _table_rows(control, year, bool(cameras)) == previous.rows:
            result.status = "unchanged"
            result.tables = _year_totals(control, year, bool(cameras))
            return result
        ledger.running(control, dataset, str(year), STEP, run_id, phash, fingerprint)
        with postgres.connection(purpose=f"aggregate {run_id} {year}") as conn, conn.transaction():
            _replace_parking_year(conn, tickets_table, year)
            if cameras:
                for program in CAMERA_TABLES:
                    _replace_camera_year(conn, program, year)
            result.tables = _year_totals(conn, year, bool(cameras))
            ledger.success(conn, dataset, str(year), STEP, run_id, phash, fingerprint, result.rows, 0, None, None)
        result.status = "built"
    except Exception as exc:
        result.tables = {}
        result.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        ledger.failed(control, dataset, str(year), STEP, run_id, result.error)
        if not isinstance(exc, OpsbookError | psycopg.Error):
            raise
    finally:
        result.seconds = time.monotonic() - t0
        locks.unlock(control, lock_key)
    return result


def build_years(
    dataset: str,
    tickets_table: str,
    years: list[int],
    cameras: str | None,
    run_id: str,
    force: bool = False,
    progress=None,
) -> tuple[list[YearResult], dict[str, str]]:
    """Prepare, then build every year; one failing year does not stop the others. Returns the
    years' results and the cameras' fingerprint. ``progress(message, transient=False)`` is told
    when each year starts (transient) and ends."""
    notify = progress or (lambda message, transient=False: None)
    with postgres.connection(autocommit=True, purpose=f"aggregate {run_id}") as control:
        fingerprint = prepare(control, cameras)
        results = []
        for index, year in enumerate(years, 1):
            notify(f"{year}: building ({index}/{len(years)})...", transient=True)
            result = build_year(control, dataset, tickets_table, year, fingerprint, run_id, force)
            notify(
                f"{year} ({index}/{len(years)}): {result.status}, {result.rows:,} rows, {result.seconds:.1f}s"
                + (f" ({result.error})" if result.error else "")
            )
            results.append(result)
    return results, fingerprint


def _replace_parking_year(conn, tickets_table: str, year: int) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE year = %s").format(ident(PARKING_TABLE)), (year,))
    conn.execute(
        sql.SQL("""
        INSERT INTO {out} (year, location, latitude, longitude, ticket_count, total_revenue, top_infraction,
                           first_date, last_date)
        SELECT %(year)s, t.location, a.latitude, a.longitude, t.tickets, t.revenue, t.top, t.first, t.last
        FROM (SELECT coalesce(location2, '(no address)') AS location, count(*) AS tickets,
                     sum(set_fine_amount) AS revenue,
                     mode() WITHIN GROUP (ORDER BY infraction_description) AS top,
                     min(date_of_infraction) AS first, max(date_of_infraction) AS last
              FROM {tickets}
              WHERE date_of_infraction >= make_date(%(year)s, 1, 1)
                AND date_of_infraction < make_date(%(year)s + 1, 1, 1)
              GROUP BY 1) t
        LEFT JOIN {points} a ON a.address = t.location""").format(
            out=ident(PARKING_TABLE), tickets=ident(tickets_table), points=ident(ADDRESS_TABLE)
        ),
        {"year": year},
    )


def _replace_camera_year(conn, program: str, year: int) -> None:
    out, charges = CAMERA_TABLES[program], CHARGES_TABLES[program]
    conn.execute(sql.SQL("DELETE FROM {} WHERE year = %s").format(ident(out)), (year,))
    conn.execute(
        sql.SQL("""
        INSERT INTO {out} (year, site_code, location, latitude, longitude, ticket_count, total_revenue)
        SELECT year, site_code, min(location), min(latitude), min(longitude), sum(charges), sum(fines)
        FROM {charges} WHERE year = %s GROUP BY year, site_code""").format(out=ident(out), charges=ident(charges)),
        (year,),
    )


def _tables(cameras: bool) -> list[str]:
    return [PARKING_TABLE, *(CAMERA_TABLES.values() if cameras else ())]


def _table_rows(conn, year: int, cameras: bool) -> int:
    return sum(
        conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE year = %s").format(ident(t)), (year,)).fetchone()[0]
        for t in _tables(cameras)
    )


def _year_totals(conn, year: int, cameras: bool) -> dict[str, dict]:
    totals = {}
    for table in _tables(cameras):
        rows, tickets, revenue = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(ticket_count), 0), coalesce(sum(total_revenue), 0) FROM {} "
                "WHERE year = %s"
            ).format(ident(table)),
            (year,),
        ).fetchone()
        totals[table] = {"rows": rows, "tickets": int(tickets), "revenue": revenue}
    return totals
