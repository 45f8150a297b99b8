"""Load a dataset's source files into PostgreSQL, one year partition at a time.

For each year: stream every CSV part of the year's files through the checker, COPY the good
rows into a fresh table inside one transaction, then swap it in for the year's partition and
replace the year's quarantined rows, and commit. A failure anywhere rolls the transaction
back: the year keeps its previous contents. A year whose files, spec and table are unchanged
since its last load is verified and skipped (``force=true`` reloads it anyway).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg import sql
from pydantic import Field, field_validator

from opsbook import datasets, runlog
from opsbook.datasets import DatasetSpec
from opsbook.errors import CheckFailed, LockHeld, OpsbookError, SourceError
from opsbook.params import DatasetName, ProcedureParams, Years, year_list
from opsbook.sources import files
from opsbook.stores import postgres
from opsbook.stores.postgres import ident
from opsbook.verdict import Verdict

if TYPE_CHECKING:
    from opsbook.sources import city_csv

NOTEBOOK = "load.ipynb"
SUMMARY = "Load City files for a window of years into PostgreSQL (per-year replace, bad rows quarantined)"
STEP = "load"
# bump when the loader's output for the same input changes: it invalidates "unchanged" skips
LOADER_VERSION = "2"  # 2: mojibake and NUL values quarantined by field; a stray quote swallows no line
REJECT_SAMPLE = 20


class Params(ProcedureParams):
    """Parameters of ``load``."""

    dataset: DatasetName = Field("toronto_parking_tickets", description="dataset spec in params/datasets/")
    source: str = Field("demo", description='folder or gs:// prefix with the files; "demo" builds demo files')
    years: Years = Field("2016-2018", description="years to (re)load: 2017, 2016-2018 or 2011,2015-2016")
    force: bool = Field(False, description="reload years whose files and table are unchanged")
    max_rejected_ratio: float = Field(
        0.01, ge=0, le=1, description="a year with a larger share of rejected rows is not swapped in"
    )

    _source = field_validator("source")(lambda v: resolve_source(v))


def resolve_source(value: str) -> str:
    """'demo', a gs:// prefix, or an existing folder (made absolute: the kernel runs elsewhere)."""
    if value == "demo" or value.startswith("gs://"):
        return value
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"folder {value!r} does not exist (give a folder, a gs:// prefix or 'demo')")
    return str(path.resolve())


# --- plan ------------------------------------------------------------------------------------


@dataclass
class Plan:
    params: Params
    spec: DatasetSpec
    source: str
    found: files.SourcePlan

    @property
    def years(self) -> list[int]:
        return year_list(self.params.years)


def plan(params: Params) -> Plan:
    """Resolve the source and list the files of each year; refuse when a year has none."""
    spec = datasets.get(params.dataset)
    if spec.rejected_table is None or spec.partition.by != "year":
        raise SourceError(
            f"dataset {spec.name!r} is not loaded from City files (no quarantine table or yearly partitions)"
        )
    source = params.source
    if source == "demo":
        from opsbook import demodata

        demodata.build(years=[y for y in year_list(params.years) if y in demodata.REFERENCE_YEARS])
        source = str(demodata.demo_source_dir(params.dataset))
    found = files.discover(source, spec, year_list(params.years))
    if found.missing_years:
        from opsbook.params import format_years

        raise SourceError(
            f"no {spec.title or spec.name} file for {format_years(found.missing_years)} in {source}: "
            f"nothing was loaded. Files there: {_some(n.name for fs in found.by_year.values() for n in fs)}"
            f"{'; ignored: ' + _some(found.ignored) if found.ignored else ''}"
        )
    return Plan(params, spec, source, found)


