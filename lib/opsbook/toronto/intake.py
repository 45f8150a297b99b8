"""What a year's input must satisfy before it may replace the year's rows.

A load replaces a whole year, so input that is worse than what the table holds must never
get that far with a PASS. Four guards, each refusing with the files and figures in words:

- **rejects**: the share of rejected rows *and* of rejected bytes stays within
  ``max_rejected_ratio`` (a good head followed by megabytes of garbage is one bad "line" but
  most of the bytes); reading stops as soon as the limit can no longer be met;
- **repeats**: the rows of one part do not appear again in another part of the same year (a
  ZIP beside the CSV it holds, a member stored twice, a copy under another name, parts that
  overlap); rows are compared by their typed values, hashed by DuckDB outside the GIL; a few
  equal rows (``REPEAT_TOLERANCE``) are two tickets that happen to read the same, and pass;
- **shrink**: the year does not lose more than ``max_shrink_ratio`` of the rows the table
  holds, unless ``allow_shrink`` says that is intended (a truncated export);
- (line length is bounded while reading, in :mod:`opsbook.sources.city_csv`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from opsbook.errors import CheckFailed

if TYPE_CHECKING:
    from opsbook.sources.city_csv import PartStats


# repeated rows a later part may hold before the year is refused: at most this many, or this
# share of the part's rows, whichever is larger (two real tickets may read the same)
REPEAT_TOLERANCE = (10, 0.001)


class InputRefused(CheckFailed):
    """The year's input would replace the year with less, or doubled, data (too many rejects
    are a plain CheckFailed: the year's status says "rejected-too-many")."""


class RejectBudget:
    """The rejected bytes a year may have, known before reading (its parts' sizes), so that
    reading stops once the limit cannot be met instead of spooling every bad line first."""

    def __init__(self, year: int, total_bytes: int, max_ratio: float) -> None:
        self.year = year
        self.total_bytes = total_bytes
        self.max_ratio = max_ratio

    def check(self, parts: Sequence[PartStats]) -> None:
        rejected = sum(p.rejected_bytes for p in parts)
        if rejected > self.max_ratio * self.total_bytes:
            read = sum(p.bytes for p in parts)
            raise CheckFailed(
                f"{self.year}: stopped reading after {read:,} of {self.total_bytes:,} bytes: {rejected:,} bytes "
                f"of rejected lines already, more than {self.max_ratio:.1%} of the year's input can hold "
                f"(in {_worst(parts)}); the previous contents were kept"
            )


def _worst(parts: Sequence[PartStats]) -> str:
    part = max(parts, key=lambda p: p.rejected_bytes)
    return f"{part.label} ({part.rejected_bytes:,} bytes rejected)"


class RowHasher:
    """A 64-bit hash of each row of Arrow tables, computed by DuckDB (vectorized, without
    holding the GIL: the load's COPY goes on meanwhile). One per thread that reads."""

    def __init__(self) -> None:
        import duckdb

        self._con = duckdb.connect()

    def __call__(self, rows) -> np.ndarray:
        if not rows.num_rows:
            return np.empty(0, np.uint64)
        columns = ", ".join('"' + c.replace('"', '""') + '"' for c in rows.column_names)
        self._con.register("batch_rows", rows)
        try:
            return self._con.execute(f"SELECT hash({columns}) AS h FROM batch_rows").fetchnumpy()["h"]
        finally:
            self._con.unregister("batch_rows")

    def close(self) -> None:
        self._con.close()


def repeated_rows(parts: Sequence[PartStats]) -> list[tuple[str, str, int]]:
    """``(earlier part, later part, rows)`` for each pair of parts whose rows repeat: each row
    of the later part that is also a row of the earlier one counts once."""
    if len(parts) < 2:
        return []
    hashes = [_distinct(np.concatenate(p.row_hashes)) if p.row_hashes else np.empty(0, np.uint64) for p in parts]
    every = np.concatenate(hashes)
    owner = np.repeat(np.arange(len(parts)), [len(h) for h in hashes])
    order = np.argsort(every, kind="stable")  # equal hashes keep part order: first owner first
    every, owner = every[order], owner[order]
    same = np.flatnonzero(every[1:] == every[:-1]) + 1
    if not len(same):
        return []
    # each repeat is charged to (the first part holding the line, the part repeating it)
    first_owner = owner[np.maximum.accumulate(np.where(np.r_[True, every[1:] != every[:-1]], np.arange(len(every)), 0))]
    pairs: dict[tuple[int, int], int] = {}
    for earlier, later in zip(first_owner[same].tolist(), owner[same].tolist(), strict=True):
        pairs[(earlier, later)] = pairs.get((earlier, later), 0) + 1
    return [(parts[a].label, parts[b].label, n) for (a, b), n in sorted(pairs.items())]


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (np.unique is ten times slower on a million hashes)."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def check_repeats(year: int, parts: Sequence[PartStats]) -> None:
    most, share = REPEAT_TOLERANCE
    repeats = [(a, b, n) for a, b, n in repeated_rows(parts) if n > max(most, share * _lines(parts, b))]
    if not repeats:
        return
    said = "; ".join(
        f"{n:,} of the {_lines(parts, later):,} rows of {later} are rows of {earlier}" for earlier, later, n in repeats
    )
    raise InputRefused(
        f"{year}: the input holds the same rows twice: {said}. Remove the copy (a ZIP beside the CSV it "
        "holds, a member stored twice, a backup under another name) and load again; the previous contents "
        "were kept"
    )


def _lines(parts: Sequence[PartStats], label: str) -> int:
    return next(sum(len(h) for h in p.row_hashes) for p in parts if p.label == label)


def check_shrink(year: int, held: int | None, rows: int, max_ratio: float, allow: bool, files: str) -> None:
    """Refuse when ``rows`` (the input's good rows) is markedly fewer than ``held`` (what the
    year's partition holds now), unless ``allow``."""
    if allow or not held or rows >= held * (1 - max_ratio):
        return
    raise InputRefused(
        f"{year}: the input ({files}) holds {rows:,} good rows; the table holds {held:,} for the year "
        f"({(held - rows) / held:.1%} fewer, limit {max_ratio:.0%}). The previous contents were kept. If the "
        f"year really has fewer rows now, load it with -p allow_shrink=true"
    )
