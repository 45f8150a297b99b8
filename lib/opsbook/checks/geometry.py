"""Geometry checks: valid shapes with the expected SRID.

With PostGIS in the database, ST_IsValid and ST_SRID run there. Without it, geometries
(WKB / EWKB, or lat/lon columns) are read in bounded chunks through a server-side cursor and
checked with shapely; the result says which engine ran. Both give the same answer.
"""

from __future__ import annotations

from psycopg import sql

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
from opsbook.checks import spec as s
from opsbook.checks.context import table_ident, where_of
from opsbook.stores.postgres import dicts, has_postgis

CHUNK_ROWS = 50_000


def run_geometry(ctx, check: s.Geometry, engine: str | None = None) -> CheckResult:
    """``engine`` forces "postgis" or "shapely" (default: PostGIS when the database has it)."""
    table = ctx.table_of(check)
    window = ctx.window_filter(table, ctx.partition_column(check))
    use_postgis = has_postgis(ctx.conn) if engine is None else engine == "postgis"
    if check.lat:
        problem = _point_problem_sql(check)
        bad, total, sample = _count_and_sample(ctx, check, table, window, problem)
        engine_name = "PostgreSQL (lat/lon bounds)"
    elif use_postgis:
        g = sql.Identifier(check.column)
        problem = sql.SQL("{g} IS NULL OR NOT ST_IsValid({g}) OR ST_SRID({g}) <> {srid}").format(
            g=g, srid=sql.Literal(check.srid)
        )
        bad, total, sample = _count_and_sample(
            ctx,
            check,
            table,
            window,
            problem,
            reason=sql.SQL(
                "CASE WHEN {g} IS NULL THEN 'NULL geometry' WHEN NOT ST_IsValid({g}) THEN ST_IsValidReason({g}) "
                "ELSE 'SRID ' || ST_SRID({g}) END"
            ).format(g=g),
        )
        engine_name = "PostGIS"
    else:
        bad, total, sample = _shapely_scan(ctx, check, table, window)
        engine_name = "shapely"
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, bad > 0),
        f"{bad:,} of {total:,} invalid",
        f"valid geometries, SRID {check.srid}",
        failing=sample,
        failing_count=bad,
        engine=engine_name,
        message=f"{bad:,} invalid or wrong-SRID geometries" if bad else "",
    )


def _point_problem_sql(check: s.Geometry) -> sql.Composable:
    lat, lon = sql.Identifier(check.lat), sql.Identifier(check.lon)
    return sql.SQL(
        "{lat} IS NULL OR {lon} IS NULL OR {lat} NOT BETWEEN -90 AND 90 OR {lon} NOT BETWEEN -180 AND 180"
    ).format(lat=lat, lon=lon)


def _count_and_sample(ctx, check, table, window, problem, reason=None):
    bad, total = ctx.conn.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE {}), count(*) FROM {} WHERE {} AND {}").format(
            problem, table_ident(table), window, where_of(check)
        )
    ).fetchone()
    sample = []
    if bad:
        extra = sql.SQL(", {} AS problem").format(reason) if reason is not None else sql.SQL("")
        query = sql.SQL("SELECT *{} FROM {} WHERE {} AND {} AND ({}) LIMIT {}").format(
            extra, table_ident(table), window, where_of(check), problem, sql.Literal(SAMPLE_ROWS)
        )
        sample = [_printable(row) for row in dicts(ctx.conn, query)]
    return bad, total, sample


def _printable(row: dict) -> dict:
    return {k: (bytes(v).hex()[:80] if isinstance(v, bytes | memoryview) else v) for k, v in row.items()}


def _shapely_scan(ctx, check, table, window):
    """Stream (ctid, WKB) pairs and check them with shapely, CHUNK_ROWS at a time."""
    import numpy as np
    import shapely

    g = sql.Identifier(check.column)
    kind = ctx.column_types(table).get(check.column)
    wkb = sql.SQL("ST_AsEWKB({})").format(g) if kind == "USER-DEFINED" else g
    query = sql.SQL("SELECT ctid::text, {} FROM {} WHERE {} AND {}").format(
        wkb, table_ident(table), window, where_of(check)
    )
    bad = total = 0
    sample = []
    with ctx.conn.transaction(), ctx.conn.cursor(name="opsbook_geometry_check") as cur:
        cur.itersize = CHUNK_ROWS
        cur.execute(query)
        while rows := cur.fetchmany(CHUNK_ROWS):
            total += len(rows)
            blobs = [bytes(r[1]) if r[1] is not None else None for r in rows]
            geoms = np.array([shapely.from_wkb(b) if b is not None else None for b in blobs], dtype=object)
            present = np.array([x is not None for x in geoms])
            valid = np.zeros(len(rows), dtype=bool)
            srid_ok = np.zeros(len(rows), dtype=bool)
            if present.any():
                valid[present] = shapely.is_valid(geoms[present])
                srid_ok[present] = shapely.get_srid(geoms[present]) == check.srid
            problem = ~(present & valid & srid_ok)
            bad += int(problem.sum())
            for i in np.flatnonzero(problem)[: SAMPLE_ROWS - len(sample)]:
                reason = (
                    "NULL geometry"
                    if not present[i]
                    else shapely.is_valid_reason(geoms[i])
                    if not valid[i]
                    else f"SRID {shapely.get_srid(geoms[i])}"
                )
                sample.append({"ctid": rows[i][0], "problem": reason})
    return bad, total, sample


register("geometry", run=run_geometry)
