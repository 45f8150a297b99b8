"""References: where a suite's expected totals come from.

A suite names its own references (``references:`` in the suite file: a function returning a
frame, or a CSV beside the suite); plugins may register more for a dataset (see
:mod:`opsbook.standins`). The frame has the partition columns (``year``, and ``month`` for a
monthly grain) and one column per measure's ``reference_column``.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

from opsbook.checks import spec as s


def names(suite: s.Suite) -> list[str]:
    """Every reference the suite can compare with: its own, then registered ones."""
    from opsbook import standins

    return list(dict.fromkeys([*suite.references, *standins.references(suite.dataset)]))


def check_name(suite: s.Suite, name: str) -> str:
    """``name`` when the suite knows it; else ValueError naming the known ones."""
    known = names(suite)
    if name not in known:
        from opsbook.run.params import closest

        hint = closest(name, known)
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise ValueError(
            f"unknown reference {name!r} for {suite.dataset}{did_you_mean} References: {', '.join(known) or 'none'}"
        )
    return name


def describe(suite: s.Suite, name: str) -> str:
    from opsbook import standins

    if name in suite.references:
        return suite.references[name].description
    found = standins.reference(suite.dataset, name)
    return found.description if found else ""


def tolerance(suite: s.Suite, name: str) -> s.Tolerance | None:
    ref = suite.references.get(name)
    return ref.tolerance if ref else None


def default_for(suite: s.Suite, sources: set[str | None]) -> str | None:
    """The reference to compare with when none is asked for: when every loaded partition came
    from one registered source that has a reference of its own (generated data is compared with
    the figures it was generated from), that one; else the suite's default."""
    from opsbook import standins

    if len(sources) == 1:
        (source,) = sources
        for name, ref in standins.references(suite.dataset).items():
            if source is not None and ref.source == source:
                return name
    return suite.default_reference


def frame(suite: s.Suite, name: str, years: tuple[int, ...]):
    """The reference's expected values for ``years`` (a pandas DataFrame)."""
    from opsbook import standins

    check_name(suite, name)
    if name in suite.references:
        ref = suite.references[name]
        if ref.csv:
            path = (suite.path.parent / ref.csv) if suite.path else Path(ref.csv)
            return _csv(path, path.stat().st_mtime_ns)
        return _function(ref.function, years, tuple(sorted(ref.kwargs.items())))
    return _function(standins.reference(suite.dataset, name).function, years, ())


@functools.lru_cache(maxsize=16)
def _function(function: str, years: tuple[int, ...], kwargs: tuple) -> Any:
    """Cached: the same suite often runs again in one process."""
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)(list(years), **dict(kwargs))


@functools.lru_cache(maxsize=16)
def _csv(path: Path, mtime_ns: int) -> Any:
    import pandas as pd

    return pd.read_csv(path)
