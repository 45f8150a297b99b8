"""Toronto parking tickets: load the City's files into PostgreSQL, one year partition at a time.

For each year: stream every CSV part of the year's files through the checker, COPY the good
rows into a fresh table, then swap it in for the year's partition and replace the year's
quarantined rows, with its ledger entry, in one transaction. A failure anywhere rolls the
transaction back: the year keeps its previous contents. A year whose files, spec and table are
unchanged since its last load is verified and skipped (unless forced).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from opsbook.datasets import DatasetSpec
from opsbook.errors import CheckFailed, LockHeld, OpsbookError, SourceError
from opsbook.history import ledger, locks, schema
from opsbook.sources import files
from opsbook.stores import postgres
from opsbook.stores.postgres import ident
from opsbook.toronto import intake

if TYPE_CHECKING:
    from opsbook.sources import city_csv

STEP = "load"
# bump when the loader's output for the same input changes: it invalidates "unchanged" skips
LOADER_VERSION = "2"  # 2: mojibake and NUL values quarantined by field; a stray quote swallows no line
REJECT_SAMPLE = 20


def some(names, limit: int = 8) -> str:
    """A few names, and how many more."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return (shown + f" and {len(names) - limit} more") if len(names) > limit else (shown or "none")


@dataclass
class YearResult:
    year: int
    status: str  # loaded | unchanged | failed | rejected-too-many | refused (see intake)
    files: list[str] = field(default_factory=list)
    parts: list[city_csv.PartStats] = field(default_factory=list)
    rows: int = 0
    rejected: int = 0
    previous_rows: int | None = None
    reason: str | None = None  # why the year was loaded (again); None when it was unchanged
    seconds: float = 0.0
    error: str | None = None
    error_type: type | None = None  # the OpsbookError class that failed the year (its exit code)
    reject_reasons: Counter = field(default_factory=Counter)
    reject_sample: list[city_csv.Reject] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return self.rows + self.rejected

    @property
    def encodings(self) -> str:
        return ", ".join(sorted({p.encoding for p in self.parts})) or "-"


def params_hash(spec: DatasetSpec) -> str:
    return hashlib.sha256(f"{spec.fingerprint()}:{LOADER_VERSION}".encode()).hexdigest()[:16]


def input_fingerprint(year_files: list[files.SourceFile]) -> list[dict]:
    """What decides whether a year's input changed: each file's name, size and content digest."""
    return [{"name": f.name, "size": f.size, "digest": files.content_digest(f)} for f in year_files]


@dataclass(frozen=True)
class LoadJob:
    """What loading years of a dataset needs (picklable: pool and Dask workers get one)."""

    spec: DatasetSpec
    found: files.SourcePlan
    source: str  # what the ledger records as the input's origin: a folder, a gs:// prefix, a stand-in
    force: bool = False
    max_rejected_ratio: float = 0.01
    max_shrink_ratio: float = 0.10  # a year losing a larger share of its rows is refused...
    allow_shrink: bool = False  # ...unless this says the loss is intended

    @property
    def years(self) -> list[int]:
        return self.found.years


def plan(
    spec: DatasetSpec,
    location: str,
    years,
    source: str,
    force: bool,
    max_rejected_ratio: float,
    max_shrink_ratio: float = 0.10,
    allow_shrink: bool = False,
) -> LoadJob:
    """Find the files of each year in ``location``; refuse (SourceError) when a year has none."""
    from opsbook.windows import format_years

    if spec.rejected_table is None or spec.partition.by != "year":
        raise SourceError(
            f"dataset {spec.name!r} is not loaded from City files (no quarantine table or yearly partitions)"
        )
    found = files.discover(location, spec, years)
    if not found.years:
        raise SourceError(f"no {spec.title or spec.name} file in {location}: nothing to load")
    if found.missing_years:
        count = sum(len(f) for f in found.found.values())
        held = (
            f"The folder holds {count} file(s) for the years {format_years(found.found)}: "
            f"{some(f.name for fs in found.found.values() for f in fs)}"
            if count
            else f"The folder holds no {spec.title or spec.name} file of any year"
        )
        other = f"; other files there: {some(found.ignored)}" if found.ignored else " and nothing else"
        raise SourceError(
            f"no {spec.title or spec.name} file for {format_years(found.missing_years)} in {location}: "
            f"nothing was loaded. {held}{other}"
        )
    return LoadJob(spec, found, source, force, max_rejected_ratio, max_shrink_ratio, allow_shrink)


