"""The report of a run: the executed notebook and its HTML rendering.

Every text is passed through the run's :class:`~opsbook.run.redaction.Redactor` before it is
written. Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbook import config
from opsbook.run.redaction import Redactor

TEMPLATE = "opsbook_report"
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class ReportPaths:
    ipynb: Path
    html: Path

    @classmethod
    def for_run(cls, run_id: str, reports: Path | None = None) -> ReportPaths:
        reports = reports or config.reports_dir()
        day = f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}"
        folder = reports / day
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder / f"{run_id}.ipynb", folder / f"{run_id}.html")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_notebook(nb, path: Path, redact: Redactor) -> str:
    """Write the executed notebook (redacted); return its SHA-256."""
    import nbformat

    from opsbook.run.redaction import scrub_notebook

    scrub_notebook(nb, redact)  # the report's HTML is made from the same, redacted notebook
    text = redact(nbformat.writes(nb), "executed notebook")
    write_text(path, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
ASSETS_DIR = "assets"


def has_charts(nb) -> bool:
    return any(
        PLOTLY_MIMETYPE in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def plotly_asset(reports: Path) -> Path:
    """plotly.js, copied once into reports/assets/ and shared by every report."""
    import shutil

    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = reports / ASSETS_DIR / f"plotly-{plotly.__version__}.min.js"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target


def export_html(
    nb, path: Path, report: dict[str, Any], redact: Redactor, reports: Path | None = None, self_contained: bool = False
) -> None:
    """Render the executed notebook as the audit report: banner, run card, folded code.

    Charts render offline: the page loads plotly.js once from ``reports/assets/`` by a relative
    path, so a report stays readable when moved together with that folder; ``self_contained``
    inlines plotly.js instead (a file of ~5 MB more that reads alone, as mailed).
    """
    from nbconvert import HTMLExporter

    report = dict(report)
    if has_charts(nb):
        asset = plotly_asset(reports or config.reports_dir())
        if self_contained:
            report["plotly_inline"] = inline_script(asset.read_text(encoding="utf-8"))
        else:
            report["plotly_src"] = os.path.relpath(asset, path.parent)
    exporter = HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATES)])
    body, _ = exporter.from_notebook_node(_without_scraps(nb), resources={"opsbook": report})
    write_text(path, redact(body, "HTML report"))


def inline_script(source: str) -> str:
    """A script's text made safe to sit inside ``<script>...</script>``."""
    return source.replace("</script", "<\\/script")


_SCRIPT_SRC = re.compile(r'<script([^>]*?)\ssrc="([^"]+)"([^>]*)></script>')


def self_contained_copy(report: Path, target: Path) -> Path:
    """A copy of a written report with every script it loads from a local file inlined, to mail
    or archive alone; the report itself is left as it is (its sign-off digest stays valid)."""
    text = report.read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        before, src, after = match.groups()
        if "://" in src:  # not a local file: left as it is
            return match.group(0)
        source = (report.parent / src).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"{report.name} loads {src}, which is not in {report.parent}")
        return f"<script{before}{after}>{inline_script(source.read_text(encoding='utf-8'))}</script>"

    write_text(target, _SCRIPT_SRC.sub(inline, text))
    return target


def _without_scraps(nb):
    """A copy without scrapbook's recorded values (data for the runner, not for the reader), and
    with an opsbook error shown as its one line: such an error (a failing verdict, a refused
    input) says what failed in words, and the traceback under it tells a reader nothing more
    (the executed notebook keeps it). Any other error keeps its traceback."""
    import copy

    expected = _verdict_errors()
    shown = copy.deepcopy(nb)
    for cell in shown.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if "scrapbook" not in o.get("metadata", {})]
        for output in cell.outputs:
            if output.get("output_type") == "error" and output.get("ename") in expected:
                output["traceback"] = [f"{output['ename']}: {output.get('evalue', '')}"]
    return shown


def _verdict_errors() -> set[str]:
    """The names of the errors a failing verdict raises (every OpsbookError)."""
    from opsbook import errors

    found, todo = set(), [errors.OpsbookError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found
