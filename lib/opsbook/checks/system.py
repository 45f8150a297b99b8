"""Checks of the systems around the tables: database size, Redis keys."""

from __future__ import annotations

import gzip
import json

from opsbook.checks import CheckResult, outcome
from opsbook.checks import spec as s


def run_database_size(ctx, check: s.DatabaseSize) -> CheckResult:
    size = ctx.conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    limit = int(check.max_gb * 1024**3)
    too_big = size > limit
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, too_big),
        _gb(size),
        f"at most {check.max_gb:g} GB",
        message=f"the database holds {_gb(size)}, over the {check.max_gb:g} GB limit" if too_big else "",
    )


def _gb(size: int) -> str:
    return f"{size / 1024**3:,.2f} GB" if size >= 1024**3 else f"{size / 1024**2:,.1f} MB"


def decode_payload(raw: bytes):
    """A cached payload: JSON, gzip'd or not."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


def run_redis_key(ctx, check: s.RedisKey) -> CheckResult:
    import redis

    from opsbook import services

    client = redis.Redis.from_url(services.redis_url(), socket_timeout=10)
    try:
        raw = client.get(check.key)
        problems: list[str] = []
        if raw is None:
            return CheckResult(
                check.name,
                check.type,
                check.severity,
                outcome(check, True),
                "missing",
                f"key {check.key} exists",
                engine="Redis",
                message=f"Redis has no key {check.key}",
            )
        ttl = client.ttl(check.key)
        memory = client.memory_usage(check.key)
    finally:
        client.close()
    size = len(raw)
    if check.require_ttl and ttl < 0:
        problems.append("no TTL set")
    if check.min_ttl_seconds is not None and ttl >= 0 and ttl < check.min_ttl_seconds:
        problems.append(f"TTL {ttl}s below {check.min_ttl_seconds}s")
    if check.max_ttl_seconds is not None and ttl > check.max_ttl_seconds:
        problems.append(f"TTL {ttl}s above {check.max_ttl_seconds}s")
    if check.min_bytes is not None and size < check.min_bytes:
        problems.append(f"{size:,} bytes, fewer than {check.min_bytes:,}")
    if check.max_bytes is not None and size > check.max_bytes:
        problems.append(f"{size:,} bytes, more than {check.max_bytes:,}")
    failing = []
    if check.json_schema is not None:
        import jsonschema

        try:
            payload = decode_payload(raw)
        except (ValueError, OSError) as exc:
            problems.append(f"payload is not JSON: {exc}")
        else:
            validator = jsonschema.Draft202012Validator(check.json_schema)
            errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
            for error in errors[:20]:
                failing.append(
                    {"path": "/".join(str(p) for p in error.absolute_path) or "(root)", "problem": error.message[:300]}
                )
            if errors:
                problems.append(f"{len(errors)} schema violation(s)")
    ttl_text = "no expiry" if ttl == -1 else f"TTL {ttl}s"
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, bool(problems)),
        f"{size:,} bytes ({memory:,} in memory), {ttl_text}",
        _expectation(check),
        failing=failing,
        failing_count=len(failing) or None,
        engine="Redis",
        message="; ".join(problems),
    )


def _expectation(check: s.RedisKey) -> str:
    parts = [f"{check.key} exists"]
    if check.require_ttl or check.min_ttl_seconds is not None or check.max_ttl_seconds is not None:
        parts.append(f"TTL in [{check.min_ttl_seconds or 0}, {check.max_ttl_seconds or '∞'}] s")
    if check.min_bytes is not None or check.max_bytes is not None:
        parts.append(f"size in [{check.min_bytes or 0:,}, {check.max_bytes or '∞'}] bytes")
    if check.json_schema is not None:
        parts.append("payload matches the schema")
    return ", ".join(parts)
