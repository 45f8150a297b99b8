"""Read City-format CSV parts in blocks: decode, parse, type-check, and split good rows from rejects.

The reader streams: it holds one block (``BLOCK_BYTES`` of input) at a time, so memory does
not grow with the file. Each block takes the fast path when it can (valid UTF-8, one row per
physical line): Arrow's CSV parser, then vectorized checks. Otherwise (another encoding,
blank lines, quoted line breaks) it takes the exact path: line by line with Python's csv
module, each line decoded with the first encoding that fits. Both paths give the same rows,
the same rejects and the same line numbers.

Good rows come out as a typed Arrow table (date32, time64, decimal128, int32, string; NULL for
empty fields), ready for a binary COPY. Malformed rows come out as :class:`Reject` records
naming the file, line, field and reason, with the raw line.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from opsbook.datasets import DatasetSpec
from opsbook.errors import SourceError
from opsbook.sources.city_types import arrow_schema, convert
from opsbook.sources.text import BLOCK_BYTES, decode_line, is_utf8, iter_blocks, non_ascii_lines, raw_lines, transcode

MAX_RAW_CHARS = 10_000  # a quarantined line keeps at most this much of its raw text
MAX_REASON_VALUE = 60  # a reason quotes at most this much of the value that failed


@dataclass(frozen=True, slots=True)  # slots: a junk block can make hundreds of thousands
class Reject:
    """A quarantined input row."""

    source_file: str
    line_number: int
    field: str
    reason: str
    raw: str


@dataclass
class Batch:
    """The outcome of one block: typed good rows and the rejects."""

    rows: pa.Table
    rejects: list[Reject]
    first_line: int
    last_line: int


@dataclass
class PartStats:
    """What reading one CSV part found: rows, rejects, encodings, skipped blank lines."""

    label: str
    rows: int = 0
    rejected: int = 0
    blank_lines: int = 0
    lines: int = 0
    # encoding -> lines decoded with it (UTF-8 lines of the fast path are not counted: 0)
    encodings: dict[str, int] = field(default_factory=dict)
    bytes: int = 0  # bytes of data lines read (the header excluded)
    rejected_bytes: int = 0  # bytes of the lines quarantined
    # a hash of each good row, one array per batch: a row that appears again in another part of
    # the same year is input given twice (see opsbook.toronto.intake)
    row_hashes: list[np.ndarray] = field(default_factory=list, repr=False)

    def add_block(self, block: bytes, rejects: list[Reject], first_line: int) -> None:
        """Count a block's bytes, and the bytes of its rejected lines."""
        self.bytes += len(block)
        if not rejects:
            return
        lines = block.split(b"\n")
        for r in rejects:
            index = r.line_number - first_line
            self.rejected_bytes += len(lines[index]) + 1 if 0 <= index < len(lines) else len(r.raw)

    @property
    def encoding(self) -> str:
        used = list(self.encodings)
        if not used:
            return "ascii"
        if len(used) == 1:
            return used[0]
        return "mixed (" + ", ".join(f"{e}: {n:,} lines" if n else e for e, n in self.encodings.items()) + ")"


# --- header ----------------------------------------------------------------------------------


def read_header(stream: IO[bytes], label: str, spec: DatasetSpec) -> tuple[list[str], int]:
    """Read and check the header line; returns the source's column names and its byte length.

    Columns may come in any order; every spec column must be present and no unknown column
    may appear (its values would be lost silently).
    """
    first = stream.readline(1 << 20)
    if not first:
        raise SourceError(f"{label}:1: the file is empty (expected a header line naming the columns)")
    kind = _binary_kind(first)
    if kind:
        raise SourceError(
            f"{label}:1: the header is not text in {' or '.join(spec.source.encodings)}: the file looks like "
            f"{kind}; export it as a CSV in one of those encodings"
        )
    if not first.endswith(b"\n") and len(first) >= 1 << 20:
        raise SourceError(f"{label}:1: the first line is over 1 MiB: not a CSV header")
    text, _ = decode_line(first.removeprefix(codecs.BOM_UTF8), spec.source.encodings)
    if text is None or "\x00" in text:
        raise SourceError(f"{label}:1: the header is not text in {' or '.join(spec.source.encodings)}")
    text = text.rstrip("\r\n")
    if "\r" in text:
        raise SourceError(
            f"{label}:1: the header line holds a carriage return: lines must end in LF or CRLF, not CR alone"
        )
    names = [n.strip().lower() for n in next(csv.reader([text], delimiter=spec.source.delimiter), [])]
    expected = spec.column_names
    missing = [c for c in expected if c not in names]
    unknown = [n for n in names if n not in expected]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(repr(u) for u in unknown)}")
        if duplicated:
            problems.append(f"repeated column(s) {', '.join(duplicated)}")
        raise SourceError(
            f"{label}:1: header does not match dataset {spec.name!r}: {'; '.join(problems)} "
            f"(expected {', '.join(expected)})"
        )
    return names, len(first)


