"""Publish the map payloads to Redis: tickets, red-light and ASE cameras, per location and year.

Each payload goes under a versioned key (``toronto:map-data:tickets:aggregated:v1``) with a
``:summary`` beside it (totals per year and overall, ``published_at``). Payloads are written to
a staging key first and switched in with RENAME, all in one MULTI/EXEC pipeline, so readers see
the old payload or the new one, never half of one, and never a key missing. Large payloads are
gzip'd; ``ttl_hours`` sets an expiry. A spot-check then reads each payload back, decodes it, and
compares its totals with PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
from dataclasses import dataclass, field

from psycopg import sql
from pydantic import Field

from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.windows import Years, year_list
from opsbook.run.verdict import Verdict

NOTEBOOK = "push_cache.ipynb"
SUMMARY = "Publish the map payloads (tickets, red-light, ASE per location and year) to Redis, switched atomically"
PREFIX = "toronto:map-data"
VERSION = "v1"
# payload name -> (yearly table, location key column)
PAYLOADS = {
    "tickets": ("parking_ticket_yearly_locations", "location"),
    "red-light": ("red_light_yearly_locations", "site_code"),
    "ase": ("ase_yearly_locations", "site_code"),
}


class Params(ProcedureParams):
    """Parameters of ``push_cache``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="the tickets dataset the payloads come from")
    years: Years = Field("2011-2023", description="years in the payloads")
    gzip_over_kb: int = Field(64, ge=0, description="gzip payloads larger than this many KB (0: always)")
    ttl_hours: float = Field(0, ge=0, description="expire the keys after this many hours (0: never)")
    min_tickets: int = Field(1, ge=1, description="leave out locations with fewer tickets over the years")


@dataclass
class Published:
    key: str
    items: int
    bytes: int
    gzipped: bool
    memory: int | None = None
    ttl: int | None = None
    tickets: int = 0
    revenue: float = 0.0
    db_tickets: int = 0
    db_revenue: float = 0.0

    @property
    def matches(self) -> bool:
        return self.tickets == self.db_tickets and abs(self.revenue - self.db_revenue) < 0.005


@dataclass
class Result:
    params: Params
    published: list[Published] = field(default_factory=list)
    published_at: str = ""
    seconds: float = 0.0

    def verdict(self) -> Verdict:
        wrong = [p for p in self.published if not p.matches]
        figures = {
            "keys": len(self.published) * 2,
            "bytes": sum(p.bytes for p in self.published),
            **{p.key.split(":")[2]: p.items for p in self.published},
        }
        if wrong:
            summary = "; ".join(
                f"{p.key}: {p.tickets:,} tickets / {p.revenue:,.2f} in Redis, "
                f"{p.db_tickets:,} / {p.db_revenue:,.2f} in PostgreSQL"
                for p in wrong
            )
            return Verdict.failed(
                f"the published payloads disagree with PostgreSQL: {summary}", figures, "published", CheckFailed
            )
        return Verdict(
            "pass",
            f"published {len(self.published)} payloads at {self.published_at}; each read back matches PostgreSQL",
            figures,
        )


def key_of(name: str) -> str:
    return f"{PREFIX}:{name}:aggregated:{VERSION}"


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


def encode(document: dict, gzip_over_kb: int) -> tuple[bytes, bool]:
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if len(data) > gzip_over_kb * 1024:
        return gzip.compress(data, mtime=0), True
    return data, False


def run(params: Params, run_id: str) -> Result:
    import redis

    from opsbook import services
    from opsbook.checks.system import decode_payload
    from opsbook.errors import ServiceError
    from opsbook.run.redaction import redact_url
    from opsbook.stores import postgres

    t0 = time.monotonic()
    years = year_list(params.years)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result = Result(params, published_at=stamp)
    url = services.redis_url()
    client = redis.Redis.from_url(url, socket_timeout=30)
    with postgres.connection(autocommit=True, purpose="push cache") as conn:
        built = {name: build_payload(conn, name, years, params.min_tickets) for name in PAYLOADS}
    ttl = int(params.ttl_hours * 3600) or None
    pipe = client.pipeline(transaction=True)  # MULTI/EXEC: all keys switch together
    for name, (payload, summary) in built.items():
        summary["published_at"] = payload["published_at"] = stamp
        for key, document in ((key_of(name), payload), (f"{key_of(name)}:summary", summary)):
            data, zipped = encode(document, params.gzip_over_kb)
            staging = f"{key}:staging:{run_id}"
            pipe.set(staging, data, ex=ttl)
            pipe.rename(staging, key)  # atomic replace: readers never see the key missing
            if key == key_of(name):
                result.published.append(
                    Published(
                        key,
                        len(payload["locations"]),
                        len(data),
                        zipped,
                        tickets=summary["tickets"],
                        revenue=summary["revenue"],
                    )
                )
    try:
        pipe.execute()
    except redis.RedisError as exc:
        raise ServiceError(
            f"Redis at {redact_url(url)} failed while publishing the payloads ({type(exc).__name__}: {exc}); "
            "the keys switch in one MULTI/EXEC transaction, so they hold either all the previous payloads or "
            "all the new ones"
        ) from exc
    # read back: decode each payload and compare its totals with PostgreSQL
    with postgres.connection(autocommit=True, purpose="push cache") as conn:
        for item, name in zip(result.published, PAYLOADS, strict=True):
            table, _ = PAYLOADS[name]
            document = decode_payload(client.get(item.key))
            item.tickets = sum(p["tickets"] for p in document["locations"])
            item.revenue = round(sum(p["revenue"] for p in document["locations"]), 2)
            db = conn.execute(
                sql.SQL(
                    "SELECT coalesce(sum(t), 0), coalesce(sum(r), 0) FROM (SELECT sum(ticket_count) t, "
                    "sum(total_revenue) r FROM {} WHERE year = ANY(%s) GROUP BY {} HAVING sum(ticket_count) >= %s) x"
                ).format(sql.Identifier(table), sql.Identifier(PAYLOADS[name][1])),
                (years, params.min_tickets),
            ).fetchone()
            item.db_tickets, item.db_revenue = int(db[0]), float(db[1])
            item.memory = client.memory_usage(item.key)
            item.ttl = client.ttl(item.key)
    client.close()
    result.seconds = time.monotonic() - t0
    return result


def show_published(result: Result):
    from opsbook import report

    rows = [
        {
            "key": p.key,
            "locations": p.items,
            "bytes": p.bytes,
            "gzip": p.gzipped,
            "memory usage": p.memory,
            "ttl (s)": p.ttl if p.ttl and p.ttl > 0 else "none",
            "tickets in Redis": p.tickets,
            "tickets in PostgreSQL": p.db_tickets,
            "revenue in Redis": p.revenue,
            "revenue in PostgreSQL": p.db_revenue,
            "status": "pass" if p.matches else "fail",
        }
        for p in result.published
    ]
    return report.table(
        rows,
        caption=f"Published at {result.published_at} (each with a :summary key beside it)",
        status_column="status",
        element_id="published",
    )
