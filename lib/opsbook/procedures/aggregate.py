"""Build the Toronto yearly tables, one year at a time, idempotently.

``parking_ticket_yearly_locations`` from ``parking_tickets`` (tickets, revenue, the most common
infraction and the first and last date per location, with the location's coordinates when it
is geocoded); ``red_light_yearly_locations`` and ``ase_yearly_locations`` from the camera
charges files. Each year is replaced in one transaction. A year whose inputs are unchanged
since its last build (the same load of that year, the same camera files) is skipped;
``force=true`` rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql
from pydantic import Field, field_validator

from opsbook import runlog
from opsbook.errors import OpsbookError
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.windows import Years, year_list
from opsbook.stores import postgres
from opsbook.stores.postgres import ident
from opsbook.run.verdict import Verdict

NOTEBOOK = "aggregate.ipynb"
SUMMARY = "Rebuild the yearly tables per location: parking tickets, red-light and ASE cameras"
STEP = "aggregate"
BUILDER_VERSION = "1"

PARKING_TABLE = "parking_ticket_yearly_locations"
CAMERA_TABLES = {"red_light": "red_light_yearly_locations", "ase": "ase_yearly_locations"}
CAMERA_SOURCES = {"red_light": "red_light_camera_charges", "ase": "ase_camera_charges"}
CAMERA_FILES = {"red_light": "red_light_camera_charges.csv", "ase": "ase_camera_charges.csv"}
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
CREATE TABLE IF NOT EXISTS {source} (
    site_code text NOT NULL, location text NOT NULL, latitude double precision, longitude double precision,
    year integer NOT NULL, charges bigint NOT NULL, fines numeric(16,2) NOT NULL);
CREATE TABLE IF NOT EXISTS {CAMERA_TABLES[program]} (
    year integer NOT NULL, site_code text NOT NULL, location text NOT NULL, latitude double precision,
    longitude double precision, ticket_count bigint NOT NULL, total_revenue numeric(16,2) NOT NULL,
    PRIMARY KEY (year, site_code));
"""
    for program, source in CAMERA_SOURCES.items()
)


