"""Compare the lake (Parquet) with PostgreSQL, key by key, in DuckDB over Arrow.

Both sides are read as Arrow (the lake's Parquet files; PostgreSQL through ADBC's binary
COPY), then joined on the key in DuckDB. A row hash settles identical rows; the others are
compared column by column with each float column's tolerance. Every difference gets a class:

- ``missing in postgres``: the key is in the lake only;
- ``missing in lake``: the key is in PostgreSQL only;
- ``value drift``: both have the key and some value differs beyond tolerance (NULL vs a value
  counts), the columns are named;
- ``timestamp shifted``: a row missing on each side with the same intersection and values, and
  timestamps a whole number of hours apart (a time-zone mistake); the pair is one difference;
- ``duplicate key``: a key more than once on one side.

Timestamps are compared in UTC. Above ``row_limit`` rows, the comparison first pushes
bucketed checksums down to both sides (PostgreSQL computes its own; DuckDB reads the Parquet
files), and fetches only the buckets whose count or checksum differ.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.dualwrite import arrow_schema, join, lake_root

CLASSES = ("missing in postgres", "missing in lake", "value drift", "timestamp shifted", "duplicate key")
BUCKETS = 4096
QUANTUM = 10_000  # floats are compared in checksums at 1e-4 (finer tolerances are settled row by row)


@dataclass
class Comparison:
    days: list[dt.date]
    lake_rows: dict[dt.date, int]
    postgres_rows: dict[dt.date, int]
    differences: list[dict[str, Any]]  # one per key: class, day, key, columns, lake / postgres values
    method: str  # "hash join" or "bucketed checksums (N of M buckets fetched)"
    lake_files: int = 0
    fetched_rows: int = 0

    def counts(self) -> dict[str, int]:
        found = {c: 0 for c in CLASSES}
        for d in self.differences:
            found[d["class"]] += 1
        return found

    def keys(self, klass: str | None = None) -> set[tuple]:
        return {d["key"] for d in self.differences if klass is None or d["class"] == klass}


@dataclass
class Window:
    first: dt.date
    last: dt.date  # inclusive

    @property
    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(self.first, dt.time(), dt.UTC)
        return start, dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), dt.UTC)


def parse_window(text: str) -> Window:
    """``2025-11-01..2025-11-07`` (both days included) or a single ``2025-11-03``."""
    first, sep, last = text.partition("..")
    try:
        start = dt.date.fromisoformat(first.strip())
        end = dt.date.fromisoformat(last.strip()) if sep else start
    except ValueError:
        raise ValueError(f"{text!r} is not a day window (expected e.g. 2025-11-01..2025-11-07)") from None
    if end < start:
        raise ValueError(f"window {text!r} ends before it starts")
    if (end - start).days > 3660:
        raise ValueError(f"window {text!r} is longer than ten years")
    return Window(start, end)


# --- reading ---------------------------------------------------------------------------------


def lake_files(spec: DatasetSpec, window: Window, root: str | None = None) -> list[str]:
    root = root or lake_root()
    found = []
    for day in window.days:
        prefix = join(root, spec.name, f"date={day.isoformat()}")
        if prefix.startswith("gs://"):
            from opsbook.stores import objects

            found.extend(o.uri for o in objects.list_objects(prefix) if o.uri.endswith(".parquet"))
        else:
            from pathlib import Path

            found.extend(str(p) for p in sorted(Path(prefix).glob("*.parquet")))
    return found


def read_lake(spec: DatasetSpec, files: list[str]) -> pa.Table:
    """Every row of the lake files, with the file each came from (Arrow)."""
    import pyarrow.parquet as pq

    schema = arrow_schema(spec)
    parts = []
    for uri in files:
        if uri.startswith("gs://"):
            from opsbook.stores import objects

            with objects.open_read(uri) as handle:
                table = pq.read_table(pa.BufferReader(handle.read()))
        else:
            table = pq.read_table(uri)
        table = table.select(spec.column_names).cast(schema)
        parts.append(table.append_column("_file", pa.array([uri.rsplit("/", 1)[-1]] * table.num_rows, pa.string())))
    if not parts:
        return schema.empty_table().append_column("_file", pa.array([], pa.string()))
    return pa.concat_tables(parts)


def read_postgres(spec: DatasetSpec, window: Window, where: str = "") -> pa.Table:
    """The window's rows from PostgreSQL as Arrow, through ADBC (binary COPY), not pd.read_sql."""
    import adbc_driver_postgresql.dbapi as adbc

    from opsbook import services
    from opsbook.stores import postgres

    start, end = window.bounds()
    column = spec.partition.column
    query = sql.SQL("SELECT {} FROM {} WHERE {} >= {} AND {} < {}{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names),
        sql.Identifier(spec.table),
        sql.Identifier(column),
        sql.Literal(start),
        sql.Identifier(column),
        sql.Literal(end),
        sql.SQL(f" AND ({where})" if where else ""),
    )
    with postgres.connection(purpose="reconcile") as render:
        text = query.as_string(render)
    with adbc.connect(postgres.normalize_url(services.database_url())) as conn, conn.cursor() as cur:
        cur.execute(text)
        table = cur.fetch_arrow_table()
    return table.cast(arrow_schema(spec))