def load_years(job: LoadJob, run_id: str, progress=None) -> list[YearResult]:
    """Load every year of the job; one failing year does not stop the others.

    ``progress(message, transient=False)`` is told when each year starts (transient) and ends.
    """
    notify = progress or (lambda message, transient=False: None)
    control = postgres.connect(autocommit=True, purpose=f"load {run_id}")
    try:
        prepare(control, job.spec)
        results = []
        for index, year in enumerate(job.years, 1):
            count = len(job.found.found[year])
            notify(f"{year}: loading ({index}/{len(job.years)}, {count} file(s))...", transient=True)
            if control.closed or control.broken:  # the server ended the session: the next year gets a new one
                control.close()
                control = postgres.connect(autocommit=True, purpose=f"load {run_id}")
            result = load_year(control, job, year, run_id)
            notify(
                f"{year} ({index}/{len(job.years)}): {result.status}, {result.rows:,} rows, "
                f"{result.rejected:,} quarantined, "
                f"{result.seconds:.1f}s" + (f" ({result.error})" if result.error else "")
            )
            results.append(result)
    finally:
        postgres.close(control)
    return results


def prepare(control, spec: DatasetSpec) -> None:
    """The run history and the dataset's tables exist (idempotent)."""
    schema.ensure_schema(control)
    postgres.ensure_dataset_tables(control, spec)


def load_year(control, job: LoadJob, year: int, run_id: str) -> YearResult:
    """Load one year (or verify it unchanged), holding the year's lock; a data or service
    problem fails the year (its result says why), a bug raises."""
    spec = job.spec
    year_files = job.found.found[year]
    t0 = time.monotonic()
    result = YearResult(year, "failed", files=[f.name for f in year_files])
    lock_key = locks.partition_lock(STEP, spec.name, str(year))
    try:
        locks.try_lock(control, lock_key, f"run {run_id}")
    except LockHeld as exc:
        result.error = str(exc)
        raise
    try:
        fingerprint = input_fingerprint(year_files)
        phash = params_hash(spec)
        previous = ledger.get(control, spec.name, str(year), STEP)
        result.previous_rows = previous.rows if previous else None
        result.reason = "force=true" if job.force else _changed_since(control, spec, year, previous, phash, fingerprint)
        if result.reason is None:
            result.status = "unchanged"
            result.rows, result.rejected = previous.rows or 0, previous.rejected or 0
            result.reject_reasons, result.reject_sample = _stored_rejects(control, spec, year)
            return result
        ledger.running(control, spec.name, str(year), STEP, run_id, phash, fingerprint)
        try:
            _replace_year(control, job, year, year_files, run_id, phash, fingerprint, result)
        except Exception as exc:
            result.status = (
                "refused"
                if isinstance(exc, intake.InputRefused)
                else "rejected-too-many"
                if isinstance(exc, CheckFailed)
                else "failed"
            )
            result.error = _message(exc)
            result.error_type = type(exc) if isinstance(exc, OpsbookError) else None
            _record_failure(control, spec, year, run_id, result.error)
            if not isinstance(exc, OpsbookError | OSError) and not _is_database_error(exc):
                raise  # a bug, not a data or service problem: let it surface with its traceback
        return result
    finally:
        result.seconds = time.monotonic() - t0
        with contextlib.suppress(psycopg.OperationalError):  # a session the server ended took its lock along
            locks.unlock(control, lock_key)


def _drop_staging(control, staging: str) -> None:
    """Drop a year's staging table, through a new session when the control one is gone; a
    database that cannot be reached leaves it to the next load of the year (which drops it)."""
    drop = sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging))
    try:
        control.execute(drop)
    except psycopg.OperationalError:
        with contextlib.suppress(Exception), postgres.connection(autocommit=True, purpose="load cleanup") as conn:
            conn.execute(drop)
    except Exception:
        pass  # the next load of the year drops it


def _record_failure(control, spec: DatasetSpec, year: int, run_id: str, error: str) -> None:
    """The year's ledger entry says failed, through a new session when the server ended the
    control session (the entry must never stay 'running' for a run that is over)."""
    try:
        ledger.failed(control, spec.name, str(year), STEP, run_id, error)
    except psycopg.OperationalError:
        with postgres.connection(autocommit=True, purpose=f"load {run_id}") as conn:
            ledger.failed(conn, spec.name, str(year), STEP, run_id, error)


