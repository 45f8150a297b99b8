"""Camera datasets: GeoJSON and summaries of the red-light and ASE camera sites, on the lake.

Reads the yearly camera tables the aggregate procedure builds (``red_light_yearly_locations``,
``ase_yearly_locations``), turns each site into a point with geopandas (EPSG:4326), and writes
per program ``cameras/<program>_locations.geojson`` and ``cameras/<program>_summary.json`` to the
lake (a folder, or ``gs://`` through google-cloud-storage), each file whole or not at all.

A site whose coordinates are missing, invalid or outside Toronto is not written to the map; it
is listed in the summary's ``excluded`` and in the report (a WARN), never silently left out.
Each GeoJSON file is then read back with geopandas and its totals compared with PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field

from psycopg import sql
from pydantic import Field, field_validator

from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.windows import Years, known_subset, year_list
from opsbook.run.verdict import Verdict

NOTEBOOK = "camera_datasets.ipynb"
SUMMARY = "Build the red-light and ASE camera GeoJSON and summaries (geopandas, EPSG:4326) on the lake"
PROGRAMS = {"red_light": "red_light_yearly_locations", "ase": "ase_yearly_locations"}
CRS = "EPSG:4326"
# the City of Toronto's extent, with a margin: a point outside is a geocoding error
TORONTO = {"min_lon": -79.70, "max_lon": -79.10, "min_lat": 43.55, "max_lat": 43.90}


class Params(ProcedureParams):
    """Parameters of ``camera_datasets``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset the cameras belong to")
    years: Years = Field("2011-2023", description="years in the datasets")
    programs: str = Field("red_light,ase", description="camera programs: red_light, ase")
    out: str = Field("", description='where the files go: a folder or gs://bucket/prefix; "" is <lake>/cameras')

    @field_validator("programs")
    @classmethod
    def _known_programs(cls, value: str) -> str:
        return known_subset(value, list(PROGRAMS), "program")


@dataclass
class Program:
    name: str
    sites: int = 0
    features: int = 0
    tickets: int = 0
    revenue: float = 0.0
    db_tickets: int = 0
    db_revenue: float = 0.0
    excluded: list[dict] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # uri, bytes, sha256
    frame: object = None  # the GeoDataFrame written, for the map

    @property
    def matches(self) -> bool:
        mapped = self.db_tickets - sum(e["tickets"] for e in self.excluded)
        return self.tickets == mapped and self.features == self.sites - len(self.excluded)


@dataclass
class Result:
    params: Params
    programs: list[Program] = field(default_factory=list)
    out: str = ""
    built_at: str = ""
    seconds: float = 0.0

    def verdict(self) -> Verdict:
        figures = {
            "features": sum(p.features for p in self.programs),
            "excluded": sum(len(p.excluded) for p in self.programs),
            **{p.name: p.features for p in self.programs},
        }
        wrong = [p for p in self.programs if not p.matches]
        if wrong:
            detail = "; ".join(
                f"{p.name}: {p.features:,} features / {p.tickets:,} tickets read back, "
                f"{p.sites - len(p.excluded):,} sites / {p.db_tickets:,} tickets in PostgreSQL"
                for p in wrong
            )
            return Verdict.failed(
                f"the camera files disagree with PostgreSQL: {detail}", figures, "files", CheckFailed
            )
        empty = [p.name for p in self.programs if not p.sites]
        if empty:
            return Verdict.failed(
                f"no camera sites for {', '.join(empty)} in {self.params.years}: run aggregate with cameras first",
                figures,
                "programs",
                CheckFailed,
            )
        excluded = [e for p in self.programs for e in p.excluded]
        written = ", ".join(f"{p.name} {p.features:,} sites" for p in self.programs)
        if excluded:
            return Verdict(
                "warn",
                f"wrote {written} to {self.out}; {len(excluded)} site(s) left off the map (see excluded sites)",
                figures,
                rows_out=figures["features"],
                rows_rejected=len(excluded),
                anchor="excluded",
            )
        return Verdict(
            "pass",
            f"wrote {written} to {self.out}; each file read back matches PostgreSQL",
            figures,
            rows_out=figures["features"],
            rows_rejected=0,
        )


def output_root(out: str) -> str:
    from opsbook.trafficsafety import dualwrite

    return out.rstrip("/") if out else dualwrite.join(dualwrite.lake_root(), "cameras")