# --- comparing -------------------------------------------------------------------------------


def _float_columns(spec: DatasetSpec) -> list[str]:
    return [c.name for c in spec.columns if c.type == "double"]


def _differs(spec: DatasetSpec, column: str) -> str:
    """SQL (DuckDB) true when the column differs between l and p beyond its tolerance."""
    col = spec.column(column)
    a, b = f'l."{column}"', f'p."{column}"'
    if col.type == "double":
        return (
            f"(({a} IS NULL) <> ({b} IS NULL) OR abs({a} - {b}) > "
            f"greatest({col.abs_tolerance!r}, {col.rel_tolerance!r} * abs({b})))"
        )
    return f"({a} IS DISTINCT FROM {b})"


def compare_tables(spec: DatasetSpec, lake: pa.Table, pg: pa.Table) -> list[dict[str, Any]]:
    """Every difference between the two Arrow tables, classified (see the module docstring)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("lake_raw", lake)
    con.register("pg_raw", pg)
    key = ", ".join(f'"{k}"' for k in spec.key)
    values = [c for c in spec.column_names if c not in spec.key]
    day_col = spec.partition.column
    differences: list[dict[str, Any]] = []

    for side, name in (("lake", "lake_raw"), ("postgres", "pg_raw")):
        for row in _rows(
            con, f"SELECT {key}, count(*) AS n FROM {name} GROUP BY {key} HAVING count(*) > 1 ORDER BY {key}"
        ):
            k = tuple(row[: len(spec.key)])
            differences.append(_difference(spec, "duplicate key", k, side=side, detail=f"{row[-1]} rows in {side}"))

    # one row per key on each side (duplicates are reported above), with a hash of the values
    hashed = ", ".join(f'"{c}"' for c in values)
    for name in ("lake", "pg"):
        con.execute(
            f"CREATE TEMP TABLE {name} AS SELECT * EXCLUDE (_rn), hash({hashed}) AS _h FROM "
            f"(SELECT *, row_number() OVER (PARTITION BY {key}) AS _rn FROM {name}_raw) WHERE _rn = 1"
        )
    on = " AND ".join(f'l."{k}" = p."{k}"' for k in spec.key)
    drift_cols = " , ".join(f"CASE WHEN {_differs(spec, c)} THEN '{c}' END" for c in values)
    l_keys = ", ".join(f'l."{k}"' for k in spec.key)
    l_vals = ", ".join(f'l."{c}"' for c in values)
    p_vals = ", ".join(f'p."{c}"' for c in values)
    drift = _rows(
        con,
        f"SELECT {l_keys}, list_filter([{drift_cols}], lambda x: x IS NOT NULL) AS cols, {l_vals}, {p_vals} "
        f"FROM lake l JOIN pg p ON {on} WHERE l._h <> p._h",
    )
    n_key, n_val = len(spec.key), len(values)
    for row in drift:
        cols = row[n_key]
        if not cols:
            continue  # different bits, within every tolerance
        k = tuple(row[:n_key])
        lake_vals = dict(zip(values, row[n_key + 1 : n_key + 1 + n_val], strict=True))
        pg_vals = dict(zip(values, row[n_key + 1 + n_val :], strict=True))
        differences.append(_difference(spec, "value drift", k, columns=list(cols), lake=lake_vals, postgres=pg_vals))

    only_lake = con.sql(f"SELECT l.* EXCLUDE (_h, _file) FROM lake l ANTI JOIN pg p ON {on}").to_arrow_table()
    only_pg = con.sql(f"SELECT p.* EXCLUDE (_h) FROM pg p ANTI JOIN lake l ON {on}").to_arrow_table()
    paired_lake, paired_pg = set(), set()
    if only_lake.num_rows and only_pg.num_rows and day_col in spec.key:
        con.register("only_lake", only_lake)
        con.register("only_pg", only_pg)
        others = [k for k in spec.key if k != day_col]
        same = " AND ".join(
            [*(f'l."{k}" = p."{k}"' for k in others), *(f'l."{c}" IS NOT DISTINCT FROM p."{c}"' for c in values)]
        )
        lt, pt = f'l."{day_col}"', f'p."{day_col}"'
        shifts = _rows(
            con,
            f"SELECT {l_keys}, {pt} FROM only_lake l JOIN only_pg p ON {same} "
            f"WHERE {lt} <> {pt} AND (epoch({pt}) - epoch({lt})) % 3600 = 0 "
            f"AND abs(epoch({pt}) - epoch({lt})) <= 14 * 3600",
        )
        for row in shifts:
            k = tuple(row[: len(spec.key)])
            moved = tuple(row[len(spec.key)] if c == day_col else v for c, v in zip(spec.key, k, strict=True))
            if k in paired_lake or moved in paired_pg:
                continue
            paired_lake.add(k)
            paired_pg.add(moved)
            hours = (row[len(spec.key)] - k[spec.key.index(day_col)]).total_seconds() / 3600
            differences.append(
                _difference(
                    spec,
                    "timestamp shifted",
                    k,
                    detail=f"postgres has it {hours:+g} h off, at {row[len(spec.key)].isoformat()}",
                    shifted_to=moved,
                )
            )
    for table, klass, paired, side in (
        (only_lake, "missing in postgres", paired_lake, "lake"),
        (only_pg, "missing in lake", paired_pg, "postgres"),
    ):
        for row in table.to_pylist():
            k = tuple(row[c] for c in spec.key)
            if k not in paired:
                differences.append(_difference(spec, klass, k, **{side: {c: row[c] for c in values}}))
    con.close()
    order = {c: i for i, c in enumerate(CLASSES)}
    return sorted(differences, key=lambda d: (d["day"], order[d["class"]], d["key"]))


def _rows(con, query: str) -> list[tuple]:
    """Result rows as tuples, converted through Arrow (timestamps with time zone included)."""
    table = con.sql(query).to_arrow_table()
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def _difference(spec: DatasetSpec, klass: str, key: tuple, **extra) -> dict[str, Any]:
    moment = key[spec.key.index(spec.partition.column)] if spec.partition.column in spec.key else None
    day = moment.astimezone(dt.UTC).date() if isinstance(moment, dt.datetime) else moment
    return {"class": klass, "day": day, "key": key, **extra}


def compare(spec: DatasetSpec, window: Window, row_limit: int = 5_000_000, buckets: int = BUCKETS) -> Comparison:
    """Compare lake and PostgreSQL over the window (the bucketed path above ``row_limit`` rows)."""
    files = lake_files(spec, window)
    lake_counts, pg_counts = _day_counts(spec, window, files)
    total = sum(lake_counts.values()) + sum(pg_counts.values())
    if total <= row_limit or any(f.startswith("gs://") for f in files) or not _bucketable(spec):
        lake = read_lake(spec, files)
        pg = read_postgres(spec, window)
        return Comparison(
            window.days,
            lake_counts,
            pg_counts,
            compare_tables(spec, lake, pg),
            "hash join",
            len(files),
            lake.num_rows + pg.num_rows,
        )
    return _compare_bucketed(spec, window, files, lake_counts, pg_counts, buckets)


def _day_counts(spec: DatasetSpec, window: Window, files: list[str]) -> tuple[dict, dict]:
    from opsbook.stores import postgres

    col = spec.partition.column
    lake: dict[dt.date, int] = {}
    local = [f for f in files if not f.startswith("gs://")]
    if local:
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for day, n in con.execute(
            f'SELECT "{col}"::DATE, count(*) FROM read_parquet(?) GROUP BY 1', [local]
        ).fetchall():
            lake[day] = n
        con.close()
    remote = [f for f in files if f.startswith("gs://")]
    if remote:
        import pyarrow.compute as pc

        table = read_lake(spec, remote)
        for day, n in zip(*_value_counts(pc.cast(table.column(col), pa.date32())), strict=True):
            lake[day] = lake.get(day, 0) + n
    start, end = window.bounds()
    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT ({c} AT TIME ZONE 'UTC')::date, count(*) FROM {t} WHERE {c} >= %s AND {c} < %s GROUP BY 1"
            ).format(c=sql.Identifier(col), t=sql.Identifier(spec.table)),
            (start, end),
        ).fetchall()
    return lake, dict(rows)


def _value_counts(array) -> tuple[list, list]:
    import pyarrow.compute as pc

    counted = pc.value_counts(array)
    return counted.field("values").to_pylist(), counted.field("counts").to_pylist()


# --- the bucketed path -----------------------------------------------------------------------


def _bucketable(spec: DatasetSpec) -> bool:
    kinds = {spec.column(k).type for k in spec.key}
    return kinds <= {"integer", "bigint", "timestamptz"}


def _bucket_sql(spec: DatasetSpec, dialect: str, buckets: int) -> str:
    parts = []
    for k in spec.key:
        if spec.column(k).type == "timestamptz":
            parts.append(
                f'(extract(epoch from "{k}")::bigint / 60)' if dialect == "pg" else f'(epoch("{k}")::BIGINT // 60)'
            )
        else:
            parts.append(f'"{k}"::bigint')
    expr = parts[0]
    for p in parts[1:]:
        expr = f"({expr} * 1000003 + {p})"
    if dialect == "pg":  # mod(), not %: the text also goes through psycopg's placeholders
        return f"mod(mod({expr}, {buckets}) + {buckets}, {buckets})"
    return f"((({expr}) % {buckets}) + {buckets}) % {buckets}"


def _row_text_sql(spec: DatasetSpec, dialect: str) -> str:
    """A canonical text of a row that PostgreSQL and DuckDB write alike (integers only)."""
    parts = []
    for c in spec.columns:
        name = f'"{c.name}"'
        if c.type == "double":
            value = (
                f"floor({name} * {QUANTUM} + 0.5)::bigint::text"
                if dialect == "pg"
                else f"floor({name} * {QUANTUM} + 0.5)::BIGINT::VARCHAR"
            )
        elif c.type == "timestamptz":
            value = (
                f"(extract(epoch from {name}) * 1000000)::bigint::text"
                if dialect == "pg"
                else f"epoch_us({name})::VARCHAR"
            )
        else:
            value = f"{name}::text" if dialect == "pg" else f"{name}::VARCHAR"
        parts.append(f"coalesce({value}, 'N')")
    return " || '|' || ".join(parts)


def _checksum_sql(spec: DatasetSpec, dialect: str) -> str:
    text = _row_text_sql(spec, dialect)
    if dialect == "pg":
        return f"('x' || substr(md5({text}), 1, 15))::bit(60)::bigint"
    return f"('0x' || substr(md5({text}), 1, 15))::BIGINT"


def _compare_bucketed(spec: DatasetSpec, window: Window, files, lake_counts, pg_counts, buckets: int) -> Comparison:
    import duckdb

    from opsbook.stores import postgres

    col = spec.partition.column
    start, end = window.bounds()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    lake_sums = {
        (b, n, s)
        for b, n, s in con.execute(
            f"SELECT {_bucket_sql(spec, 'duck', buckets)} AS b, count(*), sum({_checksum_sql(spec, 'duck')}::HUGEINT) "
            f"FROM read_parquet(?) GROUP BY 1",
            [files],
        ).fetchall()
    }
    with postgres.connection(autocommit=True, purpose="reconcile") as conn:
        pg_sums = {
            (b, n, int(s))
            for b, n, s in conn.execute(
                f"SELECT {_bucket_sql(spec, 'pg', buckets)} AS b, count(*), sum({_checksum_sql(spec, 'pg')}::numeric) "
                f'FROM "{spec.table}" WHERE "{col}" >= %s AND "{col}" < %s GROUP BY 1',
                (start, end),
            ).fetchall()
        }
    lake_sums = {(b, n, int(s)) for b, n, s in lake_sums}
    mismatched = sorted({b for b, _, _ in lake_sums ^ pg_sums})
    if not mismatched:
        con.close()
        return Comparison(
            window.days,
            lake_counts,
            pg_counts,
            [],
            f"bucketed checksums (0 of {buckets} buckets fetched)",
            len(files),
            0,
        )
    wanted = ", ".join(map(str, mismatched))
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    lake = con.sql(
        f"SELECT *, parse_filename(filename) AS _file FROM read_parquet([{listed}], filename = true) "
        f"WHERE {_bucket_sql(spec, 'duck', buckets)} IN ({wanted})"
    ).to_arrow_table()
    con.close()
    lake = lake.select([*spec.column_names, "_file"]).cast(arrow_schema(spec).append(pa.field("_file", pa.string())))
    pg = read_postgres(spec, window, where=f"{_bucket_sql(spec, 'pg', buckets)} IN ({', '.join(map(str, mismatched))})")
    differences = compare_tables(spec, lake, pg)
    return Comparison(
        window.days,
        lake_counts,
        pg_counts,
        differences,
        f"bucketed checksums ({len(mismatched)} of {buckets} buckets fetched)",
        len(files),
        lake.num_rows + pg.num_rows,
    )


# --- the archive against the write ledger ----------------------------------------------------


def archive_findings(control, spec: DatasetSpec, window: Window) -> list[dict[str, Any]]:
    """Archive objects against the write ledger: missing objects, pending writes, strays."""
    from opsbook.dualwrite import archive_root
    from opsbook.stores.postgres import dicts

    root = archive_root()
    present: set[str] = set()
    for day in window.days:
        prefix = join(root, "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}")
        if prefix.startswith("gs://"):
            from opsbook.stores import objects

            try:
                present.update(o.uri for o in objects.list_objects(prefix))
            except Exception as exc:  # the archive cannot be read: that is a finding, not a crash
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                return [
                    {
                        "batch": "",
                        "finding": "archive unreachable",
                        "attempts": None,
                        "last error": f"{type(exc).__name__}: {first}"[:300],
                        "object": prefix,
                    }
                ]
        else:
            from pathlib import Path

            present.update(join(prefix, p.name) for p in Path(prefix).glob("*.json.gz"))
    entries = dicts(
        control,
        "SELECT batch_id, status, attempts, last_error, last_day FROM opsbook.writes WHERE dataset = %s "
        "AND target = 'archive' AND last_day BETWEEN %s AND %s ORDER BY batch_id",
        (spec.name, window.first, window.last),
    )
    findings, expected = [], set()
    for e in entries:
        day = e["last_day"]
        uri = join(root, "raw", spec.name, f"{day:%Y}", f"{day:%m}", f"{day:%d}", f"{e['batch_id']}.json.gz")
        expected.add(uri)
        if e["status"] == "pending":
            findings.append(
                {
                    "batch": e["batch_id"],
                    "finding": "archive write pending",
                    "attempts": e["attempts"],
                    "last error": e["last_error"] or "",
                    "object": uri,
                }
            )
        elif uri not in present:
            findings.append(
                {
                    "batch": e["batch_id"],
                    "finding": "archive object missing",
                    "attempts": e["attempts"],
                    "last error": "",
                    "object": uri,
                }
            )
    for uri in sorted(present - expected):
        findings.append(
            {
                "batch": uri.rsplit("/", 1)[-1].removesuffix(".json.gz"),
                "finding": "object not in the ledger",
                "attempts": None,
                "last error": "",
                "object": uri,
            }
        )
    return findings


# --- repair ----------------------------------------------------------------------------------


def repair(spec: DatasetSpec, window: Window, comparison: Comparison, source_of_truth: str) -> dict[str, int]:
    """Re-apply the source of truth to the differing keys only; returns what was done."""
    from opsbook import dualwrite

    done = {"upserted": 0, "deleted": 0, "lake days rewritten": 0}
    if not comparison.differences:
        return done
    if source_of_truth == "lake":
        wanted = {
            d["key"]
            for d in comparison.differences
            if d["class"] in ("missing in postgres", "value drift", "timestamp shifted", "duplicate key")
        }
        extra = {d["key"] for d in comparison.differences if d["class"] == "missing in lake"}
        extra |= {d["shifted_to"] for d in comparison.differences if d["class"] == "timestamp shifted"}
        lake = _dedupe_last(spec, read_lake(spec, lake_files(spec, window)))
        rows = lake.filter(_key_mask(spec, lake, wanted)) if wanted else None
        if rows is not None and rows.num_rows:
            done["upserted"] = dualwrite.write_postgres(spec, rows.select(spec.column_names))
        if extra:
            done["deleted"] = _delete_keys(spec, extra)
        return done
    # postgres is the source of truth: rewrite each affected day of the lake from it
    days = sorted({d["day"] for d in comparison.differences})
    for day in days:
        one = Window(day, day)
        table = read_postgres(spec, one)
        old = lake_files(spec, one)
        uri = join(dualwrite.lake_root(), spec.name, f"date={day.isoformat()}", f"repair-{_stamp()}.parquet")
        dualwrite.put(uri, dualwrite._parquet_bytes(table))
        for stale in old:
            _remove(stale)
        done["lake days rewritten"] += 1
    return done


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")


def _remove(uri: str) -> None:
    if uri.startswith("gs://"):
        from opsbook.stores import objects

        bucket, name = objects.split_uri(uri)
        objects.client().bucket(bucket).blob(name).delete()
    else:
        from pathlib import Path

        Path(uri).unlink(missing_ok=True)


def _dedupe_last(spec: DatasetSpec, table: pa.Table) -> pa.Table:
    """One row per key: the one from the file written last (names sort by time)."""
    import duckdb

    con = duckdb.connect()
    con.register("t", table)
    key = ", ".join(f'"{k}"' for k in spec.key)
    out = con.sql(
        f"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _file DESC) "
        f"AS _rn FROM t) WHERE _rn = 1"
    ).to_arrow_table()
    con.close()
    return out


def _key_mask(spec: DatasetSpec, table: pa.Table, keys: set[tuple]):
    columns = [table.column(k).to_pylist() for k in spec.key]
    return pa.array([tuple(values) in keys for values in zip(*columns, strict=True)])


def _delete_keys(spec: DatasetSpec, keys: set[tuple]) -> int:
    from opsbook.stores import postgres

    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key)
    deleted = 0
    with postgres.connection(purpose="reconcile repair") as conn, conn.transaction(), conn.cursor() as cur:
        for key in sorted(keys):
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(spec.table), where), key)
            deleted += cur.rowcount
    return deleted
