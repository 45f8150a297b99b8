"""Copy the team's local Parquet tree to the bucket (runbook Task 2.3): plan, copy, verify, resume.

The local tree (``backend/data/parquet``) holds raw files (named as the spec's
``source.raw_files`` says, ``bsm_*.parquet``, in any folder) and processed files
(``processed/indices/indices_<date>.parquet`` and the like). Raw files go where the dual-write
archives them (``<ARCHIVE_URL>/raw/bsm/<yyyy>/<mm>/<dd>/<name>``, their day from their
statistics or name); every other file keeps its path under ``<LAKE_URL>``. Both roots may be
the same bucket.

:func:`plan` compares each local file's MD5 with the object's (one listing per folder):
``to copy`` (no object), ``already there`` (same MD5), ``differs`` (another object holds the
name: never overwritten unless asked). :func:`copy` uploads the planned files one by one, each
in one request (a reader never sees half an object), reads the object's MD5 back and compares
it; a local file is deleted only when asked and only once its copy is verified. An interrupted
copy is resumed by running it again: what is already there is skipped.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opsbook import config
from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError
from opsbook.stores import uri
from opsbook.trafficsafety import layout

STATUSES = ("to copy", "already there", "differs", "copied", "failed", "unreadable")


@dataclass
class Item:
    local: Path
    relative: str
    target: str
    size: int
    md5: str
    status: str
    kind: str = "processed"  # processed | raw
    note: str = ""
    deleted: bool = False  # the local file was deleted after its copy was verified


def md5_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def plan(spec: DatasetSpec, source: Path, lake: str | None = None, archive: str | None = None) -> list[Item]:
    """Every Parquet file of the local tree, with where it goes and whether it is there already.

    Raises
    ------
    SourceError
        ``source`` is not a folder.
    """
    from opsbook.trafficsafety.batches import describe_raw

    if not source.is_dir():
        raise SourceError(f"{source} is not a folder: give the local Parquet tree (backend/data/parquet)")
    lake, archive = lake or config.lake_url(), archive or config.archive_url()
    items = []
    for path in sorted(p for p in source.rglob("*.parquet") if p.is_file()):
        relative = path.relative_to(source).as_posix()
        if any(part.startswith(".") for part in path.relative_to(source).parts):
            continue  # a write in progress, or a hidden folder
        item = Item(path, relative, "", path.stat().st_size, "", "to copy")
        if spec.source.raw_files and fnmatch.fnmatchcase(path.name, spec.source.raw_files):
            item.kind = "raw"
            try:
                day = describe_raw(spec, str(path), path.stem).last_day
            except (SourceError, OSError, ValueError) as exc:
                item.status, item.note = "unreadable", str(exc).splitlines()[0][:300]
                items.append(item)
                continue
            item.target = layout.archive_object(spec, path.name, day, archive)
        else:
            item.target = uri.join(lake, relative)
        item.md5 = md5_of(path)
        items.append(item)
    _compare_with_bucket(items)
    return items


def _compare_with_bucket(items: list[Item]) -> None:
    """Set each item's status from the object its target names (one listing per folder)."""
    held: dict[str, dict[str, str | None]] = {}
    for item in items:
        if item.status == "unreadable":
            continue
        folder = layout.folder_of(item.target)
        if folder not in held:
            held[folder] = {o.uri: _listed_md5(o) for o in uri.listing(folder, recursive=False)}
        if item.target not in held[folder]:
            item.status = "to copy"
            continue
        there = held[folder][item.target] or uri.md5_of(item.target)
        item.status = "already there" if there == item.md5 else "differs"
        if item.status == "differs":
            item.note = "another object holds this name (overwrite=true replaces it)"


def _listed_md5(info: uri.ObjectInfo) -> str | None:
    """A listed object's MD5 as hex, when the listing carries it (GCS does; a folder does not)."""
    import base64

    b64 = info.fingerprint.partition("md5:")[2]
    if not b64 or b64 == "None":
        return None
    try:
        return base64.b64decode(b64).hex()
    except ValueError:
        return None


def copy(
    items: list[Item], overwrite: bool = False, delete_local: bool = False, progress: Callable[..., None] | None = None
) -> list[Item]:
    """Copy the planned files (``differs`` too with ``overwrite``), verify each by MD5, and with
    ``delete_local`` delete the local files whose object is verified (copied or already there)."""
    notify = progress or (lambda message, transient=False: None)
    todo = [i for i in items if i.status == "to copy" or (overwrite and i.status == "differs")]
    done_bytes = 0
    for index, item in enumerate(todo, 1):
        try:
            uri.copy_file(item.local, item.target)
            there = uri.md5_of(item.target)
            if there is not None and there != item.md5:
                item.status, item.note = "failed", f"the object's MD5 {there} differs from the file's {item.md5}"
            else:
                item.status, item.note = "copied", "" if there else "copied (the store keeps no MD5 to compare)"
        except Exception as exc:  # reported per file; the others go on
            text = str(exc).strip()
            item.status, item.note = "failed", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
        done_bytes += item.size
        notify(f"{index}/{len(todo)} files, {done_bytes / 1e6:,.1f} MB", transient=index != len(todo))
    if delete_local:
        for item in items:
            if item.status in ("copied", "already there") and uri.md5_of(item.target) in (item.md5, None):
                item.local.unlink()
                item.deleted = True
    return items


def counts(items: list[Item]) -> dict[str, int]:
    return {status: sum(1 for i in items if i.status == status) for status in STATUSES}
