"""How a notebook runs, as papermill's options say it: kernel, working directory, where the
executed notebook also goes, outputs on the terminal, report mode; and what a failed cell was.

The runner takes papermill's command line (``-p NAME VALUE``, ``-r``, ``-y``, ``-f``, ``-k``,
``--cwd``, ``--prepare-only``, ``--log-output``, ``--report-mode``, an output path) so that a
crontab line moves from papermill to the runner by changing the command's name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbook.errors import UsageError

DEFAULT_KERNEL = "python3"
# ``-p NAME VALUE`` and ``-r NAME VALUE`` (papermill's form) become ``NAME=VALUE`` (the runner's)
PAIRED = {"-p": "-p", "--parameters": "-p", "--param": "-p", "-r": "-r", "--parameters_raw": "-r"}


@dataclass(frozen=True)
class Options:
    kernel: str | None = None  # -k: instead of the notebook's kernelspec
    cwd: Path | None = None  # --cwd: where the kernel starts
    output: str | None = None  # the executed notebook is also written here ("-": stdout)
    log_output: bool = False  # cells' outputs on stderr as they come
    report_mode: bool = False  # the executed notebook's code cells hidden


class Raw(str):
    """A ``-r`` value: text, never typed."""


def papermill_argv(argv: list[str]) -> list[str]:
    """``-p years 2017`` -> ``-p years=2017`` (a name never holds ``=``, so both forms read alike)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in PAIRED and i + 1 < len(argv) and "=" not in argv[i + 1]:
            if i + 2 >= len(argv):
                raise UsageError(f"{arg} {argv[i + 1]}: give a value too ({arg} NAME VALUE or {arg} NAME=VALUE)")
            out += [PAIRED[arg], f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        out.append(PAIRED.get(arg, arg))
        i += 1
    return out


def yaml_values(text: str | None) -> dict[str, Any]:
    """``-y 'years: 2017'``: a YAML mapping of parameters."""
    if not text:
        return {}
    import yaml
    from papermill.iorw import NoDatesSafeLoader

    try:
        data = yaml.load(text, Loader=NoDatesSafeLoader)  # as papermill reads -y: a date stays text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise UsageError(f"-y: not YAML: {where}{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError("-y: expected a YAML mapping of parameter names to values, e.g. -y 'years: 2017'")
    return data


def installed_kernels() -> dict[str, str]:
    """Kernel name -> its language, for every kernel Jupyter finds here."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    found = {}
    for name in manager.find_kernel_specs():
        try:
            found[name] = manager.get_kernel_spec(name).language
        except Exception:
            found[name] = "?"
    return found


def check_kernel(name: str, notebook: Path) -> None:
    """UsageError (exit 2) naming a kernel that is not installed, and those that are."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name in KernelSpecManager().find_kernel_specs():
        return
    kernels = installed_kernels()  # their languages, read only to say what is there
    listed = ", ".join(f"{k} ({lang})" for k, lang in sorted(kernels.items())) or "none"
    raise UsageError(
        f"{notebook.name} asks for the kernel {name!r}, which is not installed here (installed: {listed}; "
        "see jupyter kernelspec list). Install it, or run the notebook with another: -k NAME"
    )


def working_directory(cwd: Path | None, procedure: bool, root: Path) -> Path:
    """Where the kernel starts: a procedure in the project root; a notebook given by path where
    the runner was started (papermill's default), or in ``--cwd``."""
    if procedure:
        if cwd is not None:
            raise UsageError(
                "--cwd is for notebooks given by path: a procedure runs from the project root "
                "(it reads params/ and writes reports/ there)"
            )
        return root
    chosen = (cwd or Path.cwd()).expanduser().resolve()
    if not chosen.is_dir():
        raise UsageError(f"--cwd {cwd}: no such folder")
    return chosen


def check_stdout(output: str | None, json_output: bool) -> None:
    if output == "-" and json_output:
        raise UsageError("the output path '-' (the notebook on stdout) and --json both want stdout: choose one")


def output_path(output: str | None, values: dict[str, Any]) -> str | None:
    """papermill's output path, its ``{parameter}`` fields filled in as papermill fills them;
    refused (exit 2) when it cannot be a notebook's path: ``years=2017`` is a forgotten ``-p``."""
    if output is None:
        return None
    if output == "-":
        return output
    if "=" in Path(output).name and not output.endswith(".ipynb"):
        raise UsageError(f"{output!r} is not a notebook's path: a parameter needs -p (-p {output})")
    if not output.endswith((".ipynb", ".json")):
        raise UsageError(f"output {output}: a notebook's path ends in .ipynb")
    from papermill.parameterize import add_builtin_parameters, parameterize_path

    try:
        filled = parameterize_path(output, add_builtin_parameters(values))
    except Exception as exc:  # a {field} no parameter fills
        raise UsageError(f"output {output}: {exc}") from None
    if not Path(filled).expanduser().resolve().parent.is_dir():
        raise UsageError(f"output {filled}: its folder does not exist")
    return filled


# --- what a failed cell was ------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)): ?(.*)$")


def failure_text(ename: str, evalue: str, nb) -> str:
    """``Type: message`` of the failed cell. A cell that failed without an error output (a line
    magic's UsageError is printed on stderr) is named from the last error line it printed."""
    if ename and ename != "CellExecutionError":
        return f"{ename}: {evalue}" if evalue else ename
    failed = [
        c for c in (nb.cells if nb is not None else []) if c.get("metadata", {}).get("papermill", {}).get("exception")
    ]
    if failed:
        for output in reversed(failed[-1].get("outputs", [])):
            if output.get("output_type") != "stream":
                continue
            for line in reversed(str(output.get("text", "")).splitlines()):
                match = _ERROR_LINE.match(line.strip())
                if match:
                    return f"{match.group(1)}: {match.group(2)}" if match.group(2) else match.group(1)
    return "the cell failed without naming an error (no error output, nothing on stderr)"


def ended_by_exit_zero(nb) -> int | None:
    """The index of the cell that ended the notebook with ``sys.exit(0)`` (papermill counts that
    a success: the cells after it do not run), or None."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if (
                output.get("output_type") == "error"
                and output.get("ename") == "SystemExit"
                and str(output.get("evalue", "")) in ("", "0")
            ):
                return index
    return None


def tidy_exit_zero(nb, index: int) -> None:
    """A cell that ended the notebook with sys.exit(0) did not fail: its SystemExit output and
    IPython's "To exit: use 'exit'" warning are dropped, and it is not marked failed."""
    cell = nb.cells[index]
    cell.outputs = [
        o
        for o in cell.outputs
        if not (o.get("output_type") == "error" and o.get("ename") == "SystemExit")
        and "To exit: use 'exit', 'quit', or Ctrl-D." not in str(o.get("text", ""))
    ]
    papermill = cell.get("metadata", {}).get("papermill", {})
    if papermill.get("exception"):
        papermill["exception"] = False
        papermill["status"] = "completed"


def write_output(nb, output: str, redact) -> None:
    """The executed notebook also where papermill's output path says (redacted as the report)."""
    import sys

    import nbformat

    text = redact(nbformat.writes(nb), "executed notebook")
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output).expanduser()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