# Leading bytes of files that are not CSV text in any accepted encoding (UTF-32 before
# UTF-16: its byte order mark starts with UTF-16's).
_SIGNATURES = [
    (codecs.BOM_UTF32_LE, "UTF-32 (its byte order mark)"),
    (codecs.BOM_UTF32_BE, "UTF-32 (its byte order mark)"),
    (codecs.BOM_UTF16_LE, "UTF-16 (its byte order mark)"),
    (codecs.BOM_UTF16_BE, "UTF-16 (its byte order mark)"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook, or a .zip renamed .csv)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"%PDF", "a PDF document"),
]


def _binary_kind(first: bytes) -> str | None:
    """What a first line that is not CSV text looks like, for the error message; None if unknown."""
    for signature, kind in _SIGNATURES:
        if first.startswith(signature):
            return kind
    head = first[:200]
    # ASCII text in UTF-16 without a byte order mark: every other byte is NUL
    if len(head) >= 8 and head[1::2].count(0) >= len(head) // 2 - 1 and head[::2].count(0) == 0:
        return "UTF-16 little-endian without a byte order mark (a NUL byte after every character)"
    if len(head) >= 8 and head[::2].count(0) >= len(head) // 2 - 1 and head[1::2].count(0) == 0:
        return "UTF-16 big-endian without a byte order mark (a NUL byte before every character)"
    return None