def _is_database_error(exc: Exception) -> bool:
    import psycopg
    from adbc_driver_manager import dbapi as adbc_dbapi

    return isinstance(exc, psycopg.Error | adbc_dbapi.Error)


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _changed_since(control, spec, year, previous, phash, fingerprint) -> str | None:
    """Why ``year`` must be loaded again, in words; None when the last load used the same files
    and spec and nobody touched the table since (same table, same row count, no row written by
    another transaction, the same quarantined rows)."""
    if previous is None:
        return "first load of the year"
    if previous.status != "success":
        return f"its last load ended {previous.status}"
    if previous.params_hash != phash:
        return "the dataset spec (or the loader) changed since its last load"
    if previous.input_fingerprint != fingerprint:
        return "its source files changed since its last load"
    if previous.table_oid is None or previous.checksum is None:
        return "its last load did not record the table's state"
    name = postgres.partition_table(spec, year)
    row = control.execute("SELECT to_regclass(%s)::oid::bigint", (f"public.{name}",)).fetchone()
    if row is None or row[0] is None:
        return f"the table {name} was dropped since its last load"
    if row[0] != previous.table_oid:
        return f"the table {name} was replaced since its last load"
    rows, foreign = control.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE xmin <> {}::xid) FROM {}").format(
            sql.Literal(previous.checksum), ident(name)
        )
    ).fetchone()
    if rows != previous.rows:
        gone = (previous.rows or 0) - rows
        what = f"{gone:,} row(s) deleted" if gone > 0 else f"{-gone:,} row(s) added"
        return f"the table was changed since its last load: {what} ({previous.rows:,} then, {rows:,} now)"
    if foreign:
        return f"{foreign:,} row(s) of the table were rewritten since its last load"
    rejected = control.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE year = %s").format(ident(spec.rejected_table)), (year,)
    ).fetchone()[0]
    if rejected != previous.rejected:
        return f"its quarantined rows changed since its last load ({previous.rejected:,} then, {rejected:,} now)"
    return None


def _stored_rejects(control, spec, year) -> tuple[Counter, list[city_csv.Reject]]:
    from opsbook.sources import city_csv

    reasons = Counter()
    for field_name, count in control.execute(
        sql.SQL("SELECT coalesce(nullif(field, ''), 'row'), count(*) FROM {} WHERE year = %s GROUP BY 1").format(
            ident(spec.rejected_table)
        ),
        (year,),
    ):
        reasons[field_name] = count
    sample = [
        city_csv.Reject(*row)
        for row in control.execute(
            sql.SQL(
                "SELECT source_file, line_number, coalesce(field, ''), reason, raw_line FROM {} "
                "WHERE year = %s ORDER BY source_file, line_number LIMIT %s"
            ).format(ident(spec.rejected_table)),
            (year, REJECT_SAMPLE),
        )
    ]
    return reasons, sample


class _RejectSpool:
    """Quarantined rows of one year, spilled to a temporary file past 8 MiB."""

    def __init__(self, year: int, run_id: str):
        self.year = year
        self.run_id = run_id
        self.count = 0
        self.reasons: Counter = Counter()
        self.sample: list[city_csv.Reject] = []
        self._file = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+b")  # noqa: SIM115 - closed in close()
        self._text = io.TextIOWrapper(self._file, encoding="utf-8", newline="")
        self._writer = csv.writer(self._text)

    def add(self, rejects: list[city_csv.Reject]) -> None:
        for r in rejects:
            self._writer.writerow(
                [self.year, r.source_file, r.line_number, r.field, r.reason, r.raw.replace("\x00", "\\0"), self.run_id]
            )
            self.reasons[r.field or "row"] += 1
            if len(self.sample) < REJECT_SAMPLE:
                self.sample.append(r)
        self.count += len(rejects)

    def copy_into(self, cur, table: str) -> None:
        self._text.flush()
        self._file.seek(0)
        columns = sql.SQL(", ").join(
            ident(c) for c in ("year", "source_file", "line_number", "field", "reason", "raw_line", "run_id")
        )
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(ident(table), columns)) as copy:
            while chunk := self._file.read(1 << 20):
                copy.write(chunk)

    def close(self) -> None:
        self._text.close()


