"""Toronto's camera datasets: GeoJSON and summaries of the red-light and ASE camera sites.

Reads the yearly camera tables (:mod:`opsbook.toronto.yearly` builds them), turns each site
into a point with geopandas (EPSG:4326), and writes per program
``<program>_locations.geojson`` and ``<program>_summary.json`` through :mod:`opsbook.stores.uri`
(a folder or a gs:// prefix, each file whole or not at all). Each GeoJSON file is then read
back, as a map client would, and the check engine compares its totals with PostgreSQL
(:func:`verify`, a ``read_back`` check per program).

A site whose coordinates are missing, invalid or outside Toronto is not written to the map; it
is listed in the summary's ``excluded``.

Imported by :mod:`opsbook.procedures.camera_datasets` for :data:`PROGRAMS`, so nothing heavy at
module level: psycopg, pandas and geopandas load inside the functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from opsbook.errors import SourceError
from opsbook.stores import uri

PROGRAMS = {"red_light": "red_light_yearly_locations", "ase": "ase_yearly_locations"}
STREETS_TABLE = "parking_ticket_yearly_locations"
CRS = "EPSG:4326"
# the City of Toronto's extent, with a margin: a point outside is a geocoding error
TORONTO = {"min_lon": -79.70, "max_lon": -79.10, "min_lat": 43.55, "max_lat": 43.90}
SUFFIXES = ("locations.geojson", "summary.json")


@dataclass
class Program:
    """One program's files: what PostgreSQL holds, what was built, and (once written) what was
    read back."""

    name: str
    sites: int = 0  # sites in PostgreSQL
    db_tickets: int = 0
    db_revenue: float = 0.0
    excluded: list[dict] = field(default_factory=list)  # sites left off the map, with the reason
    documents: dict[str, bytes] = field(default_factory=dict)  # suffix -> content to write
    files: list[dict] = field(default_factory=list)  # written: file, bytes, sha256
    features: int = 0  # read back
    tickets: int = 0
    revenue: float = 0.0
    frame: object = None  # the GeoDataFrame read back, for the map

    @property
    def mapped(self) -> int:
        return self.sites - len(self.excluded)

    @property
    def mapped_tickets(self) -> int:
        """The tickets of the sites on the map, as PostgreSQL holds them."""
        return self.db_tickets - sum(e["tickets"] for e in self.excluded)

    @property
    def check_name(self) -> str:
        return f"{self.name}_read_back"


def output_root(out: str) -> str:
    """Where the files go: ``out``, or ``<lake>/cameras``."""
    from opsbook import config

    return out.rstrip("/") if out else uri.join(config.lake_url(), "cameras")


def sites(conn, program: str, years: list[int]):
    """One row per camera site with its totals and tickets per year (a pandas DataFrame)."""
    import pandas as pd
    from psycopg import sql

    rows = conn.execute(
        sql.SQL(
            "SELECT site_code, min(location), min(latitude), min(longitude), "
            "jsonb_object_agg(year, ticket_count ORDER BY year), sum(ticket_count), sum(total_revenue), "
            "min(year), max(year) FROM {} WHERE year = ANY(%s) GROUP BY site_code ORDER BY site_code"
        ).format(sql.Identifier(PROGRAMS[program])),
        (years,),
    ).fetchall()
    columns = ["site_code", "location", "latitude", "longitude", "years", "ticket_count", "total_revenue"]
    frame = pd.DataFrame([r[:7] for r in rows], columns=columns)
    frame["first_year"] = [r[7] for r in rows]
    frame["last_year"] = [r[8] for r in rows]
    frame["ticket_count"] = frame["ticket_count"].astype("int64")
    frame["total_revenue"] = frame["total_revenue"].astype(float).round(2)
    return frame


def to_points(frame):
    """(GeoDataFrame of mappable sites, list of excluded sites with the reason)."""
    import geopandas as gpd

    lat, lon = frame["latitude"], frame["longitude"]
    missing = lat.isna() | lon.isna()
    outside = ~missing & ~(
        lat.between(TORONTO["min_lat"], TORONTO["max_lat"]) & lon.between(TORONTO["min_lon"], TORONTO["max_lon"])
    )
    geo = gpd.GeoDataFrame(
        frame.drop(columns=["latitude", "longitude"]),
        geometry=gpd.points_from_xy(lon.fillna(0), lat.fillna(0)),
        crs=CRS,
    )
    invalid = ~missing & ~(geo.geometry.is_valid & ~geo.geometry.is_empty)
    excluded = []
    for mask, reason in (
        (missing, "no coordinates"),
        (invalid, "invalid geometry"),
        (outside & ~invalid, "outside Toronto"),
    ):
        for index, row in frame[mask].iterrows():
            excluded.append(
                {
                    "site_code": row["site_code"],
                    "location": row["location"],
                    "latitude": None if missing[index] else float(row["latitude"]),
                    "longitude": None if missing[index] else float(row["longitude"]),
                    "tickets": int(row["ticket_count"]),
                    "reason": reason,
                }
            )
    return geo[~(missing | invalid | outside)].reset_index(drop=True), excluded


def summary_of(program: str, frame, geo, excluded: list[dict], built_at: str) -> dict:
    per_year: dict[str, dict] = {}
    for years in frame["years"]:
        for year, count in years.items():
            entry = per_year.setdefault(year, {"tickets": 0, "sites": 0})
            entry["tickets"] += int(count)
            entry["sites"] += 1
    return {
        "program": program,
        "built_at": built_at,
        "crs": CRS,
        "sites": len(frame),
        "features": len(geo),
        "tickets": int(frame["ticket_count"].sum()),
        "revenue": round(float(frame["total_revenue"].sum()), 2),
        "years": dict(sorted(per_year.items())),
        "excluded": excluded,
    }


def years_held(conn, programs) -> list[int]:
    """The years the programs' yearly tables hold."""
    from psycopg import sql

    union = sql.SQL(" UNION ").join(
        sql.SQL("SELECT DISTINCT year FROM {}").format(sql.Identifier(PROGRAMS[p])) for p in programs
    )
    return [r[0] for r in conn.execute(sql.SQL("SELECT year FROM ({}) y ORDER BY 1").format(union)).fetchall()]


