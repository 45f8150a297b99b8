"""City CSV values as typed Arrow arrays: the column types a dataset spec names, the formats the
City writes (``YYYYMMDD`` dates, ``HHMM`` times without leading zeros), and the reasons a value
fails (an impossible date, a non-numeric fine, mojibake).

Vectorized over a block's column at a time; a value that fails becomes NULL in the typed array
and a (mask, reason) pair for the reader to quarantine its row.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opsbook.datasets import Column, DatasetSpec
from opsbook.errors import SourceError

_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def as_mask(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean mask as numpy; NULL counts as False."""
    if mask.null_count:
        mask = pc.fill_null(mask, False)
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def arrow_type(col: Column) -> pa.DataType:
    """The Arrow type of a column's loaded values (what binary COPY sends)."""
    return {
        "text": pa.string(),
        "integer": pa.int32(),
        "bigint": pa.int64(),
        "numeric": pa.decimal128(col.precision, col.scale or 0),
        "date": pa.date32(),
        "time": pa.time64("us"),
    }[col.type]


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in spec.columns])


def convert(col: Column, values: pa.ChunkedArray, partition_year: int | None, is_partition: bool):
    """Typed values (NULL where empty or bad), and the (mask, reason) pairs of values that fail."""
    problems: list[tuple[np.ndarray, str]] = []
    if col.type != "text":
        values = pc.utf8_trim_whitespace(values)
        blank = as_mask(pc.equal(pc.binary_length(values), 0))
        if blank.any():  # whitespace only: empty
            values = pc.if_else(pa.array(blank), pa.scalar(None, pa.string()), values)
    empty = as_mask(pc.is_null(values))
    if col.required:
        problems.append((empty, "missing (the column is required)"))
    if col.type == "text":
        problems.append((_mojibake(values), "{value!r} reads as UTF-8 text decoded as Windows-1252 (mojibake)"))
        return values, problems
    if col.type == "date" and col.format in ("yyyymmdd", None, "iso"):
        if col.format == "yyyymmdd":
            digits, shaped = _as_int(values, 8, 8)
            expected = "YYYYMMDD"
        else:
            shaped = as_mask(pc.match_substring_regex(values, r"^\d{4}-\d{2}-\d{2}$"))
            digits = _to_int(pc.replace_substring(values, "-", ""), shaped)
            expected = "YYYY-MM-DD"
        problems.append((~empty & ~shaped, f"unparsable date {{value!r}} (expected {expected})"))
        year, month, day = digits // 10000, (digits // 100) % 100, digits % 100
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        limit = _DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
        valid = shaped & (month >= 1) & (month <= 12) & (day >= 1) & (day <= limit)
        problems.append((shaped & ~valid, "impossible date {value!r}"))
        if is_partition and partition_year is not None:
            problems.append((valid & (year != partition_year), "date {value!r} is outside the file's year {year}"))
        months = np.where(valid, (year - 1970) * 12 + month - 1, 0).astype("datetime64[M]")
        days = (months.astype("datetime64[D]") + np.where(valid, day - 1, 0)).astype(np.int64)
        return _typed(days.astype(np.int32), pa.date32(), valid), problems
    if col.type == "time" and col.format in ("hhmm", None):
        digits, shaped = _as_int(values, 1, 4)
        problems.append((~empty & ~shaped, "unparsable time {value!r} (expected HHMM)"))
        valid = shaped & (digits // 100 < 24) & (digits % 100 < 60)
        problems.append((shaped & ~valid, "impossible time {value!r}"))
        micros = ((digits // 100) * 3600 + (digits % 100) * 60) * 1_000_000
        return _typed(np.where(valid, micros, 0), pa.time64("us"), valid), problems
    if col.type in ("integer", "bigint"):
        digits, shaped = _as_int(pc.utf8_ltrim(values, "+"), 1, 19, signed=True)
        problems.append((~empty & ~shaped, "not an integer: {value!r}"))
        bound = 2**31 if col.type == "integer" else 2**63
        in_range = shaped & (digits < bound) & (digits >= -bound)
        problems.append((shaped & ~in_range, "integer out of range: {value!r}"))
        return _typed(np.where(in_range, digits, 0), arrow_type(col), in_range), problems
    if col.type == "numeric":
        whole, scale = col.precision - (col.scale or 0), col.scale or 0
        number = r"^[+-]?(\d+(\.\d*)?|\.\d+)$"
        shaped = as_mask(pc.match_substring_regex(values, number))
        problems.append((~empty & ~shaped, "not a number: {value!r}"))
        fits_pattern = (
            rf"^[+-]?0*(\d{{0,{whole}}})(\.\d{{0,{scale}}}0*)?$" if scale else rf"^[+-]?0*\d{{0,{whole}}}(\.0*)?$"
        )
        fits = shaped & as_mask(pc.match_substring_regex(values, fits_pattern))
        problems.append((shaped & ~fits, f"{{value!r}} does not fit numeric({col.precision},{scale})"))
        safe = pc.if_else(pa.array(fits), values, pa.scalar("0"))
        typed = pc.cast(pc.replace_substring_regex(safe, r"^\+", ""), arrow_type(col))
        return pc.if_else(pa.array(fits), typed, pa.scalar(None, arrow_type(col))), problems
    raise SourceError(f"column {col.name}: type {col.type} with format {col.format} is not supported")


# A Windows-1252 character for a UTF-8 lead byte (C2-F4), then one for a continuation byte
# (80-BF): how "’" (E2 80 99) reads when UTF-8 is decoded as Windows-1252 ("â€™")
_MOJIBAKE = re.compile("[\u00c2-\u00f4][\u00a0-\u00bf" + bytes(range(0x80, 0xA0)).decode("cp1252", "ignore") + "]")


def _mojibake(values: pa.ChunkedArray) -> np.ndarray:
    """Mask of the values that are UTF-8 text decoded as Windows-1252 (and stored as UTF-8).

    A value counts when encoding it back to Windows-1252 gives valid UTF-8 that differs and is
    itself Windows-1252 text: "Oâ€™CONNOR DR" (really "O’CONNOR DR"). Plain accented text
    ("CÔTÉ CRT", "O’CONNOR DR") does not: for its Windows-1252 bytes to be valid UTF-8, an
    accented letter must sit right before a symbol such as ’, © or «, and the UTF-8 reading
    must be Windows-1252 text as well.
    Only non-ASCII values are looked at, so ASCII columns cost one vectorized pass.
    """
    mask = np.zeros(len(values), dtype=bool)
    if not len(values):
        return mask
    ascii_only = as_mask(pc.string_is_ascii(values)) | as_mask(pc.is_null(values))
    if ascii_only.all():
        return mask
    for i in np.flatnonzero(~ascii_only):
        text = values[int(i)].as_py()
        if not _MOJIBAKE.search(text):
            continue
        try:
            fixed = text.encode("cp1252").decode("utf-8")
            fixed.encode("cp1252")
        except UnicodeError:
            continue
        mask[i] = fixed != text
    return mask


def _typed(values: np.ndarray, type_: pa.DataType, valid: np.ndarray) -> pa.Array:
    """Integers (days, microseconds, plain numbers) as ``type_``, NULL where not ``valid``."""
    storage = pa.int32() if type_ == pa.date32() else pa.int64()
    return pa.array(values, type=storage, mask=~valid).cast(type_)


def _as_int(values: pa.ChunkedArray, shortest: int, longest: int, signed: bool = False):
    """(int64 values, mask of values that are only ASCII digits of an allowed length).

    Clean columns take one cast; a column with any bad value is masked first, then cast.
    NULLs are not "shaped" (the caller decides whether empty is allowed).
    """
    length = pc.binary_length(values)
    length_ok = as_mask(pc.and_(pc.greater_equal(length, shortest), pc.less_equal(length, longest)))
    try:
        digits = np.asarray(pc.fill_null(pc.cast(values, pa.int64()), 0).to_numpy(zero_copy_only=False))
        # a successful cast still admits a sign, which only integers may carry
        shaped = length_ok & ~as_mask(pc.is_null(values)) & (signed | (digits >= 0))
        return np.where(shaped, digits, 0), shaped
    except (pa.ArrowInvalid, OverflowError):
        pattern = r"^-?\d+$" if signed else r"^\d+$"
        shaped = length_ok & as_mask(pc.match_substring_regex(values, pattern))
        return _to_int(values, shaped), shaped


def _to_int(values: pa.ChunkedArray, mask: np.ndarray) -> np.ndarray:
    """int64 of the digit strings where ``mask`` holds (0 elsewhere), vectorized."""
    safe = pc.if_else(pa.array(mask), values, pa.scalar("0"))
    return np.asarray(pc.cast(safe, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