def _replace_year(
    control, job: LoadJob, year: int, year_files, run_id: str, phash: str, fingerprint, result: YearResult
) -> None:
    """Fill a staging table (binary COPY, committed), then swap it in with the year's
    quarantined rows and the ledger entry in one transaction. Until that commit the year's
    previous contents stay as they were; a staging table left by a killed run is dropped by
    the next load of the year (which holds the year's lock)."""
    from opsbook.sources import city_csv

    spec = job.spec
    target = postgres.partition_table(spec, year)
    staging = f"{target}_load"[:63]
    spool = _RejectSpool(year, run_id)
    heartbeat = ledger.Heartbeat(control, spec.name, str(year), STEP)

    def batches():
        total_bytes = sum(size for f in year_files for _, size in files.part_sizes(f))
        budget = intake.RejectBudget(year, total_bytes, job.max_rejected_ratio)
        hasher = intake.RowHasher()
        try:
            for source_file in year_files:
                for label, stream, _ in files.iter_parts(source_file):
                    stats = city_csv.PartStats(label)
                    result.parts.append(stats)
                    for batch in city_csv.read_part(stream, label, spec, year, stats):
                        if batch.rejects:
                            spool.add(batch.rejects)
                            budget.check(result.parts)  # stop as soon as the limit cannot be met
                        heartbeat()
                        if batch.rows.num_rows:
                            stats.row_hashes.append(hasher(batch.rows))
                            yield batch.rows
        finally:
            hasher.close()

    try:
        control.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging)))
        create = sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS, CHECK ({}))").format(
            ident(staging), ident(spec.table), postgres.year_bounds_check(spec, year)
        )
        loaded, load_xmin = postgres.copy_arrow(
            None, [create.as_string(control)], staging, city_csv.arrow_schema(spec), batches()
        )
        result.rows = sum(p.rows for p in result.parts)
        result.rejected = spool.count
        result.reject_reasons, result.reject_sample = spool.reasons, spool.sample
        if loaded != result.rows:
            raise OpsbookError(f"{year}: COPY stored {loaded:,} rows but {result.rows:,} were read")
        total = result.rows + result.rejected
        if total == 0:
            # an empty file is an error, so a header-only one is too: swapping in an empty year
            # would replace its previous contents with nothing, almost always after a bad export
            raise SourceError(
                f"{some(p.label for p in result.parts)}:1: a header and no data rows: {year} has nothing "
                "to load, and an empty year is refused rather than swapped in"
            )
        ratio = result.rejected / total
        if ratio > job.max_rejected_ratio:
            raise CheckFailed(
                f"{year}: {result.rejected:,} of {total:,} rows rejected ({ratio:.1%}, limit "
                f"{job.max_rejected_ratio:.1%}); the previous contents were kept. "
                f"Most common: {_top(spool.reasons)}"
            )
        intake.check_repeats(year, result.parts)
        held = _rows_held(control, target)
        result.previous_rows = held
        intake.check_shrink(year, held, result.rows, job.max_shrink_ratio, job.allow_shrink, some(result.files))
        with postgres.connection(purpose=f"load {run_id} {year}") as conn, conn.cursor() as cur:
            with postgres.lock_wait(conn, spec.table, f"{year}: replacing the partition {target}"):
                _swap(cur, spec, year, staging, target)
            spool.copy_into(cur, spec.rejected_table)
            oid = cur.execute("SELECT to_regclass(%s)::oid::bigint", (f"public.{target}",)).fetchone()[0]
            # every row of the partition carries the COPY transaction's id as xmin: a later
            # check that finds another xmin knows the partition was written to since
            ledger.success(
                conn,
                spec.name,
                str(year),
                STEP,
                run_id,
                phash,
                fingerprint,
                result.rows,
                result.rejected,
                load_xmin,
                oid,
                source=job.source,
            )
            conn.commit()
        result.status = "loaded"
    finally:
        spool.close()
        if result.status != "loaded":
            _drop_staging(control, staging)


def _rows_held(control, table: str) -> int | None:
    """The rows the year's partition holds now (None: it does not exist)."""
    if control.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is None:
        return None
    return control.execute(sql.SQL("SELECT count(*) FROM {}").format(ident(table))).fetchone()[0]


def _top(reasons: Counter) -> str:
    return ", ".join(f"{name} ({count:,})" for name, count in reasons.most_common(3)) or "-"


def _swap(cur, spec: DatasetSpec, year: int, staging: str, target: str) -> None:
    """Replace the year's partition with ``staging`` and its quarantined rows, in the caller's
    transaction. The CHECK on ``staging`` lets ATTACH skip the validation scan."""
    parent = ident(spec.table)
    exists = cur.execute("SELECT to_regclass(%s)", (f"public.{target}",)).fetchone()[0]
    if exists:
        cur.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, ident(target)))
        cur.execute(sql.SQL("DROP TABLE {}").format(ident(target)))
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), ident(target)))
    cur.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, ident(target), sql.Literal(f"{year}-01-01"), sql.Literal(f"{year + 1}-01-01")
        )
    )
    cur.execute(sql.SQL("DELETE FROM {} WHERE year = %s").format(ident(spec.rejected_table)), (year,))