def _some(names, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return (shown + f" and {len(names) - limit} more") if len(names) > limit else (shown or "none")


# --- result ----------------------------------------------------------------------------------


@dataclass
class YearResult:
    year: int
    status: str  # loaded | unchanged | failed | rejected-too-many
    files: list[str] = field(default_factory=list)
    parts: list[city_csv.PartStats] = field(default_factory=list)
    rows: int = 0
    rejected: int = 0
    previous_rows: int | None = None
    seconds: float = 0.0
    error: str | None = None
    reject_reasons: Counter = field(default_factory=Counter)
    reject_sample: list[city_csv.Reject] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return self.rows + self.rejected

    @property
    def encodings(self) -> str:
        return ", ".join(sorted({p.encoding for p in self.parts})) or "-"


@dataclass
class Result:
    plan: Plan
    years: list[YearResult]
    run_id: str
    seconds: float

    @property
    def rows(self) -> int:
        return sum(y.rows for y in self.years if y.status in ("loaded", "unchanged"))

    @property
    def rejected(self) -> int:
        return sum(y.rejected for y in self.years if y.status in ("loaded", "unchanged"))

    def verdict(self) -> Verdict:
        failed = [y for y in self.years if y.status in ("failed", "rejected-too-many")]
        loaded = [y.year for y in self.years if y.status == "loaded"]
        unchanged = [y.year for y in self.years if y.status == "unchanged"]
        figures = {
            "rows": self.rows,
            "rejected": self.rejected,
            "years loaded": len(loaded),
            "years unchanged": len(unchanged),
            "years failed": len(failed),
        }
        counts = dict(rows_in=sum(y.lines for y in self.years), rows_out=self.rows, rows_rejected=self.rejected)
        parts = []
        if loaded:
            parts.append(f"loaded {len(loaded)} year(s)")
        if unchanged:
            parts.append(f"{len(unchanged)} unchanged")
        summary = f"{', '.join(parts) or 'nothing loaded'}: {self.rows:,} rows, {self.rejected:,} quarantined"
        if failed:
            from opsbook.params import format_years

            rerun = format_years(y.year for y in failed)
            too_many = [y for y in failed if y.status == "rejected-too-many"]
            reasons = "; ".join(_shorten(y.error or y.status, 300) for y in failed)
            summary = (
                f"{len(failed)} year(s) failed ({rerun}) and kept their previous contents: {reasons}. "
                f"Otherwise {summary}. Rerun only them with -p years={rerun}"
            )
            error_type = "CheckFailed" if len(too_many) == len(failed) else "ProcedureFailed"
            return Verdict.failed(summary, figures, "load-years", error_type, **counts)
        return Verdict("pass", summary, figures, **counts)


# --- execution -------------------------------------------------------------------------------


def params_hash(spec: DatasetSpec) -> str:
    return hashlib.sha256(f"{spec.fingerprint()}:{LOADER_VERSION}".encode()).hexdigest()[:16]


def input_fingerprint(year_files: list[files.SourceFile]) -> list[dict]:
    return [{"name": f.name, "size": f.size, "fingerprint": f.fingerprint} for f in year_files]


def run(plan: Plan, run_id: str, progress: Callable[..., None] | None = None) -> Result:
    """Load every year of the plan; one failing year does not stop the others.

    ``progress(message, transient=False)`` is told when each year starts (transient) and ends.
    """
    started = time.monotonic()
    notify = progress or (lambda message, transient=False: None)
    spec = plan.spec
    with postgres.connection(autocommit=True, purpose=f"load {run_id}") as control:
        prepare(control, spec)
        results = []
        for index, year in enumerate(plan.years, 1):
            year_files = plan.found.by_year[year]
            notify(f"{year}: loading ({index}/{len(plan.years)}, {len(year_files)} file(s))...", transient=True)
            result = load_year(control, plan, year, year_files, run_id)
            notify(
                f"{year} ({index}/{len(plan.years)}): {result.status}, {result.rows:,} rows, "
                f"{result.rejected:,} quarantined, "
                f"{result.seconds:.1f}s" + (f" ({result.error})" if result.error else "")
            )
            results.append(result)
    return Result(plan, results, run_id, time.monotonic() - started)


def prepare(control, spec: DatasetSpec) -> None:
    """The run history and the dataset's tables exist (idempotent)."""
    runlog.ensure_schema(control)
    postgres.ensure_dataset_tables(control, spec)


def load_year(control, plan: Plan, year: int, year_files: list[files.SourceFile], run_id: str) -> YearResult:
    spec = plan.spec
    t0 = time.monotonic()
    result = YearResult(year, "failed", files=[f.name for f in year_files])
    lock_key = runlog.partition_lock(STEP, spec.name, str(year))
    try:
        runlog.try_lock(control, lock_key, f"run {run_id}")
    except LockHeld as exc:
        result.error = str(exc)
        raise
    try:
        fingerprint = input_fingerprint(year_files)
        phash = params_hash(spec)
        previous = runlog.ledger_get(control, spec.name, str(year), STEP)
        result.previous_rows = previous.rows if previous else None
        if not plan.params.force and _unchanged(control, spec, year, previous, phash, fingerprint):
            result.status = "unchanged"
            result.rows, result.rejected = previous.rows or 0, previous.rejected or 0
            result.reject_reasons, result.reject_sample = _stored_rejects(control, spec, year)
            return result
        runlog.ledger_running(control, spec.name, str(year), STEP, run_id, phash, fingerprint)
        try:
            _replace_year(control, plan, year, year_files, run_id, phash, fingerprint, result)
        except Exception as exc:
            result.status = "rejected-too-many" if isinstance(exc, CheckFailed) else "failed"
            result.error = _message(exc)
            runlog.ledger_failed(control, spec.name, str(year), STEP, run_id, result.error)
            if not isinstance(exc, OpsbookError | OSError) and not _is_database_error(exc):
                raise  # a bug, not a data or service problem: let it surface with its traceback
        return result
    finally:
        result.seconds = time.monotonic() - t0
        runlog.unlock(control, lock_key)


def _is_database_error(exc: Exception) -> bool:
    import psycopg
    from adbc_driver_manager import dbapi as adbc_dbapi

    return isinstance(exc, psycopg.Error | adbc_dbapi.Error)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text


def _unchanged(control, spec, year, previous, phash, fingerprint) -> bool:
    """True when the last load of ``year`` used the same files and spec, and nobody touched the
    table since: same table (oid), same row count, and no row written by another transaction."""
    if previous is None or previous.status != "success":
        return False
    if previous.params_hash != phash or previous.input_fingerprint != fingerprint:
        return False
    if previous.table_oid is None or previous.checksum is None:
        return False
    name = postgres.partition_table(spec, year)
    row = control.execute("SELECT to_regclass(%s)::oid::bigint", (f"public.{name}",)).fetchone()
    if row is None or row[0] != previous.table_oid:
        return False
    rows, foreign = control.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE xmin <> {}::xid) FROM {}").format(
            sql.Literal(previous.checksum), ident(name)
        )
    ).fetchone()
    if rows != previous.rows or foreign:
        return False
    rejected = control.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE year = %s").format(ident(spec.rejected_table)), (year,)
    ).fetchone()[0]
    return rejected == previous.rejected


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
    control, plan: Plan, year: int, year_files, run_id: str, phash: str, fingerprint, result: YearResult
) -> None:
    """Fill a staging table (binary COPY, committed), then swap it in with the year's
    quarantined rows and the ledger entry in one transaction. Until that commit the year's
    previous contents stay as they were; a staging table left by a killed run is dropped by
    the next load of the year (which holds the year's lock)."""
    from opsbook.sources import city_csv

    spec = plan.spec
    target = postgres.partition_table(spec, year)
    staging = f"{target}_load"[:63]
    spool = _RejectSpool(year, run_id)
    heartbeat = runlog.Heartbeat(control, spec.name, str(year), STEP)

    def batches():
        for source_file in year_files:
            for label, stream in files.iter_parts(source_file):
                stats = city_csv.PartStats(label)
                result.parts.append(stats)
                for batch in city_csv.read_part(stream, label, spec, year, stats):
                    if batch.rejects:
                        spool.add(batch.rejects)
                    heartbeat()
                    if batch.rows.num_rows:
                        yield batch.rows

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
                f"{_some(p.label for p in result.parts)}:1: a header and no data rows: {year} has nothing "
                "to load, and an empty year is refused rather than swapped in"
            )
        ratio = result.rejected / total
        if ratio > plan.params.max_rejected_ratio:
            raise CheckFailed(
                f"{year}: {result.rejected:,} of {total:,} rows rejected ({ratio:.1%}, limit "
                f"{plan.params.max_rejected_ratio:.1%}); the previous contents were kept. "
                f"Most common: {_top(spool.reasons)}"
            )
        with postgres.connection(purpose=f"load {run_id} {year}") as conn, conn.cursor() as cur:
            _swap(cur, spec, year, staging, target)
            spool.copy_into(cur, spec.rejected_table)
            oid = cur.execute("SELECT to_regclass(%s)::oid::bigint", (f"public.{target}",)).fetchone()[0]
            # every row of the partition carries the COPY transaction's id as xmin: a later
            # check that finds another xmin knows the partition was written to since
            runlog.ledger_success(
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
            )
            conn.commit()
        result.status = "loaded"
    finally:
        spool.close()
        if result.status != "loaded":
            with contextlib.suppress(Exception):
                control.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging)))


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


