"""A runbook as one command: its steps in order, each a procedure run with its params file.

``params/runbooks/<team>/runbook.yaml`` (or any runbook file given by path) lists the steps::

    title: Toronto parking ETL, nightly
    schedule: "30 2 * * *"          # when cron runs it (health derives each step's lag from it)
    steps:
      - procedure: load
        params: load.yaml           # beside the runbook file
        with: {years: latest}       # overrides, as -p would give them
      - {procedure: validate, params: validate.yaml}
      - {procedure: retention, params: retention.yaml, with: {apply: true}, days: [sun], independent: true}

The runbook stops at the first step that does not pass (WARN passes), unless that step is
marked ``independent`` (then the next ones still run); a step with ``days`` runs only on those
weekdays. Each step is an ordinary run (report, run log, index); the runbook writes one more
report that lists every step's verdict with a link to its report, and exits with the code of
its first failing step (0 when none failed).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opsbook import config
from opsbook.errors import UsageError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    procedure: str
    params: str | None = None  # a params file, relative to the runbook file
    overrides: dict[str, Any] = Field(default_factory=dict, alias="with")
    independent: bool = False  # a failure here does not stop the steps after it
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    description: str = ""

    @field_validator("procedure")
    @classmethod
    def _known(cls, name: str) -> str:
        from opsbook import procedures

        procedures.entry(name)  # raises with the closest name
        return name

    def due(self, today: dt.date) -> bool:
        return not self.days or WEEKDAYS[today.weekday()] in self.days

    def override_args(self) -> list[str]:
        from opsbook.run.nextstep import param_text

        return [f"{name}={param_text(value)}" for name, value in self.overrides.items()]


class Runbook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    description: str = ""
    schedule: str | None = None  # a cron expression
    steps: list[Step] = Field(min_length=1)
    path: Path | None = None

    @property
    def name(self) -> str:
        """``toronto`` for params/runbooks/toronto/runbook.yaml; the file's stem otherwise."""
        if self.path is None:
            return "runbook"
        return self.path.parent.name if self.path.name == "runbook.yaml" else self.path.stem

    def params_path(self, step: Step) -> Path | None:
        return (self.path.parent / step.params) if step.params and self.path else None


def runbooks_dir() -> Path:
    return config.params_dir() / "runbooks"


def available() -> list[str]:
    return sorted(p.parent.name for p in runbooks_dir().glob("*/runbook.yaml"))


def find(name: str) -> Path:
    """A runbook's file: a team name (``params/runbooks/<team>/runbook.yaml``) or a path."""
    candidate = Path(name).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_dir():
        path = candidate / "runbook.yaml" if candidate.is_dir() else candidate
        if not path.is_file():
            raise UsageError(f"runbook file {path} does not exist")
        return path.resolve()
    path = runbooks_dir() / name / "runbook.yaml"
    if not path.is_file():
        from opsbook.run.params import closest

        hint = closest(name, available())
        did_you_mean = f"; did you mean {hint!r}?" if hint else ""
        raise UsageError(
            f"no runbook {name!r}{did_you_mean} Runbooks: {', '.join(available()) or 'none'} "
            f"(params/runbooks/<team>/runbook.yaml), or give a runbook file's path"
        )
    return path


def load(name: str) -> Runbook:
    """Read and check a runbook: its steps name known procedures and existing params files."""
    path = find(name)
    data = config.read_yaml(path, "runbook")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with title and steps")
    try:
        book = Runbook(**data, path=path)
    except ValidationError as exc:
        raise UsageError(f"{path}: invalid runbook: {config.validation_problems(exc)}") from None
    for number, step in enumerate(book.steps, 1):
        params = book.params_path(step)
        if params is not None and not params.is_file():
            raise UsageError(f"{path}: step {number} ({step.procedure}): params file {params} does not exist")
    return book


