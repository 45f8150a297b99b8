"""One storage API for a local folder and Google Cloud Storage: list, read, write, delete.

A location is a path (``/data/city``, ``.opsbook/lake``) or a ``gs://bucket/prefix``; this
module is the only place that tells them apart. Writes are atomic either way: a local file is
written to a temporary name and renamed, an object is one upload, so a reader never sees half
of either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

GS = "gs://"


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    name: str  # the last path segment
    size: int
    fingerprint: str  # changes whenever the content may have (GCS: generation and md5)


def is_remote(uri: str) -> bool:
    return str(uri).startswith(GS)


def join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def name_of(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def check_folder(uri: str) -> None:
    """Raise SourceError when a local ``uri`` is missing or not a folder (a prefix always exists)."""
    from opsbook.errors import SourceError

    if is_remote(uri):
        return
    path = Path(uri)
    if not path.exists():
        raise SourceError(f"source folder {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"source {path} is not a folder")


def listing(prefix: str, recursive: bool = True) -> list[ObjectInfo]:
    """Every file under ``prefix``, sorted by location; nothing for a folder that does not exist."""
    if is_remote(prefix):
        from opsbook.stores import gcs

        found = gcs.list_objects(prefix)
        if not recursive:
            base = prefix.rstrip("/") + "/"
            found = [o for o in found if "/" not in o.uri[len(base) :]]
        return found
    folder = Path(prefix)
    if not folder.is_dir():
        return []
    paths = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for path in sorted(p for p in paths if p.is_file()):
        stat = path.stat()
        found.append(ObjectInfo(str(path), path.name, stat.st_size, f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"))
    return found


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[IO[bytes]]:
    """A seekable binary reader (ZIP and Parquet readers seek)."""
    if is_remote(uri):
        from opsbook.stores import gcs

        handle = gcs.open_read(uri)
    else:
        handle = open(uri, "rb")  # noqa: SIM115 - closed below
    try:
        yield handle
    finally:
        handle.close()


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write a whole file or object; a reader never sees half of it."""
    if is_remote(uri):
        from opsbook.stores import gcs

        gcs.upload_bytes(uri, data, content_type)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(path, uri: str) -> None:
    """Copy a local file to a file or object; a reader never sees half of it."""
    if is_remote(uri):
        from opsbook.stores import gcs

        gcs.upload_file(uri, str(path))
        return
    import shutil

    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def exists(uri: str) -> bool:
    if is_remote(uri):
        from opsbook.stores import gcs

        return gcs.exists(uri)
    return Path(uri).is_file()


def md5_of(uri: str) -> str | None:
    """The MD5 of a file or object as hex (None when there is none to read)."""
    if is_remote(uri):
        from opsbook.stores import gcs

        return gcs.md5_of(uri)
    import hashlib

    try:
        with open(uri, "rb") as handle:
            return hashlib.file_digest(handle, "md5").hexdigest()
    except FileNotFoundError:
        return None


def delete(uri: str) -> bool:
    """Delete one file or object; False when it was not there."""
    if is_remote(uri):
        from opsbook.stores import gcs

        return gcs.delete(uri)
    try:
        Path(uri).unlink()
    except FileNotFoundError:
        return False
    return True