# --- presentation ----------------------------------------------------------------------------


def show_plan(plan: Plan):
    """The files found for each year."""
    from opsbook import report

    rows = [{"year": year, "file": f.name, "bytes": f.size} for year in plan.years for f in plan.found.by_year[year]]
    caption = f"{len(rows)} file(s) in {plan.source} for {plan.params.years}"
    if plan.found.ignored:
        caption += f" ({len(plan.found.ignored)} other file(s) ignored: {_some(plan.found.ignored, 5)})"
    return report.table(rows, caption=caption)


UNCHANGED_NOTE = "files, spec and table unchanged since the last load"


def show_years(result: Result):
    """One row per year: what happened, rows loaded, rows quarantined, encodings, time."""
    from opsbook import report

    rows = []
    for y in result.years:
        rows.append(
            {
                "year": y.year,
                "status": y.status,
                "rows": y.rows,
                "quarantined": y.rejected,
                "previous rows": y.previous_rows,
                "files": len(y.files),
                "parts": len(y.parts) if y.parts else None,
                "encoding": y.encodings if y.parts else "",
                "seconds": round(y.seconds, 2),
                "note": y.error or (UNCHANGED_NOTE if y.status == "unchanged" else ""),
            }
        )
    return report.table(
        rows, caption=f"{result.plan.spec.table}: per year", status_column="status", element_id="load-years"
    )


def show_rejected(result: Result):
    """Quarantined rows: counts per year and field, and a sample with file, line and raw text."""
    from opsbook import report

    fields = sorted({name for y in result.years for name in y.reject_reasons})
    counts = [
        {"year": y.year, **{name: y.reject_reasons.get(name, 0) for name in fields}, "total": y.rejected}
        for y in result.years
        if y.rejected
    ]
    sample = [
        {
            "year": y.year,
            "file": r.source_file,
            "line": r.line_number,
            "field": r.field or "(row)",
            "reason": r.reason,
            "raw text": r.raw[:300],
        }
        for y in result.years
        for r in y.reject_sample
    ][:REJECT_SAMPLE]
    table = result.plan.spec.rejected_table
    return report.stack(
        report.table(
            counts,
            caption=f"Quarantined rows per year, by the field that failed ('row': wrong "
            f"column count or unreadable bytes); all of them are in {table}",
            element_id="rejected-counts",
        ),
        report.table(
            sample,
            caption=f"Sample of quarantined rows (first {REJECT_SAMPLE})",
            raw_columns=["raw text"],
            element_id="rejected-sample",
        ),
    )
