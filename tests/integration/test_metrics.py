"""Every run's Prometheus metrics: the textfile collector's file, and a Pushgateway (a real
HTTP server on this machine standing in for one, recording what it receives)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import fresh_health_state, run_cli
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def pushgateway():
    received: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_runs_write_textfile_metrics_that_carry_counts_across_runs(database_url, redis_url, db, tmp_path):
    from opsbook.ops import metrics

    folder = tmp_path / "metrics"
    env = {"OPSBOOK_METRICS_DIR": str(folder)}
    fresh_health_state(db)
    assert run_cli("health", "-p", "expected=", "--quiet", env=env).code == 0
    assert run_cli("health", "-p", "expected=load", "--quiet", env=env).code == 1
    path = metrics.file_for("health", None, folder)
    found = samples(path.read_text())
    labels = (("dataset", ""), ("procedure", "health"))
    assert found[("opsbook_last_run_status", (*labels, ("status", "fail")))] == 1
    assert found[("opsbook_last_run_status", (*labels, ("status", "pass")))] == 0
    assert found[("opsbook_last_run_exit_code", labels)] == 1
    assert found[("opsbook_runs_total", (*labels, ("status", "pass")))] == 1
    assert found[("opsbook_runs_total", (*labels, ("status", "fail")))] == 1
    # the last success is kept from the passing run, before the failing one ended
    assert (
        found[("opsbook_last_success_timestamp_seconds", labels)]
        < found[("opsbook_last_run_timestamp_seconds", labels)]
    )
    assert found[("opsbook_last_run_duration_seconds", labels)] > 0
    assert not [name for name, _ in found if name.endswith("_created")]


def test_row_counts_per_dataset_and_a_pushgateway(tmp_path, monkeypatch, pushgateway):
    from opsbook.ops import metrics

    url, received = pushgateway
    monkeypatch.setenv("OPSBOOK_METRICS_DIR", str(tmp_path))
    monkeypatch.setenv("OPSBOOK_PUSHGATEWAY_URL", url)
    counts = {"in": 1_005, "out": 1_000, "rejected": 5}
    verdict = {f"rows_{kind}": n for kind, n in counts.items()}
    path = metrics.record("load", "toronto_parking_tickets", "warn", 0, 12.5, verdict, ended_at=1_700_000_000)
    labels = (("dataset", "toronto_parking_tickets"), ("procedure", "load"))
    found = samples(path.read_text())
    rows = {kind: found[("opsbook_last_run_rows", tuple(sorted((*labels, ("kind", kind)))))] for kind in counts}
    assert rows == counts
    assert found[("opsbook_last_success_timestamp_seconds", labels)] == 1_700_000_000
    ((method, where, body),) = received
    assert (method, where) == ("PUT", "/metrics/job/opsbook/dataset/toronto_parking_tickets/procedure/load")
    assert samples(body) == found


def test_a_pushgateway_that_cannot_be_reached_is_a_note_not_a_failure(database_url, redis_url, db, tmp_path):
    fresh_health_state(db)
    env = {"OPSBOOK_METRICS_DIR": str(tmp_path), "OPSBOOK_PUSHGATEWAY_URL": "http://127.0.0.1:9"}
    done = run_cli("health", "-p", "expected=", "--json", env=env)
    assert done.code == 0
    assert any(note.startswith("metrics not recorded: ") for note in done.json()["notes"])
    assert (tmp_path / "opsbook_health_none.prom").exists()  # the file is written before the push