class Params(ProcedureParams):
    """Parameters of ``aggregate``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset aggregated")
    years: Years = Field("2011-2023", description="years to (re)build: 2017, 2016-2018 or 2011,2015-2016")
    cameras: str = Field("demo", description='folder with the camera charges CSVs; "demo" builds them; "" skips')
    force: bool = Field(False, description="rebuild years whose inputs are unchanged")

    _cameras = field_validator("cameras")(lambda v: resolve_cameras(v))


def resolve_cameras(value: str) -> str:
    """'demo', '' (no cameras), or an existing folder (made absolute)."""
    if value in ("", "demo"):
        return value
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"folder {value!r} does not exist (give a folder, 'demo', or '' to skip cameras)")
    return str(path.resolve())


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


@dataclass
class Result:
    params: Params
    years: list[YearResult]
    camera_folder: str | None

    def verdict(self) -> Verdict:
        failed = [y for y in self.years if y.status == "failed"]
        built = sum(1 for y in self.years if y.status == "built")
        unchanged = sum(1 for y in self.years if y.status == "unchanged")
        rows = sum(y.rows for y in self.years)
        figures = {"years built": built, "years unchanged": unchanged, "years failed": len(failed), "rows": rows}
        summary = f"built {built} year(s), {unchanged} unchanged: {rows:,} rows in the yearly tables"
        if failed:
            from opsbook.windows import format_years

            rerun = format_years(y.year for y in failed)
            summary = f"{len(failed)} year(s) failed ({rerun}): {failed[0].error}. Rerun with -p years={rerun}"
            return Verdict.failed(summary, figures, "aggregate-years", ProcedureFailed, rows_out=rows)
        return Verdict("pass", summary, figures, rows_out=rows)


# --- setup -----------------------------------------------------------------------------------


def ensure_tables(conn) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('opsbook.ddl.aggregate'))")
        conn.execute(DDL)


def ensure_address_points(conn) -> int:
    """The geocoded addresses (shipped with opsbook) as a table, loaded once."""
    from opsbook import config

    path = config.package_data("toronto", "addresses_geocoded.csv")
    lines = sum(1 for _ in path.open(encoding="utf-8")) - 1
    have = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(ADDRESS_TABLE))).fetchone()[0]
    if have == lines:
        return have
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(ident(ADDRESS_TABLE)))
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL("COPY {} (address, latitude, longitude) FROM STDIN (FORMAT csv, HEADER true)").format(
                    ident(ADDRESS_TABLE)
                )
            ) as copy,
        ):
            copy.write(path.read_bytes())
    return lines


def camera_folder(params: Params) -> Path | None:
    if params.cameras == "":
        return None
    if params.cameras == "demo":
        from opsbook.demo import tickets as demodata

        demodata.build_cameras()
        return demodata.camera_dir()
    return Path(params.cameras)


def camera_fingerprint(folder: Path | None) -> dict:
    if folder is None:
        return {}
    found = {}
    for program, name in CAMERA_FILES.items():
        path = folder / name
        if path.exists():
            found[program] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def load_camera_charges(conn, folder: Path | None, fingerprint: dict) -> None:
    """Replace each camera charges table from its file when the file changed (or the table did)."""
    if folder is None:
        return
    for program, digest in fingerprint.items():
        table = CAMERA_SOURCES[program]
        key = f"camera_charges:{program}"
        row = conn.execute("SELECT value FROM opsbook.meta WHERE key = %s", (key,)).fetchone()
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(table))).fetchone()[0]
        path = folder / CAMERA_FILES[program]
        lines = sum(1 for _ in path.open(encoding="utf-8")) - 1
        if row and row[0] == digest and count == lines:
            continue
        with conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {}").format(ident(table)))
            columns = sql.SQL(", ").join(
                ident(c) for c in ("site_code", "location", "latitude", "longitude", "year", "charges", "fines")
            )
            try:
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(ident(table), columns)
                    ) as copy,
                ):
                    copy.write(path.read_bytes())
            except Exception as exc:  # PostgreSQL names the line and column
                raise OpsbookError(f"{path}: {str(exc).strip()}") from None
            conn.execute(
                "INSERT INTO opsbook.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, digest),
            )


# --- one year --------------------------------------------------------------------------------


def year_fingerprint(control, dataset: str, year: int, cameras: dict) -> dict:
    """The inputs of a year's build: the load of that year (its run and row count), the cameras."""
    load = runlog.ledger_get(control, dataset, str(year), "load")
    tickets = (
        {"run": load.run_id, "rows": load.rows, "xmin": load.checksum} if load and load.status == "success" else None
    )
    return {"tickets": tickets, "cameras": cameras, "builder": BUILDER_VERSION}


def build_year(control, dataset: str, year: int, cameras: dict, run_id: str, force: bool = False) -> YearResult:
    """Replace one year of the yearly tables in one transaction (or skip it when unchanged)."""
    t0 = time.monotonic()
    result = YearResult(year, "failed")
    lock_key = runlog.partition_lock(STEP, dataset, str(year))
    runlog.try_lock(control, lock_key, f"run {run_id}")
    try:
        fingerprint = year_fingerprint(control, dataset, year, cameras)
        phash = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        previous = runlog.ledger_get(control, dataset, str(year), STEP)
        same_inputs = not force and previous and previous.status == "success" and previous.params_hash == phash
        if same_inputs and _table_rows(control, year, bool(cameras)) == previous.rows:
            result.status = "unchanged"
            result.tables = _year_totals(control, year, bool(cameras))
            return result
        runlog.ledger_running(control, dataset, str(year), STEP, run_id, phash, fingerprint)
        with postgres.connection(purpose=f"aggregate {run_id} {year}") as conn, conn.transaction():
            _replace_parking_year(conn, year)
            if cameras:
                for program in CAMERA_TABLES:
                    _replace_camera_year(conn, program, year)
            result.tables = _year_totals(conn, year, bool(cameras))
            runlog.ledger_success(
                conn, dataset, str(year), STEP, run_id, phash, fingerprint, result.rows, 0, None, None
            )
        result.status = "built"
    except Exception as exc:
        result.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        runlog.ledger_failed(control, dataset, str(year), STEP, run_id, result.error)
        import psycopg

        if not isinstance(exc, OpsbookError | psycopg.Error):
            raise
    finally:
        result.seconds = time.monotonic() - t0
        runlog.unlock(control, lock_key)
    return result


