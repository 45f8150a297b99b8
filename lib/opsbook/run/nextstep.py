"""What to do after a FAIL or a WARN, with the exact command(s): the last line of every such
verdict, in the notebook, the HTML report, ``--json`` and the terminal.

A procedure that knows its way out says it itself (``Verdict.next_step``: backfill's rerun of
the failed years, health's ``mark_stuck``); every other FAIL or WARN gets the step its exit code
calls for, with the command that reruns the run as it was (its parameters that differ from the
notebook's defaults).
"""

from __future__ import annotations

import shlex
from typing import Any

RUNNER = "python run_notebook.py"


def rerun_command(procedure: str, values: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """``python run_notebook.py PROCEDURE -p name=value ...``: the values that differ from the
    defaults (all of them when the defaults are unknown)."""
    defaults = defaults or {}
    shown = [
        f"-p {shlex.quote(f'{name}={param_text(value)}')}"
        for name, value in values.items()
        if name not in defaults or defaults[name] != value
    ]
    return " ".join([RUNNER, shlex.quote(procedure), *shown])


def param_text(value: Any) -> str:
    """A value as ``-p NAME=VALUE`` spells it: true/false, a list comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def signoff_command(run_id: str) -> str:
    return f"{RUNNER} signoff {run_id} --by NAME --comment 'why the warnings are acceptable'"


def suggest(
    status: str,
    exit_code: int | None,
    run_id: str,
    rerun: str,
    anchor: str | None = None,
    timeout: float | None = None,
) -> str | None:
    """The next step for a run that ended ``status`` with ``exit_code`` (None for a PASS)."""
    if status == "warn":
        return (
            f"read the warnings{_where(anchor)}; if they are acceptable, sign the report off: "
            f"`{signoff_command(run_id)}`; otherwise fix their cause and rerun: `{rerun}`"
        )
    if status != "fail":
        return None
    if exit_code == 1:
        return (
            f"read the failing check{_where(anchor)}: it names the rows and values at fault; fix the data "
            f"or its source, then rerun: `{rerun}`"
        )
    if exit_code == 2:
        return f"correct the parameter or input the error names, then rerun: `{rerun}`"
    if exit_code == 4:
        return (
            f"another run holds the lock: see which with `{RUNNER} health`, wait for it to finish "
            f"(or, if health finds it stuck, `{RUNNER} health -p mark_stuck=true`), then rerun: `{rerun}`"
        )
    if exit_code == 5:
        longer = f" --timeout {timeout * 2:g}" if timeout else ""
        return (
            f"the run was stopped at its deadline; nothing half-made was kept. Rerun with a longer one: "
            f"`{rerun}{longer}`"
        )
    if exit_code == 6:
        return (
            "the kernel died (most often out of memory: see `dmesg` or the kernel log in the report's notes); "
            f"free memory or run fewer partitions at once, then rerun: `{rerun}`"
        )
    if exit_code is not None and exit_code > 128:
        return f"the run was stopped by a signal before it finished; nothing half-made was kept. Rerun: `{rerun}`"
    return f"read the error{_where(anchor)}; once its cause is fixed, rerun: `{rerun}`"


def _where(anchor: str | None) -> str:
    return " in this report" if anchor else " at the end of this report"


def defaults_of(model) -> dict[str, Any]:
    """A parameters model's default values, as the notebook's parameters cell has them."""
    try:
        return model().notebook_parameters()
    except Exception:  # a parameter without a default
        return {}


def for_verdict(verdict, procedure: str, run_id: str, params) -> str | None:
    """The verdict's own next step, or the one its status and exit code call for."""
    if verdict.next_step or verdict.status == "pass":
        return verdict.next_step
    rerun = rerun_command(procedure, params.notebook_parameters(), defaults_of(type(params)))
    return suggest(verdict.status, verdict.exit_code, run_id, rerun, verdict.anchor)


def as_html(text: str, failure_href: str | None = None) -> str:
    """The next step as the report shows it: commands in ``<code>`` (select-all on click), and
    "in this report" a link to the failing check."""
    import html
    import re

    parts = re.split(r"`([^`]+)`", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = html.escape(part)
        if failure_href:
            part = part.replace(" in this report", f' <a href="{html.escape(failure_href)}">in this report</a>', 1)
        out.append(part)
    return "".join(out)
