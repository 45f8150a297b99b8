"""Stand-ins: named sources and references that take the place of a team's real input.

A source parameter (``source``, ``cameras``) is a folder, a ``gs://`` prefix, or the name of a
registered stand-in source, which writes generated input somewhere and returns where (the
procedure then reads it like any other folder: the same paths as production). A check suite's
reference (the expected totals) is one of the suite's own, or a stand-in reference registered
for the dataset.

Stand-ins come from plugins, found through the ``opsbook.plugins`` entry point group (the
project's own demo is one: ``pyproject.toml``); nothing in the library names them. Generated
data must never reach a real database by accident: a parameter naming a stand-in source is
refused (exit 2) when ``DATABASE_URL`` points at a configured server, unless the run says
``allow_demo=true``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, create_model, model_validator

ENTRY_POINT_GROUP = "opsbook.plugins"
ALLOW = "allow_demo"
# the stand-in source the notebooks' defaults name, so that "Run all" works on a fresh machine
# (the demo plugin registers it; without the plugin, a default is refused like any unknown folder)
DEFAULT_SOURCE = "demo"


@dataclass(frozen=True)
class StandInSource:
    """A named source of generated input of one kind (a dataset's files, a team's batches)."""

    name: str
    kind: str
    build: str  # "module:function", called with the request's hints; returns a folder or URI
    description: str = ""

    def materialize(self, **hints: Any) -> str:
        module, _, function = self.build.partition(":")
        return str(getattr(importlib.import_module(module), function)(**hints))


@dataclass(frozen=True)
class StandInReference:
    """Expected figures for a dataset's check suite that match a stand-in source's data."""

    dataset: str
    name: str
    function: str  # "module:function", called with the window's years
    description: str = ""
    source: str | None = None  # the stand-in source whose data it describes


_sources: dict[tuple[str, str], StandInSource] = {}
_references: dict[tuple[str, str], StandInReference] = {}
_loaded = False
_lock = threading.Lock()


def register_source(name: str, kind: str, build: str, description: str = "") -> None:
    _sources[(kind, name)] = StandInSource(name, kind, build, description)


def register_reference(dataset: str, name: str, function: str, description: str = "", source: str | None = None):
    _references[(dataset, name)] = StandInReference(dataset, name, function, description, source)


def _load_plugins() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        for point in entry_points(group=ENTRY_POINT_GROUP):
            point.load()()


def source(kind: str, name: str) -> StandInSource | None:
    _load_plugins()
    return _sources.get((kind, name))


def source_names(kind: str | None = None) -> list[str]:
    _load_plugins()
    return sorted({name for k, name in _sources if kind is None or k == kind})


def reference(dataset: str, name: str) -> StandInReference | None:
    _load_plugins()
    return _references.get((dataset, name))


def references(dataset: str) -> dict[str, StandInReference]:
    _load_plugins()
    return {name: ref for (d, name), ref in _references.items() if d == dataset}


# --- source parameters ---------------------------------------------------------------------


@dataclass(frozen=True)
class _SourceKind:
    kind: str
    optional: bool


def _check_source(kind: str, optional: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        value = value.strip()
        if not value:
            if optional:
                return value
            raise ValueError("empty: give a folder, a gs:// prefix" + _names_hint(kind))
        from opsbook.stores import uri

        if uri.is_remote(value) or source(kind, value):
            return value
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"folder {value!r} does not exist (give a folder, a gs:// prefix{_names_hint(kind)})")
        return str(path.resolve())  # the kernel may run elsewhere

    return check


def _names_hint(kind: str) -> str:
    names = source_names(kind)
    return f" or one of {', '.join(repr(n) for n in names)}" if names else ""


def source_field(kind: str, optional: bool = False):
    """The type of a parameter naming where ``kind`` input comes from: a folder (made absolute),
    a ``gs://`` prefix, or a stand-in source (empty too when ``optional``)."""
    return Annotated[str, AfterValidator(_check_source(kind, optional)), _SourceKind(kind, optional)]


def resolve(kind: str, value: str, **hints: Any) -> str:
    """Where to read ``kind`` input from: a stand-in writes its data first and says where."""
    found = source(kind, value)
    return found.materialize(**hints) if found else value


def guarded(model: type[BaseModel]) -> type[BaseModel]:
    """Class decorator for a parameters model with source parameters: adds ``allow_demo`` (its
    last parameter) and refuses a stand-in source against a configured database without it."""
    return create_model(
        model.__name__,
        __base__=model,
        __module__=model.__module__,
        __doc__=model.__doc__,
        __validators__={"_refuse_against_configured_database": model_validator(mode="after")(_refuse)},
        **{ALLOW: (bool, Field(False, description="let a stand-in source write into a configured DATABASE_URL"))},
    )


def flags(params: BaseModel) -> dict[str, str]:
    """The parameters a rerun command must repeat for a run that allowed stand-in sources."""
    return {ALLOW: "true"} if getattr(params, ALLOW, False) else {}


def _refuse(self):
    # a run that reads no source (a model saying so, e.g. dual_write's retry of staged batches)
    # writes nothing generated
    if getattr(self, ALLOW) or not getattr(self, "reads_sources", lambda: True)():
        return self
    named = []
    for name, info in type(self).model_fields.items():
        kinds = [m for m in info.metadata if isinstance(m, _SourceKind)]
        value = getattr(self, name)
        if kinds and isinstance(value, str) and source(kinds[0].kind, value):
            named.append(f"{name}={value}")
    if not named:
        return self
    from opsbook import services

    if services.database_is_embedded():
        return self
    raise ValueError(
        f"{', '.join(named)} generates stand-in data, and DATABASE_URL points at a configured database "
        f"({services.database_label()}): stand-in data is only written to the embedded database. "
        f"Unset DATABASE_URL, or add -p {ALLOW}=true if this database is meant for it"
    )
