"""Windows of partitions as typed parameter values: years, days, and lists of known names.

Each type validates once, from the text a user writes (``-p years=2016-2018``), into an
object procedures use as it is (iterate the years, read a window's bounds); it is written back
as the same text into the notebook, the report and the run log.

- :class:`Years`: ``2017``, ``2016-2018``, ``2011,2015-2016``; ``latest`` (the newest year the
  source holds, resolved by the procedure); empty: every year the table holds.
- :class:`Days`: ``2025-11-01..2025-11-07`` or one day, both ends included; ``yesterday``,
  ``today-7..today-1`` (resolved to dates when validated, so the record shows the dates); empty:
  no window.
- :func:`names`: a comma list of known names (steps, targets, programs), kept in the known
  order (for steps, their dependency order).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer
from pydantic_core import core_schema

MIN_YEAR, MAX_YEAR = 1900, 2100
MAX_DAYS = 3660
_YEAR_PART = re.compile(r"^\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?$")
_RELATIVE_DAY = re.compile(r"^(today|yesterday)\s*(?:([+-])\s*(\d{1,4}))?$")


def year_list(spec: str) -> list[int]:
    """``"2016-2018"`` -> ``[2016, 2017, 2018]``; ``"2011,2015-2016"`` -> ``[2011, 2015, 2016]``."""
    years: set[int] = set()
    for part in str(spec).split(","):
        match = _YEAR_PART.match(part)
        if not match:
            raise ValueError(
                f"{part.strip()!r} is not a year or a range of years (expected e.g. 2017, 2016-2018 or 2011,2015-2016)"
            )
        first = int(match.group(1))
        last = int(match.group(2) or first)
        for year in (first, last):
            if not MIN_YEAR <= year <= MAX_YEAR:
                raise ValueError(f"year {year} is outside {MIN_YEAR}-{MAX_YEAR}")
        if last < first:
            raise ValueError(f"range {first}-{last} ends before it starts")
        years.update(range(first, last + 1))
    return sorted(years)


def format_years(years: Iterable[int]) -> str:
    """The shortest spec for a set of years: ``[2011, 2015, 2016]`` -> ``"2011,2015-2016"``."""
    runs: list[list[int]] = []
    for year in sorted(set(years)):
        if runs and year == runs[-1][-1] + 1:
            runs[-1].append(year)
        else:
            runs.append([year])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def format_days(days: Iterable[dt.date]) -> str:
    """The shortest spec for a set of days: consecutive days as ``first..last``, the rest by
    commas (``2025-11-03..2025-11-05,2025-11-09``)."""
    runs: list[list[dt.date]] = []
    for day in sorted(set(days)):
        if runs and day == runs[-1][-1] + dt.timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


class _TextType:
    """A value validated from its text and serialized back to it (pydantic core schema)."""

    @classmethod
    def parse(cls, value: Any):  # pragma: no cover - each subclass defines it
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse, serialization=core_schema.to_string_ser_schema(when_used="json-unless-none")
        )


@dataclass(frozen=True)
class Years(_TextType):
    """A window of years; see the module docstring for its forms."""

    values: tuple[int, ...] = ()
    latest: bool = False

    @classmethod
    def parse(cls, value: Any) -> Years:
        if isinstance(value, Years):
            return value
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a year")
        if isinstance(value, int):  # YAML reads `years: 2017` as an integer
            value = str(value)
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a year window")
        text = value.strip()
        if not text:
            return cls()
        if text.lower() == "latest":
            return cls(latest=True)
        return cls(tuple(year_list(text)))

    @property
    def everything(self) -> bool:
        """True for the empty window: every year there is."""
        return not self.values and not self.latest

    def resolve(self, available: Iterable[int]) -> Years:
        """Concrete years: ``latest`` becomes the newest of ``available``, empty becomes all of them."""
        if self.values:
            return self
        have = sorted(set(available))
        if self.latest:
            return Years(tuple(have[-1:]))
        return Years(tuple(have))

    def __iter__(self) -> Iterator[int]:
        if self.latest:
            raise ValueError("the window 'latest' names no year until it is resolved against the source")
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, year: object) -> bool:
        return year in self.values

    def __str__(self) -> str:
        return "latest" if self.latest else format_years(self.values)


def _relative_day(text: str, today: dt.date) -> dt.date:
    match = _RELATIVE_DAY.match(text.strip().lower())
    if match:
        base = today - dt.timedelta(days=1) if match.group(1) == "yesterday" else today
        offset = int(match.group(3) or 0)
        return base + dt.timedelta(days=-offset if match.group(2) == "-" else offset)
    return dt.date.fromisoformat(text.strip())


@dataclass(frozen=True)
class Days(_TextType):
    """A window of days, both ends included; empty when neither end is set."""

    first: dt.date | None = None
    last: dt.date | None = None

    @classmethod
    def parse(cls, value: Any, today: dt.date | None = None) -> Days:
        if isinstance(value, Days):
            return value
        if isinstance(value, dt.date):
            return cls(value, value)
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a day window (expected e.g. 2025-11-01..2025-11-07)")
        text = value.strip()
        if not text:
            return cls()
        today = today or dt.datetime.now(dt.UTC).date()
        first, sep, last = text.partition("..")
        try:
            start = _relative_day(first, today)
            end = _relative_day(last, today) if sep else start
        except ValueError:
            raise ValueError(
                f"{text!r} is not a day window (expected e.g. 2025-11-01..2025-11-07, 2025-11-03, "
                "yesterday or today-7..today-1)"
            ) from None
        if end < start:
            raise ValueError(f"window {text!r} ends before it starts")
        if (end - start).days > MAX_DAYS:
            raise ValueError(f"window {text!r} is longer than ten years")
        return cls(start, end)

    def __bool__(self) -> bool:
        return self.first is not None

    @property
    def days(self) -> list[dt.date]:
        if not self:
            return []
        return [self.first + dt.timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def bounds(self, tz: dt.tzinfo = dt.UTC) -> tuple[dt.datetime, dt.datetime]:
        """The window as instants in ``tz``: [first day 00:00, the day after the last 00:00)."""
        start = dt.datetime.combine(self.first, dt.time(), tz)
        end = dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), tz)
        return start.astimezone(dt.UTC), end.astimezone(dt.UTC)

    def __str__(self) -> str:
        if not self:
            return ""
        if self.first == self.last:
            return self.first.isoformat()
        return f"{self.first.isoformat()}..{self.last.isoformat()}"


def known_subset(value: Any, known: Sequence[str], what: str) -> tuple[str, ...]:
    """``"ase, red_light"`` -> ``("red_light", "ase")``: known names, in ``known``'s order; an
    unknown or empty list raises, naming the known ones. A YAML list is taken as it is."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    asked = [str(item).strip() for item in items if str(item).strip()]
    unknown = [item for item in asked if item not in known]
    if unknown or not asked:
        raise ValueError(f"unknown {what}(s) {', '.join(unknown) or '(none)'}; {what}s: {', '.join(known)}")
    return tuple(item for item in known if item in asked)


def names(known: Sequence[str], what: str):
    """The parameter type of a comma list of ``known`` names (a tuple once validated)."""
    return Annotated[
        tuple[str, ...],
        BeforeValidator(lambda value: known_subset(value, known, what)),
        PlainSerializer(lambda value: ",".join(value), return_type=str, when_used="json"),
    ]