def _replace_parking_year(conn, year: int) -> None:
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
              FROM parking_tickets
              WHERE date_of_infraction >= make_date(%(year)s, 1, 1)
                AND date_of_infraction < make_date(%(year)s + 1, 1, 1)
              GROUP BY 1) t
        LEFT JOIN {points} a ON a.address = t.location""").format(
            out=ident(PARKING_TABLE), points=ident(ADDRESS_TABLE)
        ),
        {"year": year},
    )


def _replace_camera_year(conn, program: str, year: int) -> None:
    out, source = CAMERA_TABLES[program], CAMERA_SOURCES[program]
    conn.execute(sql.SQL("DELETE FROM {} WHERE year = %s").format(ident(out)), (year,))
    conn.execute(
        sql.SQL("""
        INSERT INTO {out} (year, site_code, location, latitude, longitude, ticket_count, total_revenue)
        SELECT year, site_code, min(location), min(latitude), min(longitude), sum(charges), sum(fines)
        FROM {source} WHERE year = %s GROUP BY year, site_code""").format(out=ident(out), source=ident(source)),
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


# --- the procedure ---------------------------------------------------------------------------


def prepare(control, folder: Path | None) -> dict:
    """Tables, address points and camera charges in place; returns the cameras' fingerprint."""
    runlog.ensure_schema(control)
    ensure_tables(control)
    ensure_address_points(control)
    fingerprint = camera_fingerprint(folder)
    if folder is not None and not fingerprint:
        raise OpsbookError(f"no camera charges file in {folder} (expected {', '.join(CAMERA_FILES.values())})")
    load_camera_charges(control, folder, fingerprint)
    return fingerprint


def run(params: Params, run_id: str, progress: Callable[..., None] | None = None) -> Result:
    notify = progress or (lambda message, transient=False: None)
    years = year_list(params.years)
    folder = camera_folder(params)
    with postgres.connection(autocommit=True, purpose=f"aggregate {run_id}") as control:
        cameras = prepare(control, folder)
        results = []
        for index, year in enumerate(years, 1):
            notify(f"{year}: building ({index}/{len(years)})...", transient=True)
            result = build_year(control, params.dataset, year, cameras, run_id, params.force)
            notify(
                f"{year} ({index}/{len(years)}): {result.status}, {result.rows:,} rows, {result.seconds:.1f}s"
                + (f" ({result.error})" if result.error else "")
            )
            results.append(result)
    return Result(params, results, str(folder) if folder else None)


# --- presentation ----------------------------------------------------------------------------


def show_years(result: Result):
    from opsbook import report

    rows = []
    for y in result.years:
        row = {"year": y.year, "status": y.status}
        for table, totals in y.tables.items():
            short = table.replace("_yearly_locations", "").replace("_ticket", "")
            row[f"{short} locations"] = totals["rows"]
            row[f"{short} tickets"] = totals["tickets"]
            row[f"{short} revenue"] = float(totals["revenue"])
        row["seconds"] = round(y.seconds, 2)
        row["note"] = y.error or ""
        rows.append(row)
    return report.table(rows, caption="Yearly tables per year", status_column="status", element_id="aggregate-years")


def show_totals_chart(result: Result):
    """Tickets per year in each yearly table."""
    from opsbook import report

    built = [y for y in result.years if y.tables]
    if not built:
        return report.note("No year was built.")
    import plotly.graph_objects as go

    fig = go.Figure()
    for table in built[0].tables:
        fig.add_bar(x=[str(y.year) for y in built], y=[y.tables[table]["tickets"] for y in built], name=table)
    fig.update_layout(
        title="Tickets per year in the yearly tables",
        barmode="group",
        height=340,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        xaxis={"type": "category"},
    )
    return report.chart(fig, element_id="aggregate-chart")
