"""The verdict every procedure ends with: PASS, WARN or FAIL, a one-line summary, key figures.

A failing verdict names the error it ends the run with, as the class itself: its exit code
comes with it (``CheckFailed`` exits 1, ``ProcedureFailed`` 3, ...). The recorded verdict
carries that exit code, so the runner reads it instead of guessing from a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from opsbook.errors import OpsbookError

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
    error: type[OpsbookError] | None = None  # a failing verdict ends the run by raising this
    next_step: str | None = None  # what to do about a FAIL or WARN, commands in `backticks`

    @classmethod
    def failed(cls, summary: str, figures: dict[str, Any], anchor: str, error: type[OpsbookError], **counts) -> Verdict:
        """A FAIL whose notebook ends by raising ``error`` (and exits with its code)."""
        return cls("fail", summary, figures, anchor=anchor, error=error, **counts)

    @property
    def exit_code(self) -> int:
        return self.error.exit_code if self.status == "fail" and self.error else 0

    def raise_if_failed(self) -> None:
        if self.status == "fail":
            raise (self.error or OpsbookError)(self.summary)

    def as_dict(self) -> dict[str, Any]:
        """As recorded in the notebook: plain JSON, the error as its name and exit code."""
        return {
            "status": self.status,
            "summary": self.summary,
            "figures": self.figures,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_rejected": self.rows_rejected,
            "anchor": self.anchor,
            "error_type": self.error.__name__ if self.error and self.status == "fail" else None,
            "exit_code": self.exit_code,
            "next_step": self.next_step,
        }

    @property
    def label(self) -> str:
        return self.status.upper()


def shorten(text: str, limit: int = 600) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
