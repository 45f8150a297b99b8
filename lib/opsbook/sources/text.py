"""Bytes into lines: blocks that end at a line break, bounded line length, encodings.

Helpers of :mod:`opsbook.sources.city_csv` that know nothing of CSV: where lines end, which
lines are not ASCII, and re-encoding them as UTF-8 with the first encoding that fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np
import pyarrow as pa

from opsbook.errors import SourceError

BLOCK_BYTES = 4 << 20  # also bounds the rejects a block of junk lines makes at once


def decode_line(raw: bytes, encodings: list[str]) -> tuple[str | None, str | None]:
    for encoding in encodings:
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return None, None


def iter_blocks(
    stream: IO[bytes],
    first_line: int,
    block_bytes: int = BLOCK_BYTES,
    max_line_bytes: int | None = None,
    label: str = "",
) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(line number of the block's first line, bytes, line count)``; blocks end at a newline.

    A line that runs on past ``max_line_bytes`` without a line break stops the read at once
    (SourceError): memory stays within a block and one line, whatever the input holds.
    """
    carry = b""
    line = first_line
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            _refuse_long_line(data, line, max_line_bytes, label)
            carry = data
            continue
        block, carry = data[: cut + 1], data[cut + 1 :]
        count = block.count(b"\n")
        if max_line_bytes:
            _refuse_long_line_within(block, line, max_line_bytes, label)
            _refuse_long_line(carry, line + count, max_line_bytes, label)
        yield line, block, count
        line += count
    if carry:
        yield line, carry, 1


def _refuse_long_line(pending: bytes, line: int, max_line_bytes: int | None, label: str) -> None:
    if max_line_bytes and len(pending) > max_line_bytes:
        nul = " (NUL bytes: a damaged or padded file)" if pending[-4096:].count(b"\0") > 2048 else ""
        raise SourceError(
            f"{label}:{line:,}: the line runs on past {max_line_bytes:,} bytes without a line break{nul}; "
            "the file is damaged or not this dataset's CSV (the spec's source.max_line_bytes sets the limit)"
        )


def _refuse_long_line_within(block: bytes, first_line: int, max_line_bytes: int, label: str) -> None:
    """A line longer than the limit inside a block. Cheap on ordinary input: a probe every
    eighth of the limit finds a line break at once; only a stretch without one (a line of at
    least that length) is measured exactly."""
    step = max(1, max_line_bytes // 8)
    if all(block.find(b"\n", start, start + step) >= 0 for start in range(0, len(block) - step, step)):
        return
    import numpy as np

    breaks = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A)
    lengths = np.diff(breaks, prepend=-1) - 1  # each line's bytes, without its line break
    longest = int(np.argmax(lengths))
    if lengths[longest] > max_line_bytes:
        _refuse_long_line(
            block[breaks[longest] - lengths[longest] : breaks[longest]], first_line + longest, max_line_bytes, label
        )


def is_utf8(block: bytes) -> bool:
    try:
        pa.array([block], pa.large_binary()).cast(pa.large_string())  # Arrow's validator: ~5 GB/s
    except pa.ArrowInvalid:
        return False
    return True


def non_ascii_lines(block: bytes) -> list[tuple[int, int]]:
    """(start, end) byte spans of the lines holding a byte >= 0x80, in order."""
    data = np.frombuffer(block, dtype=np.uint8)
    high = np.flatnonzero(data >= 0x80)
    if not len(high):
        return []
    newlines = np.flatnonzero(data == 0x0A)
    if not len(newlines):
        return [(0, len(block))]  # one line, without a newline
    lines = np.unique(np.searchsorted(newlines, high))
    starts = np.where(lines > 0, newlines[np.maximum(lines - 1, 0)] + 1, 0)
    ends = np.where(lines < len(newlines), newlines[np.minimum(lines, len(newlines) - 1)], len(block))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def transcode(block: bytes, spans: list[tuple[int, int]], encodings: list[str]):
    """The block re-encoded as UTF-8, decoding each listed line with the first encoding that
    fits; also the count of lines per encoding. None when a line fits none of them."""
    pieces, counts, last = [], {}, 0
    for start, end in spans:
        text, encoding = decode_line(block[start:end], encodings)
        if text is None:
            return None
        counts[encoding] = counts.get(encoding, 0) + 1
        pieces.append(block[last:start])
        pieces.append(text.encode("utf-8"))
        last = end
    pieces.append(block[last:])
    return b"".join(pieces), counts


def raw_lines(block: bytes, offsets: np.ndarray, encoding: str) -> list[str]:
    lines = block.split(b"\n")
    return [lines[int(i)].removesuffix(b"\r").decode(encoding, "replace") for i in offsets]