# --- running -----------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    number: int
    procedure: str
    status: str  # pass | warn | fail | skipped | not run
    exit_code: int | None
    summary: str
    run_id: str | None = None
    html: str | None = None
    duration_s: float = 0.0
    independent: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "procedure": self.procedure,
            "status": self.status,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "run_id": self.run_id,
            "report": self.html,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class RunbookOutcome:
    run_id: str
    runbook: Runbook
    started_at: dt.datetime
    steps: list[StepOutcome] = field(default_factory=list)
    duration_s: float = 0.0
    html: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[StepOutcome]:
        return [s for s in self.steps if s.status == "fail"]

    @property
    def exit_code(self) -> int:
        return (self.failed[0].exit_code or 1) if self.failed else 0

    @property
    def status(self) -> str:
        if self.failed:
            return "fail"
        return "warn" if any(s.status == "warn" for s in self.steps) else "pass"

    @property
    def summary(self) -> str:
        ran = [s for s in self.steps if s.status in ("pass", "warn", "fail")]
        if self.failed:
            first = self.failed[0]
            stopped = [s for s in self.steps if s.status == "not run"]
            after = f"; {len(stopped)} step(s) after it not run" if stopped else ""
            return f"step {first.number} ({first.procedure}) failed: {first.summary}{after}"
        skipped = [s for s in self.steps if s.status == "skipped"]
        note = f"; {len(skipped)} not scheduled today" if skipped else ""
        return f"{len(ran)} step(s) passed" + (" (with warnings)" if self.status == "warn" else "") + note

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "procedure": "runbook",
            "runbook": self.runbook.name,
            "summary": self.summary,
            "reports": {"ipynb": None, "html": str(self.html) if self.html else None},
            "steps": [s.as_json() for s in self.steps],
            "duration_s": round(self.duration_s, 3),
            "notes": self.notes,
        }


def execute(
    name: str, timeout: float | None = None, progress: TextIO | None = sys.stderr, today: dt.date | None = None
) -> RunbookOutcome:
    """Run every step of the runbook in order (see the module docstring); never raises for a
    failed step. ``timeout`` bounds the whole runbook."""
    from opsbook.errors import OpsbookError, RunTimeout
    from opsbook.run import runner
    from opsbook.run.context import new_run_id

    book = load(name)
    today = today or dt.date.today()
    outcome = RunbookOutcome(new_run_id(f"runbook-{book.name}"), book, dt.datetime.now(dt.UTC))
    t0 = time.monotonic()
    stop = False
    for number, step in enumerate(book.steps, 1):
        if stop:
            outcome.steps.append(StepOutcome(number, step.procedure, "not run", None, "an earlier step failed"))
            continue
        if not step.due(today):
            outcome.steps.append(
                StepOutcome(
                    number, step.procedure, "skipped", None, f"not scheduled today (runs on {', '.join(step.days)})"
                )
            )
            continue
        files = [p] if (p := book.params_path(step)) else []
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        _say(progress, f"[runbook {book.name}] step {number}/{len(book.steps)}: {step.procedure}")
        try:
            if left is not None and left <= 0:
                raise RunTimeout(f"the runbook exceeded --timeout {timeout:g}s before this step")
            run = runner.execute(step.procedure, files, step.override_args(), timeout=left, progress=progress)
            done = StepOutcome(
                number,
                step.procedure,
                run.status,
                run.exit_code,
                run.summary,
                run.run_id,
                str(run.html) if run.html else None,
                run.duration_s,
                step.independent,
            )
        except OpsbookError as exc:  # refused before it started: bad parameters, a lock held
            done = StepOutcome(
                number, step.procedure, "fail", exc.exit_code, f"refused: {exc}", independent=step.independent
            )
        outcome.steps.append(done)
        _say(progress, f"[runbook {book.name}] step {number} {step.procedure}: {done.status.upper()} {done.summary}")
        if done.status == "fail" and not step.independent:
            stop = True
    outcome.duration_s = time.monotonic() - t0
    _write_report(outcome)
    return outcome


def _say(stream: TextIO | None, line: str) -> None:
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()


def _write_report(outcome: RunbookOutcome) -> None:
    from opsbook.report import index
    from opsbook.report.html import ReportPaths, write_text
    from opsbook.report.runbook import render
    from opsbook.run.redaction import Redactor

    redact = Redactor()
    try:
        paths = ReportPaths.for_run(outcome.run_id)
        write_text(paths.html, redact(render(outcome, paths.html), "runbook report"))
        outcome.html = paths.html
        entry = {
            "run_id": outcome.run_id,
            "procedure": "runbook",
            "dataset": outcome.runbook.name,
            "window": None,
            "status": outcome.status,
            "exit_code": outcome.exit_code,
            "started_at": outcome.started_at.isoformat(),
            "duration_s": round(outcome.duration_s, 3),
            "summary": outcome.summary,
            "figures": {s.procedure: s.status.upper() for s in outcome.steps},
            "params": {},
            "ipynb": None,
            "html": str(paths.html),
            "error": None,
        }
        index.append_run(json.loads(json.dumps(entry, default=str)), redact)
    except OSError as exc:
        outcome.notes.append(f"runbook report not written: {exc}")
