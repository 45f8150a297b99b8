"""Toronto's map payloads in Redis: tickets, red-light and ASE cameras, per location and year.

Each payload goes under a versioned key (``toronto:map-data:tickets:aggregated:v1``) with a
``:summary`` beside it (totals per year and overall, ``published_at``). Every key is written
under a staging name and switched in with RENAME, all in one MULTI/EXEC transaction, so readers
see the old payloads or the new ones, never half of them, and never a key missing. Large
payloads are gzip'd. :func:`read_back` decodes each payload as a client would (for the report),
and :func:`verify` has the check engine compare what Redis holds with PostgreSQL: every
location of each payload and every year of its summary (``redis_totals`` checks).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from psycopg import sql

PREFIX = "toronto:map-data"
VERSION = "v1"
# payload name -> (yearly table, location key column)
PAYLOADS = {
    "tickets": ("parking_ticket_yearly_locations", "location"),
    "red-light": ("red_light_yearly_locations", "site_code"),
    "ase": ("ase_yearly_locations", "site_code"),
}


def key_of(name: str) -> str:
    return f"{PREFIX}:{name}:aggregated:{VERSION}"


@dataclass
class Payload:
    """One payload built from PostgreSQL, before it is published."""

    name: str
    document: dict
    summary: dict

    @property
    def key(self) -> str:
        return key_of(self.name)


@dataclass
class Published:
    key: str
    items: int
    bytes: int
    gzipped: bool
    memory: int | None = None
    ttl: int | None = None
    tickets: int = 0  # read back from Redis
    revenue: float = 0.0

    @property
    def name(self) -> str:
        return self.key.split(":")[2]

    @property
    def check_names(self) -> tuple[str, str]:
        """The checks of this payload: its locations, and its summary's years."""
        slug = self.name.replace("-", "_")
        return f"{slug}_payload", f"{slug}_summary"


def years_held(conn) -> list[int]:
    """The years the yearly tables hold."""
    union = sql.SQL(" UNION ").join(
        sql.SQL("SELECT DISTINCT year FROM {}").format(sql.Identifier(table)) for table, _ in PAYLOADS.values()
    )
    return [r[0] for r in conn.execute(sql.SQL("SELECT year FROM ({}) y ORDER BY 1").format(union)).fetchall()]


def build_payload(conn, name: str, years: list[int], min_tickets: int) -> tuple[dict, dict]:
    """(payload, summary) for one yearly table: locations with their per-year figures."""
    table, location = PAYLOADS[name]
    rows = conn.execute(
        sql.SQL(
            "SELECT {loc}, min(location), min(latitude), min(longitude), year, sum(ticket_count), "
            "sum(total_revenue) FROM {t} WHERE year = ANY(%s) GROUP BY {loc}, year ORDER BY {loc}, year"
        ).format(loc=sql.Identifier(location), t=sql.Identifier(table)),
        (years,),
    ).fetchall()
    places: dict[str, dict] = {}
    per_year: dict[int, dict] = {}
    for key, label, lat, lon, year, tickets, revenue in rows:
        place = places.setdefault(
            key, {"id": key, "location": label, "lat": lat, "lon": lon, "years": {}, "tickets": 0, "revenue": 0.0}
        )
        place["years"][str(year)] = {"tickets": int(tickets), "revenue": float(revenue)}
        place["tickets"] += int(tickets)
        place["revenue"] += float(revenue)
        totals = per_year.setdefault(year, {"tickets": 0, "revenue": 0.0, "locations": 0})
        totals["tickets"] += int(tickets)
        totals["revenue"] += float(revenue)
        totals["locations"] += 1
    kept = [p for p in places.values() if p["tickets"] >= min_tickets]
    for p in kept:
        p["revenue"] = round(p["revenue"], 2)
    payload = {"version": VERSION, "kind": name, "locations": kept}
    summary = {
        "version": VERSION,
        "kind": name,
        "years": {str(y): {**t, "revenue": round(t["revenue"], 2)} for y, t in sorted(per_year.items())},
        "tickets": sum(p["tickets"] for p in kept),
        "revenue": round(sum(p["revenue"] for p in kept), 2),
        "locations": len(kept),
    }
    return payload, summary


def build(window, min_tickets: int, run_id: str) -> tuple[list[int], list[Payload]]:
    """The years of ``window`` (a :class:`~opsbook.windows.Years`; ``latest`` and empty are
    resolved against the yearly tables) and every payload, built from PostgreSQL."""
    from opsbook.stores import postgres

    with postgres.connection(autocommit=True, purpose=f"push cache {run_id}") as conn:
        years = list(window) if window.values else list(window.resolve(years_held(conn)))
        payloads = []
        for name in PAYLOADS:
            document, summary = build_payload(conn, name, years, min_tickets)
            payloads.append(Payload(name, document, summary))
    return years, payloads


def encode(document: dict, gzip_over_kb: int) -> tuple[bytes, bool]:
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if len(data) > gzip_over_kb * 1024:
        return gzip.compress(data, mtime=0), True
    return data, False


