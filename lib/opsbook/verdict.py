"""The verdict every procedure ends with: PASS, WARN or FAIL, a one-line summary, key figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail"]

# run-log status for each verdict
RUN_STATUS = {"pass": "success", "warn": "warn", "fail": "failed"}


@dataclass(frozen=True)
class Verdict:
    status: Status
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)  # key figures for the index
    rows_in: int | None = None
    rows_out: int | None = None
    rows_rejected: int | None = None
    anchor: str | None = None  # id of the report element that explains a failure
    error: str | None = None  # the exception to raise after recording (exit code by its type)
    error_type: str | None = None

    @classmethod
    def failed(cls, summary: str, figures: dict[str, Any], anchor: str, error_type: str, **counts) -> Verdict:
        """A FAIL whose notebook ends by raising ``error_type`` (its exit code) with the summary."""
        return cls("fail", summary, figures, anchor=anchor, error=summary, error_type=error_type, **counts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return self.status.upper()
