"""Find a dataset's source files per partition, and open the CSV parts inside them.

A source is a local folder or a ``gs://bucket/prefix``. Each ``.zip`` holds one or more CSV
parts; a bare ``.csv`` is one part. A file belongs to the year its name carries
(``parking-tickets-2016.zip``, ``Parking_Tags_Data_2016_1.csv``).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    """What a source folder holds: every file by the year its name carries, and the years asked."""

    source: str
    years: list[int] = field(default_factory=list)  # asked for (``latest`` resolved)
    found: dict[int, list[SourceFile]] = field(default_factory=dict)  # every year the source holds
    ignored: list[str] = field(default_factory=list)  # files that belong to no year or another format

    @property
    def by_year(self) -> dict[int, list[SourceFile]]:
        return {y: self.found.get(y, []) for y in self.years}

    @property
    def missing_years(self) -> list[int]:
        return [y for y in self.years if not self.found.get(y)]


def _entries(source: str, recursive: bool) -> list[tuple[str, str, int, str]]:
    from opsbook.stores import uri

    uri.check_folder(source)
    try:
        found = uri.listing(source, recursive=recursive)
    except Exception as exc:  # google.api_core errors; the message says what failed
        if not uri.is_remote(source):
            raise
        raise SourceError(f"cannot list {source}: {exc}") from exc
    return [(o.uri, o.name, o.size, o.fingerprint) for o in found]


def discover(source: str, spec: DatasetSpec, years) -> SourcePlan:
    """Group the source's files by year; ``years`` (a :class:`~opsbook.windows.Years`) picks those
    asked for, ``latest`` the newest the source holds."""
    pattern = re.compile(spec.source.file_pattern)
    plan = SourcePlan(source)
    for uri, name, size, fingerprint in _entries(source, spec.source.recursive):
        match = pattern.search(name)
        if not name.lower().endswith(SUFFIXES) or name.startswith(".") or not match:
            plan.ignored.append(name)
            continue
        year = int(match.group("year"))
        plan.found.setdefault(year, []).append(SourceFile(uri, name, size, fingerprint, year))
    plan.years = list(years.resolve(plan.found))
    return plan


def content_digest(file: SourceFile) -> str:
    """A digest of the file's content: a local file is hashed (SHA-256, read once); an object in
    GCS has its MD5 (or CRC32C) from the store. Never size and modification time, which
    ``cp -p``, ``rsync -t`` and unzip keep while the content changes."""
    from opsbook.stores import uri

    if uri.is_remote(file.uri):
        md5 = file.fingerprint.partition("md5:")[2]
        # a composite object has no MD5: its generation changes with every write of it
        return f"md5:{md5}" if md5 and md5 != "None" else file.fingerprint
    import hashlib

    with uri.open_read(file.uri) as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def csv_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The CSV parts a ZIP holds, in name order (folders and macOS resource forks left out)."""
    return sorted(
        (
            m
            for m in archive.infolist()
            if not m.is_dir() and m.filename.lower().endswith(".csv") and "__MACOSX" not in m.filename
        ),
        key=lambda m: m.filename,
    )


def part_sizes(file: SourceFile) -> list[tuple[str, int]]:
    """Each CSV part's label and uncompressed size, from the ZIP's directory (no data read)."""
    from opsbook.stores import uri

    if not file.name.lower().endswith(".zip"):
        return [(file.name, file.size)]
    with uri.open_read(file.uri) as handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                return [(f"{file.name}:{m.filename}", m.file_size) for m in csv_members(archive)]
        except (zipfile.BadZipFile, EOFError, OSError):
            return [(file.name, file.size)]  # iter_parts says what is wrong with it


def iter_parts(file: SourceFile) -> Iterator[tuple[str, IO[bytes], int]]:
    """Yield ``(label, binary stream, size in bytes)`` for each CSV part of a file, in name order."""
    from opsbook.stores import uri

    with uri.open_read(file.uri) as handle:
        if not file.name.lower().endswith(".zip"):
            yield file.name, handle, file.size
            return
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise SourceError(f"{file.name}: not a readable ZIP archive ({exc}); is it truncated?") from exc
        with archive:
            members = csv_members(archive)
            if not members:
                names = ", ".join(m.filename for m in archive.infolist()[:10]) or "nothing"
                raise SourceError(f"{file.name}: the ZIP holds no CSV file (it holds {names})")
            for member in members:
                try:
                    stream = archive.open(member)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise SourceError(f"{file.name}:{member.filename}: cannot open: {exc}") from exc
                with stream:
                    yield f"{file.name}:{member.filename}", stream, member.file_size