def publish(
    payloads: list[Payload], published_at: str, gzip_over_kb: int, ttl_seconds: int | None, run_id: str
) -> list[Published]:
    """Switch every payload and summary in, together: staging keys renamed in one MULTI/EXEC.

    Raises ServiceError when Redis fails; the keys then hold all the previous payloads."""
    import redis

    from opsbook import services
    from opsbook.errors import ServiceError
    from opsbook.run.redaction import redact_url
    from opsbook.stores import redis as redis_store

    published = []
    with redis_store.client() as client:
        pipe = client.pipeline(transaction=True)  # MULTI/EXEC: all keys switch together
        for payload in payloads:
            payload.summary["published_at"] = payload.document["published_at"] = published_at
            for key, document in ((payload.key, payload.document), (f"{payload.key}:summary", payload.summary)):
                data, zipped = encode(document, gzip_over_kb)
                staging = f"{key}:staging:{run_id}"
                pipe.set(staging, data, ex=ttl_seconds)
                pipe.rename(staging, key)  # atomic replace: readers never see the key missing
                if key == payload.key:
                    published.append(Published(key, len(payload.document["locations"]), len(data), zipped))
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise ServiceError(
                f"Redis at {redact_url(services.redis_url())} failed while publishing the payloads "
                f"({type(exc).__name__}: {exc}); "
                "the keys switch in one MULTI/EXEC transaction, so they hold either all the previous payloads or "
                "all the new ones"
            ) from exc
    return published


def read_back(published: list[Published]) -> None:
    """Decode each published payload as a client would: its totals, memory use and expiry (for
    the report; :func:`verify` judges what Redis holds)."""
    from opsbook.checks.system import decode_payload
    from opsbook.stores import redis as redis_store

    with redis_store.client() as client:
        for item in published:
            document = decode_payload(client.get(item.key))
            item.tickets = sum(p["tickets"] for p in document["locations"])
            item.revenue = round(sum(p["revenue"] for p in document["locations"]), 2)
            item.memory = client.memory_usage(item.key)
            item.ttl = client.ttl(item.key)


# PostgreSQL's side of the checks, computed apart from the payloads' own build
LOCATIONS_KEPT = """SELECT {loc}::text AS key, sum(ticket_count) AS tickets, sum(total_revenue) AS revenue
FROM {t} WHERE year = ANY(%(years)s) GROUP BY {loc} HAVING sum(ticket_count) >= %(min_tickets)s"""
PER_YEAR = """SELECT year::text AS key, sum(tickets) AS tickets, sum(revenue) AS revenue, count(*) AS locations
FROM (SELECT year, {loc}, sum(ticket_count) AS tickets, sum(total_revenue) AS revenue FROM {t}
      WHERE year = ANY(%(years)s) GROUP BY year, {loc}) x GROUP BY year"""
CENT = 0.005  # revenue is rounded to the cent in the payloads


def checks_suite(conn, published: list[Published]):
    """What each published key must hold, as ``redis_totals`` checks of the engine: every
    location of the payload (tickets, revenue) and every year of its summary (tickets, revenue,
    locations) as the yearly table has them over ``%(years)s``."""
    from opsbook.checks import spec as s

    checks = []
    for item in published:
        table, location = PAYLOADS[item.name]
        names = {"loc": sql.Identifier(location), "t": sql.Identifier(table)}
        payload, summary = item.check_names
        checks += [
            s.RedisTotals(
                name=payload,
                type="redis_totals",
                description=f"each location of {item.key} as in {table}",
                key=item.key,
                per="locations",
                per_key="id",
                totals={"tickets": "tickets", "revenue": "revenue"},
                query=sql.SQL(LOCATIONS_KEPT).format(**names).as_string(conn),
                tolerance=s.Tolerance(abs=CENT),
            ),
            s.RedisTotals(
                name=summary,
                type="redis_totals",
                description=f"each year of {item.key}:summary as in {table}",
                key=f"{item.key}:summary",
                per="years",
                totals={"tickets": "tickets", "revenue": "revenue", "locations": "locations"},
                query=sql.SQL(PER_YEAR).format(**names).as_string(conn),
                tolerance=s.Tolerance(abs=CENT),
            ),
        ]
    return s.Suite(dataset="push_cache", description="the published payloads against PostgreSQL", checks=checks)


def verify(published: list[Published], years: list[int], min_tickets: int, run_id: str) -> list:
    """The check engine's verdict on what Redis holds against PostgreSQL (a list of CheckResult)."""
    from opsbook.checks import run_suite
    from opsbook.stores import postgres
    from opsbook.windows import Years

    with postgres.connection(autocommit=True, purpose=f"push cache {run_id}") as conn:
        suite = checks_suite(conn, published)
        values = {"years": years, "min_tickets": min_tickets}
        return run_suite(conn, None, suite, Years(tuple(years)), params=values).results