def sites(conn, program: str, years: list[int]):
    """One row per camera site with its totals and tickets per year (a pandas DataFrame)."""
    import pandas as pd

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
        for _, row in frame[mask].iterrows():
            excluded.append(
                {
                    "site_code": row["site_code"],
                    "location": row["location"],
                    "latitude": None if missing[_] else float(row["latitude"]),
                    "longitude": None if missing[_] else float(row["longitude"]),
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


def run(params: Params, run_id: str) -> Result:
    import geopandas as gpd

    from opsbook.trafficsafety import dualwrite
    from opsbook.stores import postgres

    t0 = time.monotonic()
    years = year_list(params.years)
    result = Result(params, out=output_root(params.out))
    result.built_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with postgres.connection(autocommit=True, purpose=f"run {run_id}") as conn:
        frames = {name: sites(conn, name, years) for name in params.programs.split(",")}
    for name, frame in frames.items():
        program = Program(name, sites=len(frame))
        program.db_tickets = int(frame["ticket_count"].sum())
        program.db_revenue = round(float(frame["total_revenue"].sum()), 2)
        geo, program.excluded = to_points(frame)
        geojson = geo.to_json(drop_id=True, to_wgs84=True).encode("utf-8")
        summary = json.dumps(summary_of(name, frame, geo, program.excluded, result.built_at), indent=1).encode()
        for suffix, data in (("locations.geojson", geojson), ("summary.json", summary)):
            uri = dualwrite.join(result.out, f"{name}_{suffix}")
            dualwrite.put(uri, data)
            program.files.append({"file": uri, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        # read back what was written, as a map client would
        back = gpd.read_file(read_bytes(program.files[0]["file"]))
        program.features = len(back)
        program.tickets = int(back["ticket_count"].sum()) if len(back) else 0
        program.revenue = round(float(back["total_revenue"].sum()), 2) if len(back) else 0.0
        program.frame = back
        result.programs.append(program)
    result.seconds = time.monotonic() - t0
    return result


def read_bytes(uri: str):
    import io

    if uri.startswith("gs://"):
        from opsbook.stores import objects

        with objects.open_read(uri) as handle:
            return io.BytesIO(handle.read())
    return uri


# --- presentation ----------------------------------------------------------------------------


def show_programs(result: Result):
    from opsbook import report

    rows = [
        {
            "program": p.name,
            "sites in PostgreSQL": p.sites,
            "features written": p.features,
            "excluded": len(p.excluded),
            "tickets in PostgreSQL": p.db_tickets,
            "tickets read back": p.tickets,
            "revenue in PostgreSQL": p.db_revenue,
            "revenue read back": p.revenue,
            "status": "pass" if p.matches else "fail",
        }
        for p in result.programs
    ]
    return report.table(
        rows,
        caption=f"Built at {result.built_at} for {result.params.years}",
        status_column="status",
        element_id="programs",
    )


def show_files(result: Result):
    from opsbook import report

    rows = [f for p in result.programs for f in p.files]
    return report.table(rows, caption=f"Files written to {result.out}", element_id="files")


def show_excluded(result: Result):
    from opsbook import report

    rows = [{"program": p.name, **e} for p in result.programs for e in p.excluded]
    if not rows:
        return report.note("Every site has valid coordinates inside Toronto: none was left off the map.")
    return report.table(rows, caption="Sites left off the map, with the reason", element_id="excluded")


def camera_map(result: Result, background: int = 4000):
    """The sites on a map drawn without a tile server: parking-ticket locations sketch the streets."""
    import plotly.graph_objects as go

    from opsbook import report
    from opsbook.stores import postgres

    fig = go.Figure()
    with postgres.connection(autocommit=True, purpose="camera map") as conn:
        streets = conn.execute(
            "SELECT longitude, latitude FROM parking_ticket_yearly_locations "
            "WHERE latitude IS NOT NULL GROUP BY 1, 2 ORDER BY sum(ticket_count) DESC LIMIT %s",
            (background,),
        ).fetchall()
    if streets:
        fig.add_trace(
            go.Scattergl(
                x=[s[0] for s in streets],
                y=[s[1] for s in streets],
                mode="markers",
                marker={"size": 3, "color": "#d0d4da"},
                name="parking-ticket locations",
                hoverinfo="skip",
            )
        )
    colours = {"red_light": "#c0392b", "ase": "#2471a3"}
    for p in result.programs:
        frame = p.frame
        if frame is None or not len(frame):
            continue
        top = max(int(frame["ticket_count"].max()), 1)
        fig.add_trace(
            go.Scatter(
                x=frame.geometry.x,
                y=frame.geometry.y,
                mode="markers",
                name=f"{p.name} ({len(frame)} sites)",
                marker={"size": 6 + 18 * frame["ticket_count"] / top, "color": colours.get(p.name), "opacity": 0.8},
                text=[
                    f"{c} {loc}<br>{t:,} tickets"
                    for c, loc, t in zip(frame["site_code"], frame["location"], frame["ticket_count"], strict=True)
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title="Camera sites (size: tickets over the years)",
        height=560,
        margin={"l": 40, "r": 10, "t": 50, "b": 40},
        plot_bgcolor="white",
        legend={"orientation": "h", "y": -0.08},
    )
    fig.update_xaxes(title="longitude", showgrid=False)
    # one degree of longitude is cos(43.7°) ≈ 0.72 of a degree of latitude in Toronto
    fig.update_yaxes(title="latitude", showgrid=False, scaleanchor="x", scaleratio=1 / 0.723)
    return report.chart(fig, "camera-map")
