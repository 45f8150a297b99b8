"""Find a dataset's source files per partition, and open the CSV parts inside them.

A source is a local folder or a ``gs://bucket/prefix``. Each ``.zip`` holds one or more CSV
parts; a bare ``.csv`` is one part. A file belongs to the year its name carries
(``parking-tickets-2016.zip``, ``Parking_Tags_Data_2016_1.csv``).
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError

SUFFIXES = (".zip", ".csv")


@dataclass(frozen=True)
class SourceFile:
    uri: str  # local path or gs:// URI
    name: str
    size: int
    fingerprint: str  # changes whenever the content may have
    year: int


@dataclass
class SourcePlan:
    """What a source folder holds for the years asked."""

    source: str
    by_year: dict[int, list[SourceFile]] = field(default_factory=dict)
    missing_years: list[int] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that belong to no year or another format


def _local_files(folder: Path) -> list[tuple[str, str, int, str]]:
    if not folder.exists():
        raise SourceError(f"source folder {folder} does not exist")
    if not folder.is_dir():
        raise SourceError(f"source {folder} is not a folder")
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        found.append((str(path), path.name, stat.st_size, f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"))
    return found


def _gcs_files(prefix: str) -> list[tuple[str, str, int, str]]:
    from opsbook.stores import objects

    try:
        listing = objects.list_objects(prefix)
    except Exception as exc:  # google.api_core errors; the message says what failed
        raise SourceError(f"cannot list {prefix}: {exc}") from exc
    return [(o.uri, o.name, o.size, o.fingerprint) for o in listing]


def discover(source: str, spec: DatasetSpec, years: list[int]) -> SourcePlan:
    """Group the source's files by year; years asked for with no file are listed as missing."""
    entries = _gcs_files(source) if source.startswith("gs://") else _local_files(Path(source))
    pattern = re.compile(spec.source.file_pattern)
    plan = SourcePlan(source, {y: [] for y in years})
    for uri, name, size, fingerprint in entries:
        if not name.lower().endswith(SUFFIXES) or name.startswith("."):
            plan.ignored.append(name)
            continue
        match = pattern.search(name)
        if not match:
            plan.ignored.append(name)
            continue
        year = int(match.group("year"))
        if year in plan.by_year:
            plan.by_year[year].append(SourceFile(uri, name, size, fingerprint, year))
    plan.missing_years = [y for y, files in plan.by_year.items() if not files]
    return plan


@contextlib.contextmanager
def _open(uri: str) -> Iterator[IO[bytes]]:
    if uri.startswith("gs://"):
        from opsbook.stores import objects

        handle = objects.open_read(uri)
    else:
        handle = open(uri, "rb")  # noqa: SIM115 - closed below
    try:
        yield handle
    finally:
        handle.close()


def iter_parts(file: SourceFile) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield ``(label, binary stream)`` for each CSV part of a file, in name order."""
    with _open(file.uri) as handle:
        if not file.name.lower().endswith(".zip"):
            yield file.name, handle
            return
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise SourceError(f"{file.name}: not a readable ZIP archive ({exc}); is it truncated?") from exc
        with archive:
            members = sorted(
                (
                    m
                    for m in archive.infolist()
                    if not m.is_dir() and m.filename.lower().endswith(".csv") and "__MACOSX" not in m.filename
                ),
                key=lambda m: m.filename,
            )
            if not members:
                names = ", ".join(m.filename for m in archive.infolist()[:10]) or "nothing"
                raise SourceError(f"{file.name}: the ZIP holds no CSV file (it holds {names})")
            for member in members:
                try:
                    stream = archive.open(member)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise SourceError(f"{file.name}:{member.filename}: cannot open: {exc}") from exc
                with stream:
                    yield f"{file.name}:{member.filename}", stream