def build(programs, window, built_at: str, run_id: str) -> tuple[list[int], list[Program]]:
    """The years of ``window`` (a :class:`~opsbook.windows.Years`; ``latest`` and empty are
    resolved against the tables) and each program's GeoJSON and summary, built from PostgreSQL
    (nothing is written yet)."""
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"camera datasets {run_id}") as conn:
        exists = "SELECT to_regclass(%s)"
        missing = [PROGRAMS[p] for p in programs if not conn.execute(exists, (PROGRAMS[p],)).fetchone()[0]]
        if missing:
            raise SourceError(f"no table {', '.join(missing)}: run aggregate with cameras first")
        years = list(window) if window.values else list(window.resolve(years_held(conn, programs)))
        frames = {name: sites(conn, name, years) for name in programs}
    built = []
    for name, frame in frames.items():
        program = Program(name, sites=len(frame))
        program.db_tickets = int(frame["ticket_count"].sum())
        program.db_revenue = round(float(frame["total_revenue"].sum()), 2)
        geo, program.excluded = to_points(frame)
        program.documents = {
            "locations.geojson": geo.to_json(drop_id=True, to_wgs84=True).encode("utf-8"),
            "summary.json": json.dumps(summary_of(name, frame, geo, program.excluded, built_at), indent=1).encode(),
        }
        built.append(program)
    return years, built


def write_and_read_back(planned: list[Program], out: str) -> list[Program]:
    """Write each program's files under ``out`` (each whole or not at all), then read the GeoJSON
    back as a map client would; returns the programs with what was written and read."""
    import io

    import geopandas as gpd

    written = []
    for program in planned:
        files = []
        for suffix in SUFFIXES:
            data = program.documents[suffix]
            target = uri.join(out, f"{program.name}_{suffix}")
            uri.write_bytes(target, data, "application/geo+json" if suffix.endswith("geojson") else "application/json")
            files.append({"file": target, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        back = gpd.read_file(io.BytesIO(uri.read_bytes(files[0]["file"])))
        written.append(
            replace(
                program,
                files=files,
                features=len(back),
                tickets=int(back["ticket_count"].sum()) if len(back) else 0,
                revenue=round(float(back["total_revenue"].sum()), 2) if len(back) else 0.0,
                frame=back,
            )
        )
    return written


def read_back_suite(programs: list[Program]):
    """The read-backs as checks of the engine: each GeoJSON file, read back as a map client
    reads it, holds every mappable site and its tickets as PostgreSQL has them."""
    from opsbook.checks import spec as s

    return s.Suite(
        dataset="camera_datasets",
        description="each GeoJSON file read back against PostgreSQL",
        checks=[
            s.ReadBack(
                name=p.check_name,
                type="read_back",
                artifact=p.files[0]["file"] if p.files else f"{p.name}_locations.geojson",
                source="PostgreSQL",
                observed={"features": p.features, "tickets": p.tickets},
                expected={"features": p.mapped, "tickets": p.mapped_tickets},
            )
            for p in programs
        ],
    )


def verify(programs: list[Program]) -> list:
    """The check engine's verdict on each program's read-back (a list of CheckResult)."""
    from opsbook.checks import run_suite
    from opsbook.windows import Days

    return run_suite(None, None, read_back_suite(programs), Days()).results  # reads no table


def street_points(limit: int = 4000) -> list[tuple[float, float]]:
    """(longitude, latitude) of the busiest parking-ticket locations: they trace the streets
    under a map drawn without a tile server (none when the table is missing)."""
    from psycopg import sql

    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose="camera map") as conn:
        if not conn.execute("SELECT to_regclass(%s)", (STREETS_TABLE,)).fetchone()[0]:
            return []
        return [
            (float(lon), float(lat))
            for lon, lat in conn.execute(
                sql.SQL(
                    "SELECT longitude, latitude FROM {} WHERE latitude IS NOT NULL "
                    "GROUP BY 1, 2 ORDER BY sum(ticket_count) DESC LIMIT %s"
                ).format(sql.Identifier(STREETS_TABLE)),
                (limit,),
            ).fetchall()
        ]