def read_part(
    stream: IO[bytes],
    label: str,
    spec: DatasetSpec,
    partition_year: int | None,
    stats: PartStats | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Batch]:
    """Stream one CSV part as batches of good rows and rejects.

    Parameters
    ----------
    stream
        The part's bytes (a file, a ZIP member, a GCS object).
    label
        How messages name the part, e.g. ``parking-tickets-2016.zip:Parking_Tags_Data_2016_1.csv``.
    spec
        The dataset: column names, types and formats, and accepted encodings.
    partition_year
        Rows whose partition date falls outside this year are rejected (None: no check).

    Raises
    ------
    SourceError
        When the part cannot be read at all (empty, bad header, corrupt archive).
    """
    stats = stats or PartStats(label)
    try:
        names, _ = read_header(stream, label, spec)
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        # a ZIP member corrupt in its first bytes fails while the header is read
        raise SourceError(f"{label}:1: unreadable: {exc}") from exc
    checker = _Checker(spec, names, label, partition_year)
    try:
        for first_line, block, lines in iter_blocks(stream, 2, block_bytes, spec.source.max_line_bytes, label):
            batch = checker.fast(block, first_line, lines, stats)
            if batch is None:
                batch = checker.exact(block, first_line, stats)
            stats.add_block(block, batch.rejects, first_line)
            stats.rows += batch.rows.num_rows
            stats.rejected += len(batch.rejects)
            yield batch
    except (EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        # zipfile and zlib raise these for truncated or corrupt members
        line = stats.lines + 1
        raise SourceError(f"{label}: unreadable after line {line:,}: {exc}") from exc


class _Checker:
    """Per-part state: column order, conversions, and both parsing paths."""

    def __init__(self, spec: DatasetSpec, names: list[str], label: str, partition_year: int | None):
        self.spec = spec
        self.source_names = names
        self.label = label
        self.partition_year = partition_year
        self.width = len(names)
        self.encodings = spec.source.encodings
        self.schema = arrow_schema(spec)

    # -- fast path: valid UTF-8, one row per physical line ----------------------------------

    def fast(self, block: bytes, first_line: int, lines: int, stats: PartStats) -> Batch | None:
        """Arrow's parser over the block; None when the exact path must decide instead."""
        if b"\x00" in block:
            return None
        ascii_only = block.isascii()
        # Arrow's parser would meet the bytes that are not UTF-8 anyway; checking first (fast)
        # keeps it from handing undecodable rows to the invalid-row handler, which pyarrow
        # reports as an ignored exception on stderr
        batch = self._parse(block, first_line, lines) if ascii_only or is_utf8(block) else None
        # UTF-8 lines are not counted (it would cost a pass); other encodings are
        encodings = {} if ascii_only or batch is None else {"utf-8": 0}
        if batch is None and not ascii_only:
            spans = non_ascii_lines(block)
            # not UTF-8: decode each non-ASCII line with the first encoding that fits (ASCII
            # lines read the same in all of them) and parse the UTF-8 re-encoding
            transcoded = transcode(block, spans, self.encodings)
            if transcoded is None:
                return None  # a line fits no encoding: the exact path quarantines it
            block, encodings = transcoded
            batch = self._parse(block, first_line, lines)
        if batch is None:
            return None
        stats.lines += batch.last_line - first_line + 1
        for encoding, count in encodings.items():
            stats.encodings[encoding] = stats.encodings.get(encoding, 0) + count
        return batch

    def _parse(self, block: bytes, first_line: int, lines: int, threads: bool = True) -> Batch | None:
        invalid: list[tuple[int, str]] = []

        def on_invalid(row) -> str:
            # the threaded pass only learns that there are invalid rows (it is parsed again
            # without threads, which knows their line numbers): keep no text from it
            invalid.append((row.number, "" if threads else row.text))
            return "skip"

        try:
            table = pa_csv.read_csv(
                io.BytesIO(block),
                read_options=pa_csv.ReadOptions(
                    column_names=self.source_names,
                    use_threads=threads,
                    block_size=(1 << 20) if threads else len(block) + 1,
                ),
                parse_options=pa_csv.ParseOptions(delimiter=self.spec.source.delimiter, invalid_row_handler=on_invalid),
                convert_options=pa_csv.ConvertOptions(
                    column_types={n: pa.string() for n in self.source_names},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
        except pa.ArrowInvalid:
            return None  # not UTF-8, or a quoting problem
        if threads and invalid:
            # the threaded parser does not know the invalid rows' line numbers
            del invalid, table
            return self._parse(block, first_line, lines, threads=False)
        if table.num_rows + len(invalid) != lines or any(n is None for n, _ in invalid):
            return None  # blank lines or quoted line breaks: line numbers need the exact path
        bad_numbers = {n for n, _ in invalid}
        if invalid:
            line_numbers = np.array(
                [first_line + i for i in range(lines) if (i + 1) not in bad_numbers], dtype=np.int64
            )
        else:
            line_numbers = np.arange(first_line, first_line + lines, dtype=np.int64)
        rejects = [
            Reject(self.label, first_line + n - 1, "", self._width_reason(text), text[:MAX_RAW_CHARS])
            for n, text in invalid
        ]
        table = table.select(self.spec.column_names)
        good, more = self.check(table, line_numbers, lambda idx: raw_lines(block, idx - first_line, "utf-8"))
        rejects = sorted(rejects + more, key=lambda r: r.line_number)
        return Batch(good, rejects, first_line, first_line + lines - 1)

    def _width_reason(self, text: str) -> str:
        delimiter = self.spec.source.delimiter
        if '"' in text:
            got = len(next(csv.reader([text], delimiter=delimiter), []))
        else:  # no quoting: the fields are the delimiters plus one (a junk file has many such rows)
            got = text.count(delimiter) + 1 if text else 0
        return _width_text(got, self.width)

    # -- exact path: line by line ------------------------------------------------------------

    def exact(self, block: bytes, first_line: int, stats: PartStats) -> Batch:
        raw_lines = block.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        decoded: list[str] = []
        rejects: list[Reject] = []
        usable: list[int] = []  # indexes into raw_lines that decoded
        for i, raw in enumerate(raw_lines):
            raw = raw.removesuffix(b"\r")
            text, encoding = decode_line(raw, self.encodings)
            if text is None:
                reason = f"bytes not valid in {' or '.join(self.encodings)}"
                rejects.append(Reject(self.label, first_line + i, "", reason, raw.decode("latin-1")[:MAX_RAW_CHARS]))
                continue
            if not raw.isascii():
                stats.encodings[encoding] = stats.encodings.get(encoding, 0) + 1
            decoded.append(text)
            usable.append(i)
        stats.lines += len(raw_lines)

        columns: list[list[str]] = [[] for _ in range(self.width)]
        numbers: list[int] = []
        raws: dict[int, str] = {}
        for start, end, fields, problem in self._records(decoded):
            line = first_line + usable[start]
            raw_text = "\n".join(decoded[start:end])
            if problem:
                rejects.append(Reject(self.label, line, "", problem, raw_text[:MAX_RAW_CHARS]))
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                stats.blank_lines += 1
                continue
            if len(fields) != self.width:
                rejects.append(Reject(self.label, line, "", self._width_reason(raw_text), raw_text[:MAX_RAW_CHARS]))
                continue
            nul = next((n for n, v in zip(self.source_names, fields, strict=True) if "\x00" in v), None)
            if nul is not None:
                reason = "contains a NUL byte (0x00), which a PostgreSQL text value cannot hold"
                rejects.append(Reject(self.label, line, nul, f"{nul}: {reason}", raw_text[:MAX_RAW_CHARS]))
                continue
            for target, value in zip(columns, fields, strict=True):
                target.append(value)
            numbers.append(line)
            raws[line] = raw_text
        table = pa.table(
            {
                n: pa.array([v if v else None for v in c], pa.string())
                for n, c in zip(self.source_names, columns, strict=True)
            }
        )
        table = table.select(self.spec.column_names)
        good, more = self.check(table, np.array(numbers, dtype=np.int64), lambda idx: [raws[int(i)] for i in idx])
        rejects.extend(more)
        rejects.sort(key=lambda r: r.line_number)
        last = first_line + len(raw_lines) - 1
        return Batch(good, rejects, first_line, last)

    def _records(self, decoded: list[str]) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
        """CSV records of the decoded lines: ``(first index, end index, fields, problem)``.

        A quoted field may span lines. A record that spans lines and still does not parse
        into a row of the right width (a stray quote, most often) must not swallow the lines
        after it: its first line is reported with a problem, and parsing starts again on the
        next line, so every line is either in a row or reported.
        """
        pos = 0
        while pos < len(decoded):
            reader = csv.reader(_LineFeed(decoded, pos), delimiter=self.spec.source.delimiter, strict=True)
            while True:
                start = pos + reader.line_num
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    if str(exc) == "unexpected end of data":
                        problem = "malformed CSV: a quoted field opened on this line is never closed"
                    else:
                        problem = f"malformed CSV: {exc}"
                    yield start, start + 1, None, problem
                    pos = start + 1
                    break
                end = pos + reader.line_num
                if end - start > 1 and len(fields) != self.width:
                    got = len(next(csv.reader([decoded[start]], delimiter=self.spec.source.delimiter), []))
                    yield (
                        start,
                        start + 1,
                        None,
                        f"malformed CSV: a quoted field opened on this line runs on over {end - start - 1} more "
                        f"line(s) without making a row of {self.width} fields (this line alone has {got})",
                    )
                    pos = start + 1
                    break
                yield start, end, fields, None

    # -- typed checks, shared by both paths ---------------------------------------------------

    def check(self, table: pa.Table, line_numbers: np.ndarray, raw_of) -> tuple[pa.Table, list[Reject]]:
        """Validate and canonicalize every column; returns (good rows, rejects)."""
        n = table.num_rows
        if n == 0:
            return table, []
        bad = np.zeros(n, dtype=bool)
        reasons: list[tuple[np.ndarray, str, str]] = []  # (mask, field, reason template)
        out = {}
        for col in self.spec.columns:
            values = table.column(col.name)
            if col.type != "text":
                values = pc.utf8_trim_whitespace(values)
            converted, problems = convert(col, values, self.partition_year, col.name == self.spec.partition.column)
            out[col.name] = converted
            for mask, reason in problems:
                if mask.any():
                    reasons.append((mask, col.name, reason))
                    bad |= mask
        good_table = pa.Table.from_arrays([out[c.name] for c in self.spec.columns], schema=self.schema)
        if not bad.any():
            return good_table, []
        rejects = []
        bad_idx = np.flatnonzero(bad)
        raw = raw_of(line_numbers[bad_idx])
        first_reason: dict[int, tuple[str, list[str]]] = {}
        for mask, name, reason in reasons:
            for i in np.flatnonzero(mask):
                value = table.column(name)[int(i)].as_py()
                text = reason.format(value=_Shown(value), year=self.partition_year)
                entry = first_reason.setdefault(int(i), (name, []))
                entry[1].append(f"{name}: {text}")
        for k, i in enumerate(bad_idx):
            name, texts = first_reason[int(i)]
            rejects.append(Reject(self.label, int(line_numbers[i]), name, "; ".join(texts), raw[k][:MAX_RAW_CHARS]))
        keep = pa.array(~bad)
        return good_table.filter(keep), rejects


@functools.lru_cache(maxsize=256)
def _width_text(got: int, expected: int) -> str:
    """One string per field count, shared by every reject that has it."""
    return f"wrong column count: {got} fields, expected {expected}"


class _Shown:
    """A value as a reason quotes it: its repr, cut short when long (a 100,000-character field
    must not make a 100,000-character reason; the raw line keeps the text)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        value = self.value
        if isinstance(value, str) and len(value) > MAX_REASON_VALUE:
            return f"{value[: MAX_REASON_VALUE - 20]!r}... ({len(value):,} characters)"
        return repr(value)


class _LineFeed:
    """Feeds lines to csv.reader from ``start`` on; line_num then counts physical lines."""

    def __init__(self, lines: list[str], start: int = 0):
        self._lines = lines
        self._next = start

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._next >= len(self._lines):
            raise StopIteration
        self._next += 1
        return self._lines[self._next - 1] + "\n"
