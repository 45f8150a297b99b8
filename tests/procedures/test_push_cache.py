"""push_cache against a real PostgreSQL and Redis: versioned keys, atomic switch, read-back check."""

import gzip
import json

import pytest
import redis
from helpers import call, load_and_aggregate, run_cli

from opsbook.toronto import cache

pytestmark = pytest.mark.notebook
KEY = "toronto:map-data:tickets:aggregated:v1"


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    for key in c.scan_iter("toronto:map-data:*"):
        c.delete(key)
    yield c
    c.close()


def decode(raw: bytes) -> dict:
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def test_payloads_are_published_and_match_postgres(db, demo_dir, client):
    load_and_aggregate(db, demo_dir, "2016-2017")
    done = run_cli("push_cache", "-p", "years=2016-2017", "-p", "gzip_over_kb=16", "-p", "ttl_hours=2", "--json")
    assert done.code == 0, done.stderr
    keys = {k.decode() for k in client.scan_iter("toronto:map-data:*")}
    assert keys == {cache.key_of(n) for n in cache.PAYLOADS} | {f"{cache.key_of(n)}:summary" for n in cache.PAYLOADS}
    raw = client.get(KEY)
    assert raw[:2] == b"\x1f\x8b"  # large: gzip'd
    payload = decode(raw)
    summary = decode(client.get(f"{KEY}:summary"))
    tickets = db.execute(
        "SELECT count(*) FROM parking_tickets WHERE date_of_infraction >= '2016-01-01' "
        "AND date_of_infraction < '2018-01-01'"
    ).fetchone()[0]
    assert summary["tickets"] == sum(p["tickets"] for p in payload["locations"]) == tickets
    assert set(summary["years"]) == {"2016", "2017"}
    assert payload["published_at"] == summary["published_at"]
    assert 0 < client.ttl(KEY) <= 7200
    assert not list(client.scan_iter("*:staging:*"))  # every staging key was switched in

    # a second push replaces the payloads in place: no staging key left, new stamp
    again = run_cli("push_cache", "-p", "years=2017", "--json")
    assert again.code == 0
    assert set(decode(client.get(f"{KEY}:summary"))["years"]) == {"2017"}
    assert client.ttl(KEY) == -1  # no ttl asked this time


def test_a_payload_that_disagrees_fails_the_check(db, demo_dir, client, monkeypatch):
    load_and_aggregate(db, demo_dir, "2017")
    original = cache.build_payload

    def dropped_location(conn, name, years, min_tickets):
        payload, summary = original(conn, name, years, min_tickets)
        if name == "tickets":
            payload["locations"] = payload["locations"][1:]  # what a broken build would publish
        return payload, summary

    monkeypatch.setattr(cache, "build_payload", dropped_location)
    result = call("push_cache", years="2017")
    verdict = result.verdict()
    assert verdict.status == "fail" and KEY in verdict.summary


def test_each_location_and_each_year_is_checked(db, demo_dir, client, monkeypatch):
    load_and_aggregate(db, demo_dir, "2017")
    original = cache.build_payload

    def broken(conn, name, years, min_tickets):
        payload, summary = original(conn, name, years, min_tickets)
        if name == "tickets":
            payload["locations"][0]["tickets"] += 1  # one location off
        if name == "red-light":
            summary["years"]["2017"]["locations"] -= 1  # a year's summary off
        return payload, summary

    monkeypatch.setattr(cache, "build_payload", broken)
    result = call("push_cache", years="2017")
    status = {c.name: c for c in result.checks}
    assert {n: c.status for n, c in status.items()} == {
        "tickets_payload": "fail",
        "tickets_summary": "pass",
        "red_light_payload": "pass",
        "red_light_summary": "fail",
        "ase_payload": "pass",
        "ase_summary": "pass",
    }
    (off,) = status["tickets_payload"].failing
    assert off["total"] == "tickets" and off["in Redis"] == off["in PostgreSQL"] + 1
    (year,) = status["red_light_summary"].failing
    assert (year["group"], year["total"]) == ("2017", "locations") and year["in Redis"] == year["in PostgreSQL"] - 1
    verdict = result.verdict()
    assert verdict.status == "fail" and KEY in verdict.summary
    assert f"{cache.key_of('red-light')}:summary" in verdict.summary
    assert [result.status_of(p) for p in result.published] == ["fail", "fail", "pass"]
