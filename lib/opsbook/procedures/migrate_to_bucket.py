"""Copy the local Parquet tree to the bucket, dry run first (traffic-safety runbook Task 2.3).

Every Parquet file under ``source`` (the team's ``backend/data/parquet``) is set against the
bucket: raw files (``bsm_*.parquet``) go to the raw archive's day folders
(``<ARCHIVE_URL>/raw/bsm/<yyyy>/<mm>/<dd>/``), every other file keeps its path under
``<LAKE_URL>`` (``processed/indices/...``). By default nothing is copied: the plan says what
would be (``to copy``), what is there already with the same MD5 (skipped), and what differs
(another object holds the name; never overwritten unless ``overwrite=true``). With
``apply=true`` the files are copied one by one, each object's MD5 read back and compared; an
interrupted copy resumes by running it again. Local files are deleted only with
``delete_local=true``, and only once their copy is verified. The work is
:mod:`opsbook.trafficsafety.migrate`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from opsbook import standins
from opsbook.errors import CheckFailed
from opsbook.run.context import RunContext
from opsbook.run.params import DatasetName, ProcedureParams
from opsbook.run.verdict import Verdict, shorten

if TYPE_CHECKING:
    from opsbook.trafficsafety.migrate import Item

SOURCE_KIND = "safety_parquet_tree"


@standins.guarded
class Params(ProcedureParams):
    """Parameters of ``migrate_to_bucket``."""

    dataset: DatasetName = Field("safety_indices", description="dataset spec in params/datasets/")
    source: standins.source_field(SOURCE_KIND) = Field(
        standins.DEFAULT_SOURCE, description="the local Parquet tree (backend/data/parquet), or a stand-in source"
    )
    apply: bool = Field(False, description="copy the files (false: plan only, nothing is copied)")
    overwrite: bool = Field(False, description="replace objects that hold another file under the same name")
    delete_local: bool = Field(False, description="delete each local file once its copy in the bucket is verified")


def locks(params: Params) -> list[str]:
    """One copy into the bucket at a time (probed by the runner before a kernel starts)."""
    from opsbook.history.locks import key

    return [key("migrate_to_bucket", params.dataset)] if params.apply else []


@dataclass
class Plan:
    params: Params
    source: Path
    lake: str
    archive: str
    items: list[Item]


def plan(ctx: RunContext) -> Plan:
    """Every local file, where it goes, and whether the bucket holds it already; nothing is copied.

    Raises
    ------
    SourceError
        The source is not a folder.
    """
    from opsbook import config, datasets
    from opsbook.trafficsafety import migrate

    params: Params = ctx.params
    source = Path(standins.resolve(SOURCE_KIND, params.source))
    lake, archive = config.lake_url(), config.archive_url()
    return Plan(params, source, lake, archive, migrate.plan(datasets.get(params.dataset), source, lake, archive))


def run(ctx: RunContext, plan: Plan) -> Result:
    """Copy and verify (only with ``apply=true``)."""
    from opsbook.history import locks as held
    from opsbook.stores import postgres
    from opsbook.trafficsafety import migrate

    params: Params = ctx.params
    started = time.monotonic()
    if not params.apply:
        return Result(plan, False, time.monotonic() - started)
    key = locks(params)[0]
    with postgres.connection(autocommit=True, purpose=f"run {ctx.run_id}") as conn:
        from opsbook.history import schema

        schema.ensure_schema(conn)
        held.try_lock(conn, key, f"run {ctx.run_id}")
        migrate.copy(plan.items, params.overwrite, params.delete_local, ctx.progress("Copying"))
        held.unlock(conn, key)
    return Result(plan, True, time.monotonic() - started)


@dataclass
class Result:
    plan: Plan
    applied: bool
    seconds: float

    @property
    def items(self) -> list[Item]:
        return self.plan.items

    def verdict(self) -> Verdict:
        from opsbook.trafficsafety.migrate import counts

        found = counts(self.items)
        megabytes = sum(i.size for i in self.items if i.status in ("to copy", "copied")) / 1e6
        figures = {**{k: v for k, v in found.items() if v}, "MB": round(megabytes, 1)}
        figures["deleted locally"] = sum(i.deleted for i in self.items)
        wrong = [i for i in self.items if i.status in ("failed", "unreadable", "differs")]
        what = f"{len(self.items)} file(s) under {self.plan.source}"
        if not self.items:
            return Verdict.failed(f"no Parquet file under {self.plan.source}", figures, "files", CheckFailed)
        if wrong:
            first = wrong[0]
            hint = " (-p overwrite=true replaces them)" if any(i.status == "differs" for i in wrong) else ""
            return Verdict.failed(
                shorten(
                    f"{len(wrong)} of {what} not in the bucket as they are here{hint}: "
                    f"first {first.relative}: {first.status}, {first.note}"
                ),
                figures,
                "files",
                CheckFailed,
            )
        if not self.applied:
            return Verdict(
                "pass",
                f"plan only, nothing copied: {found['to copy']} of {what} would be copied ({megabytes:,.1f} MB), "
                f"{found['already there']} already there with the same MD5; -p apply=true copies them",
                figures,
            )
        deleted = f"; {figures['deleted locally']} deleted locally" if figures["deleted locally"] else ""
        return Verdict(
            "pass",
            f"copied {found['copied']} of {what} ({megabytes:,.1f} MB), each object's MD5 verified; "
            f"{found['already there']} were there already{deleted}",
            figures,
        )


# --- presentation ----------------------------------------------------------------------------


def show_files(result_or_plan):
    """Each file: where it goes, its size and status."""
    from opsbook import report

    plan = result_or_plan.plan if isinstance(result_or_plan, Result) else result_or_plan
    rows = [
        {
            "file": i.relative,
            "to": i.target,
            "kind": i.kind,
            "MB": round(i.size / 1e6, 2),
            "status": i.status,
            "note": i.note + (" (deleted locally)" if i.deleted else ""),
        }
        for i in plan.items
    ]
    return report.table(
        rows,
        caption=f"{plan.source} -> processed: {plan.lake}, raw: {plan.archive}",
        status_column="status",
        element_id="files",
    )
