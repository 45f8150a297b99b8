"""Prometheus metrics of every run, for the monitoring the teams already have.

Each finished run (headless or interactive) rewrites one file per procedure and dataset,
``<metrics dir>/opsbook_<procedure>_<dataset>.prom``, in the text format node_exporter's
textfile collector reads (``--collector.textfile.directory``); written to a temporary name and
renamed, so the collector never reads half a file. The folder is ``OPSBOOK_METRICS_DIR``, else
``reports/metrics/``. With ``OPSBOOK_PUSHGATEWAY_URL`` set, the same metrics are also pushed to
that Pushgateway (job ``opsbook``, grouped by procedure and dataset). The README has example
alert rules.

Metrics (labels ``procedure``, ``dataset``; ``dataset`` is empty for a run without one):

- ``opsbook_last_run_status{status}``: 1 for the status the last run ended with (pass, warn,
  fail), 0 for the others;
- ``opsbook_last_run_exit_code``, ``opsbook_last_run_duration_seconds``,
  ``opsbook_last_run_timestamp_seconds`` (when it ended, Unix time);
- ``opsbook_last_run_rows{kind}``: rows in, out and rejected (quarantined) by the last run,
  for the kinds it counted;
- ``opsbook_last_success_timestamp_seconds``: when the last PASS or WARN run ended;
- ``opsbook_runs_total{status}``: runs ended with each status, counted across runs (kept in
  the file itself; it starts again from 0 if the file is removed, as counters may).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path
from typing import Any

from opsbook import config

METRICS_ENV = "OPSBOOK_METRICS_DIR"
PUSHGATEWAY_ENV = "OPSBOOK_PUSHGATEWAY_URL"
STATUSES = ("pass", "warn", "fail")
ROWS = (("rows_in", "in"), ("rows_out", "out"), ("rows_rejected", "rejected"))


def metrics_dir() -> Path:
    path = Path(os.environ.get(METRICS_ENV) or config.reports_dir() / "metrics")
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_for(procedure: str, dataset: str | None, folder: Path | None = None) -> Path:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", f"opsbook_{procedure}_{dataset or 'none'}")
    return (folder or metrics_dir()) / f"{name}.prom"


def record(
    procedure: str,
    dataset: str | None,
    status: str,
    exit_code: int,
    duration_s: float,
    counts: dict[str, Any],
    ended_at: float | None = None,
) -> Path:
    """Rewrite the procedure and dataset's metrics file with this run; push them when a
    Pushgateway is configured. Returns the file."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, write_to_textfile

    disable_created_metrics()  # no *_created series: the file carries the counts across runs
    ended_at = ended_at or time.time()
    path = file_for(procedure, dataset)
    with _locked(path):
        previous = _previous(path)
        registry = CollectorRegistry()
        labels = {"procedure": procedure, "dataset": dataset or ""}
        names = list(labels)

        status_gauge = Gauge(
            "opsbook_last_run_status", "1 for the status the last run ended with", [*names, "status"], registry=registry
        )
        for each in STATUSES:
            status_gauge.labels(**labels, status=each).set(1 if each == status else 0)
        Gauge("opsbook_last_run_exit_code", "exit code of the last run", names, registry=registry).labels(**labels).set(
            exit_code
        )
        Gauge("opsbook_last_run_duration_seconds", "how long the last run took", names, registry=registry).labels(
            **labels
        ).set(duration_s)
        Gauge("opsbook_last_run_timestamp_seconds", "when the last run ended", names, registry=registry).labels(
            **labels
        ).set(ended_at)
        rows = Gauge(
            "opsbook_last_run_rows", "rows in, out and rejected by the last run", [*names, "kind"], registry=registry
        )
        for key, kind in ROWS:
            if isinstance(counts.get(key), int):
                rows.labels(**labels, kind=kind).set(counts[key])
        last_success = (
            ended_at if status in ("pass", "warn") else previous.get(("opsbook_last_success_timestamp_seconds", ""))
        )
        if last_success is not None:
            Gauge(
                "opsbook_last_success_timestamp_seconds",
                "when the last PASS or WARN run ended",
                names,
                registry=registry,
            ).labels(**labels).set(last_success)
        total = Counter("opsbook_runs", "runs ended, by status", [*names, "status"], registry=registry)
        for each in STATUSES:
            total.labels(**labels, status=each).inc(
                previous.get(("opsbook_runs_total", each), 0.0) + (1 if each == status else 0)
            )
        write_to_textfile(str(path), registry)
    gateway = os.environ.get(PUSHGATEWAY_ENV)
    if gateway:
        from prometheus_client import push_to_gateway

        push_to_gateway(gateway, job="opsbook", grouping_key=labels, registry=registry, timeout=10)
    return path


def _previous(path: Path) -> dict[tuple[str, str], float]:
    """The values the file holds now that carry over: run counts by status, last success."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, str], float] = {}
    if not path.exists():
        return found
    with contextlib.suppress(Exception):  # an unreadable file starts the counts again
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            for sample in family.samples:
                if sample.name in ("opsbook_runs_total", "opsbook_last_success_timestamp_seconds"):
                    found[(sample.name, sample.labels.get("status", ""))] = sample.value
    return found


@contextlib.contextmanager
def _locked(path: Path):
    """One writer per file at a time (two runs of a procedure ending together)."""
    with open(path.with_name(f".{path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
