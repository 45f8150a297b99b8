"""Checks of the systems around the tables: database size, free disk, Redis keys and payloads."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from opsbook.checks import SAMPLE_ROWS, CheckResult, outcome, register
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


def _missing_key(check, expected: str) -> CheckResult:
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, True),
        "missing",
        expected,
        engine="Redis",
        message=f"Redis has no key {check.key}",
    )


def run_redis_key(ctx, check: s.RedisKey) -> CheckResult:
    from opsbook.stores import redis as redis_store

    client = redis_store.client()
    try:
        raw = client.get(check.key)
        problems: list[str] = []
        if raw is None:
            return _missing_key(check, f"key {check.key} exists")
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


# --- free disk ---------------------------------------------------------------------------------


def disk_locations(conn) -> tuple[list[tuple[str, Path]], list[str]]:
    """Where free disk can be measured from this host: ``([(what, path)], [what could not be seen, why])``.

    The database's data directory when the database runs here (the embedded one, or a server on
    localhost or a local socket whose ``data_directory`` this role may read), and the lake when
    it is a folder.
    """
    from opsbook import config, services
    from opsbook.stores import uri

    seen, unseen = [], []
    if services.database_is_embedded():
        seen.append(("database (embedded)", services.embedded_data_dir()))
    elif conn.info.host in ("localhost", "127.0.0.1", "::1") or conn.info.host.startswith("/"):
        try:
            folder = conn.execute("SHOW data_directory").fetchone()[0]
        except Exception:  # the role may not read server settings
            unseen.append(f"database: this role may not read data_directory on {conn.info.host}")
        else:
            seen.append((f"database ({conn.info.host})", Path(folder)))
    else:
        unseen.append(f"database: it runs on {conn.info.host}, not on this host")
    lake = config.lake_url()
    if uri.is_remote(lake):
        unseen.append(f"lake: {lake} is object storage (no disk to fill)")
    else:
        seen.append(("lake", Path(lake)))
    return seen, unseen


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_free_disk(ctx, check: s.FreeDisk) -> CheckResult:
    seen, unseen = disk_locations(ctx.conn)
    rows, low = [], []
    for what, path in seen:
        try:
            free = shutil.disk_usage(_existing(path)).free
        except OSError as exc:
            unseen.append(f"{what}: {path}: {exc.strerror or exc}")
            continue
        rows.append({"location": what, "path": str(path), "free": _gb(free)})
        if free < check.min_gb * 1024**3:
            low.append(f"{what} ({path}) has {_gb(free)} free")
    measured = "; ".join(f"{r['location']}: {r['free']} free" for r in rows) or "nothing"
    notes = low + ([f"not measured: {'; '.join(unseen)}"] if unseen else [])
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, bool(low)),
        measured,
        f"at least {check.min_gb:g} GB free where the data lives",
        failing=rows if low else [],
        failing_count=len(low) if low else None,
        engine="this host",
        message="; ".join(notes),
    )


# --- a payload's totals against PostgreSQL -----------------------------------------------------


def run_redis_totals(ctx, check: s.RedisTotals) -> CheckResult:
    from opsbook.stores import redis as redis_store
    from opsbook.stores.postgres import dicts

    client = redis_store.client()
    try:
        raw = client.get(check.key)
    finally:
        client.close()
    per = f" per {check.per}" + (f" ({check.per_key})" if check.per_key else "") if check.per else ""
    expected_text = f"{', '.join(check.totals)}{per} of {check.key} as in PostgreSQL"
    if raw is None:
        return _missing_key(check, expected_text)
    document = decode_payload(raw)
    rows = dicts(ctx.conn, check.query, ctx.params or None)
    if check.per:
        groups = _dig(document, check.per) or {}
        if check.per_key:  # a list of objects, each naming its group
            groups = {str(item.get(check.per_key)): item for item in groups if isinstance(item, dict)}
        database = {str(r["key"]): r for r in rows}
        pairs = [(k, groups.get(k) or {}, database.get(k) or {}) for k in sorted(set(groups) | set(database))]
    else:
        pairs = [("all", document, rows[0] if rows else {})]
    failing = []
    for group, have, want in pairs:
        for field_name, column in check.totals.items():
            got, expected = _dig(have, field_name), want.get(column)
            if got is None or expected is None or not check.tolerance.allows(float(got), float(expected)):
                failing.append({"group": group, "total": field_name, "in Redis": got, "in PostgreSQL": expected})
    compared = len(pairs) * len(check.totals)
    shown = "; ".join(
        f"{f['group']} {f['total']}: {f['in Redis']} in Redis, {f['in PostgreSQL']} in PostgreSQL" for f in failing[:10]
    )
    return CheckResult(
        check.name,
        check.type,
        check.severity,
        outcome(check, bool(failing)),
        f"{compared - len(failing)} of {compared} totals match",
        expected_text,
        failing=failing[:SAMPLE_ROWS],
        failing_count=len(failing) or None,
        engine="Redis and PostgreSQL",
        message=f"{check.key}: {len(failing)} of {compared} totals differ: {shown}" if failing else "",
    )


def _dig(document, path: str):
    """``"years.2016.tickets"`` inside a decoded payload (None when absent)."""
    for part in path.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


register("database_size", run=run_database_size)
register("free_disk", run=run_free_disk)
register("redis_key", run=run_redis_key)
register("redis_totals", run=run_redis_totals)
