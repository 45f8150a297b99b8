"""The raw archive against the write ledger: every batch it records is there, and nothing else.

Per day of the window, the archive's objects (``raw/bsm/<yyyy>/<mm>/<dd>/``, the spec's
``source.raw_layout``) are listed and set against the ledger's archive writes of that day (a raw
file is archived under its name, ``<batch id>.parquet``). A finding is one of:

- ``archive write pending``: the ledger says the write has not succeeded yet (with its attempts
  and last error);
- ``archive object missing``: the ledger says written, the object is not there;
- ``object not in the ledger``: an object no ledger entry accounts for;
- ``archive unreachable``: the archive could not be listed (a finding, not a crash).
"""

from __future__ import annotations

from typing import Any

from opsbook.datasets import DatasetSpec
from opsbook.history import writes
from opsbook.stores import uri
from opsbook.trafficsafety.layout import archive_day, archive_object
from opsbook.windows import Days

SUFFIX = ".parquet"
FINDINGS = ("archive write pending", "archive object missing", "object not in the ledger", "archive unreachable")


def findings(control, spec: DatasetSpec, window: Days) -> list[dict[str, Any]]:
    """Archive objects against the write ledger over the window's days (see the module docstring)."""
    present: set[str] = set()
    for day in window.days:
        prefix = archive_day(spec, day)
        try:
            objects = uri.listing(prefix, recursive=False)
        except Exception as exc:  # the archive cannot be read: that is a finding, not a crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return [_finding("", "archive unreachable", prefix, error=f"{type(exc).__name__}: {first}"[:300])]
        # named as the ledger would name them, so that a folder's spelling cannot make a mismatch
        present.update(uri.join(prefix, o.name) for o in objects if not o.name.startswith("."))
    found, expected = [], set()
    for entry in writes.of_target(control, spec.name, "archive", window.first, window.last):
        location = archive_object(spec, f"{entry['batch_id']}{SUFFIX}", entry["last_day"])
        expected.add(location)
        if entry["status"] == "pending":
            found.append(
                _finding(entry["batch_id"], "archive write pending", location, entry["attempts"], entry["last_error"])
            )
        elif location not in present:
            found.append(_finding(entry["batch_id"], "archive object missing", location, entry["attempts"]))
    for location in sorted(present - expected):
        found.append(_finding(uri.name_of(location).removesuffix(SUFFIX), "object not in the ledger", location))
    return found


def _finding(batch: str, finding: str, location: str, attempts: int | None = None, error: str | None = None) -> dict:
    return {"batch": batch, "finding": finding, "attempts": attempts, "last error": error or "", "object": location}
