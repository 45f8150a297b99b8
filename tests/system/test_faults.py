"""Fault injection: a service or the kernel fails mid-work, and what was there before survives.

- the PostgreSQL backend of a load is terminated mid-COPY;
- the connection to Redis drops in the middle of push_cache's MULTI/EXEC (a proxy cuts it);
- a lake file write fails halfway (a full disk, injected);
- the kernel is killed from outside while a cell runs.
"""

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import nbformat
import psutil
import pyarrow.parquet as pq
import pytest
import redis
from helpers import call, load_and_aggregate, run_cli, start_cli

from opsbook import datasets
from opsbook.demo import tickets as demodata
from opsbook.errors import CheckFailed
from opsbook.history import ledger as partitions
from opsbook.history import runs
from opsbook.toronto import cache
from opsbook.trafficsafety import dualwrite
from opsbook.trafficsafety.compare import compare
from opsbook.windows import Days

pytestmark = pytest.mark.integration


def table_digest(db, table, where="true"):
    """Row count and an order-independent hash of every row's text."""
    return db.execute(
        f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {table} t WHERE {where}"
    ).fetchone()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Wait for a started CLI; kill it if it outlives ``timeout`` (the test then fails on its code)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


# --- 1. the PostgreSQL backend killed mid-COPY ---------------------------------------------------

BIG_ROWS = 500_000  # at ~300k rows/s the COPY stays busy for more than a second: time to catch it


@pytest.fixture(scope="module")
def big_year(tmp_path_factory) -> Path:
    """A folder with 2016 as BIG_ROWS City-format rows: copies of one generated 100,000-row part,
    each with its own tag numbers (the load refuses parts that repeat each other's lines),
    stored uncompressed (writing it takes a second, generating 500,000 rows would take five)."""
    seed = tmp_path_factory.mktemp("seed")
    demodata.write_year(seed, 2016, rows=100_000, part_rows=100_000, with_malformed=False)
    with zipfile.ZipFile(seed / "parking-tickets-2016.zip") as archive:
        (name,) = archive.namelist()
        part = archive.read(name)
    folder = tmp_path_factory.mktemp("big")
    with zipfile.ZipFile(folder / "parking-tickets-2016.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for k in range(BIG_ROWS // 100_000):
            archive.writestr(f"Parking_Tags_Data_2016_{k + 1}.csv", part.replace(b"\n***", b"\n*%d*" % k))
    return folder


def wait_for_copy(db, table: str, proc: subprocess.Popen, limit: float = 60) -> int:
    """The pid of the backend running ``COPY <table> FROM STDIN``, as soon as it runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND query LIKE 'COPY %%' AND position(%s in query) > 0",
            (f'"{table}"',),
        ).fetchone()
        if row:
            return row[0]
        if proc.poll() is not None:
            pytest.fail(f"the load ended (exit {proc.returncode}) before its COPY was seen: {proc.stderr.read()}")
        time.sleep(0.01)
    pytest.fail(f"no COPY into {table} within {limit}s")


def test_postgres_backend_killed_mid_copy_keeps_the_year(clean, demo_dir, big_year):
    db = clean
    call("load", source=str(demo_dir), years="2016")
    before = table_digest(db, "parking_tickets_2016"), table_digest(db, "parking_tickets_rejected", "year = 2016")
    assert 0 < before[0][0] < BIG_ROWS

    args = ("load", "-p", f"source={big_year}", "-p", "years=2016", "-p", "force=true", "--json")
    proc = start_cli(*args)
    try:
        backend = wait_for_copy(db, "parking_tickets_2016_load", proc)
        assert db.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0] is True
    finally:
        out, err = finish(proc)
    assert proc.returncode == 3, err
    outcome = json.loads(out)
    assert outcome["status"] == "fail"
    assert outcome["summary"].startswith("1 year(s) failed (2016) and kept their previous contents: ")
    terminated = "the PostgreSQL connection was terminated during the COPY into parking_tickets_2016_load"
    assert terminated in outcome["summary"]
    assert outcome["error"].startswith("ServiceError: 1 year(s) failed (2016)")  # the year's own reason
    assert Path(outcome["reports"]["html"]).is_file()

    assert table_digest(db, "parking_tickets_2016") == before[0]
    assert table_digest(db, "parking_tickets_rejected", "year = 2016") == before[1]
    assert db.execute("SELECT to_regclass('parking_tickets_2016_load')").fetchone()[0] is None
    ledger = partitions.get(db, "toronto_parking_tickets", "2016", "load")
    assert ledger.status == "failed" and ledger.run_id == outcome["run_id"]
    assert "connection was terminated" in ledger.error

    rerun = run_cli(*args)
    assert rerun.code == 0, rerun.stderr
    assert rerun.json()["results"]["verdict"]["rows_out"] == BIG_ROWS
    assert table_digest(db, "parking_tickets_2016")[0] == BIG_ROWS
    assert partitions.get(db, "toronto_parking_tickets", "2016", "load").status == "success"


# --- 2. Redis gone in the middle of push_cache's transaction -------------------------------------


class CuttingProxy:
    """A TCP proxy in front of Redis that, once armed, cuts the connection that sends the
    ``cut_before``-th RENAME (everything before it reaches Redis, nothing after), then refuses
    every connection until ``restore()``: Redis going away mid-write, from the client's side,
    while the server keeps its data for the check afterwards.

    Killing redis-server would lose the data (no persistence) and pausing it cannot fail a
    write partway; cutting the wire can.
    """

    MARKER = b"$6\r\nRENAME\r\n"

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_before: int | None = None
        self.down = False
        self.cuts = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, cut_before: int) -> None:
        self.cut_before = cut_before

    def restore(self) -> None:
        self.cut_before, self.down = None, False

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.down:
                _close(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            threading.Thread(target=self._to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket) -> None:
        seen, tail = 0, b""
        while data := _recv(client):
            if self.cut_before is not None:
                window = tail + data
                start = 0
                while (at := window.find(self.MARKER, start)) >= 0:
                    seen += 1
                    if seen == self.cut_before:
                        server.sendall(data[: max(0, at - len(tail))])
                        self.down, self.cuts = True, self.cuts + 1
                        _close(server)
                        _close(client)
                        return
                    start = at + 1
                tail = window[-(len(self.MARKER) - 1) :]
            server.sendall(data)
        _close(server)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := _recv(source):
            sink.sendall(data)
    _close(sink)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture
def redis_behind_proxy():
    """A redis-server of this test's own (no persistence) and a cutting proxy in front of it."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    direct = redis.Redis(port=port)
    proxy = None
    try:
        for _ in range(100):
            try:
                direct.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} did not answer within 5s")
        proxy = CuttingProxy(port)
        yield direct, proxy
    finally:
        direct.close()
        if proxy:
            proxy.close()
        server.kill()
        server.wait()


def test_redis_gone_mid_publish_keeps_the_old_payloads(db, demo_dir, redis_behind_proxy):
    direct, proxy = redis_behind_proxy
    env = {"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
    load_and_aggregate(db, demo_dir, "2017")
    keys = [cache.key_of(n) + suffix for n in cache.PAYLOADS for suffix in ("", ":summary")]

    first = run_cli("push_cache", "-p", "years=2017", "--json", env=env)
    assert first.code == 0, first.stderr
    published = {key: direct.get(key) for key in keys}
    assert all(published.values())
    direct.config_resetstat()

    proxy.arm(cut_before=3)  # after two keys are switched (a non-atomic publish would show them)
    second = run_cli("push_cache", "-p", "years=2017", "--json", env=env)
    assert second.code == 3, second.stderr
    assert proxy.cuts == 1
    outcome = second.json()
    assert outcome["status"] == "fail"
    assert outcome["error"] == (
        f"ServiceError: Redis at redis://127.0.0.1:{proxy.port}/0 failed while publishing the payloads "
        "(ConnectionError: Connection closed by server.); the keys switch in one MULTI/EXEC transaction, so "
        "they hold either all the previous payloads or all the new ones"
    )

    proxy.restore()  # Redis is back
    served = redis.Redis(port=proxy.port)
    try:
        assert {key: served.get(key) for key in keys} == published  # old content, byte for byte
        assert list(served.scan_iter("*:staging:*")) == []
    finally:
        served.close()
    # the transaction was opened and its commands reached Redis, which never executed them
    stats = direct.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == 1
    assert "cmdstat_exec" not in stats and "cmdstat_set" not in stats and "cmdstat_rename" not in stats


# --- 3. a lake write failing halfway --------------------------------------------------------------

SPEC_NAME = "safety_indices"


@pytest.fixture
def lake(tmp_path, monkeypatch, db) -> Path:
    """An empty lake, archive and staging area, and no safety_indices rows or writes."""
    root = tmp_path / "lake"
    monkeypatch.setenv("LAKE_URL", str(root))
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    spec = datasets.get(SPEC_NAME)
    db.execute("DROP TABLE IF EXISTS safety_indices_realtime")
    dualwrite.ensure_tables(db, spec)
    db.execute("DELETE FROM opsbook.writes WHERE dataset = %s", (SPEC_NAME,))
    shutil.rmtree(Path(os.environ["OPSBOOK_STATE_DIR"]) / "staging", ignore_errors=True)
    return root


class DiskFullAt:
    """Path.write_bytes that fills the disk during the ``nth`` write of a file under ``root``:
    half the bytes land, then ENOSPC. There is no tmpfs to fill here (no root), so the write is
    cut short in-process."""

    def __init__(self, root: Path, nth: int):
        self.root, self.nth = str(root), nth
        self.writes = 0
        self.partial: list[tuple[Path, int]] = []  # (file written to, bytes on disk when it failed)
        self.original = pathlib.Path.write_bytes

    def install(self, monkeypatch) -> "DiskFullAt":
        monkeypatch.setattr(pathlib.Path, "write_bytes", lambda path, data: self.write_bytes(path, data))
        return self

    def write_bytes(self, path: pathlib.Path, data: bytes) -> int:
        if not str(path).startswith(self.root):
            return self.original(path, data)
        self.writes += 1
        if self.writes != self.nth:
            return self.original(path, data)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            self.partial.append((path, os.path.getsize(path)))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def lake_contents(root: Path) -> dict[str, str]:
    """Every file in the lake (hidden ones included) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def lake_ledger(db, day: str | None = None) -> dict[str, tuple[str, str | None]]:
    """Lake writes (of the batches whose first day is ``day``): batch -> (status, last error)."""
    rows = db.execute(
        "SELECT batch_id, status, last_error FROM opsbook.writes WHERE dataset = %s AND target = 'lake' "
        "AND (%s::date IS NULL OR first_day = %s::date) ORDER BY batch_id",
        (SPEC_NAME, day, day),
    ).fetchall()
    return {b: (s, e) for b, s, e in rows}


def write(**values):
    """dual_write of the demo's batches (a stand-in source: the test database is a configured one)."""
    return call("dual_write", source="demo", allow_demo=True, **values)


def test_lake_write_failing_halfway_leaves_no_partial_file(lake, db, monkeypatch):
    assert write(window="2025-11-01").verdict().status == "pass"
    written = lake_contents(lake)
    assert sorted(written) == [f"processed/indices/indices_2025-11-0{d}.parquet" for d in (1, 2)]

    # rewriting day 1 (every batch merged into the day's file again), the disk fills during the
    # 3rd write: the file it replaces must stay whole, and the rewrites before it change no byte
    full = DiskFullAt(lake, nth=3).install(monkeypatch)
    verdict = write(window="2025-11-01", force=True).verdict()
    assert len(full.partial) == 1 and full.partial[0][1] > 0  # half a file really was on disk
    assert lake_contents(lake) == written  # same files, same bytes: nothing half-written, no temp left
    ledger = lake_ledger(db, "2025-11-01")
    failed = [b for b, (s, e) in ledger.items() if e and e.startswith("OSError: [Errno 28] No space left on device")]
    assert len(failed) == 1 and ledger[failed[0]][0] == "pending"
    later = [b for b in ledger if b > failed[0]]
    assert all(ledger[b] == ("pending", f"not tried: lake failed at batch {failed[0]}: {ledger[failed[0]][1]}")
               for b in later)  # fmt: skip
    assert all(ledger[b][0] == "success" for b in ledger if b < failed[0])
    assert verdict.status == "fail" and verdict.error is CheckFailed
    assert f"{1 + len(later)} batch write(s) pending (lake; first error: OSError: [Errno 28]" in verdict.summary
    assert "retry_pending=true" in verdict.summary

    # a new day, the disk full at its first write: nothing at all under the final names
    before = lake_contents(lake)
    full = DiskFullAt(lake, nth=1).install(monkeypatch)
    day3 = write(window="2025-11-03")
    batches = [b.batch_id for b in day3.batches]
    assert day3.verdict().status == "fail" and len(full.partial) == 1
    assert "processed/indices/indices_2025-11-03.parquet" not in before  # the premise: a new file
    assert lake_contents(lake) == before
    assert {s for b, (s, _) in lake_ledger(db).items() if b in batches} == {"pending"}
    assert len(batches) > 24

    monkeypatch.setattr(pathlib.Path, "write_bytes", full.original)  # the disk has room again
    retried = write(retry_pending=True)
    assert retried.verdict().status == "pass" and retried.pending == []
    files = lake_contents(lake)
    assert all(not Path(name).name.startswith(".") for name in files)
    assert (
        sum(pq.read_table(lake / name).num_rows for name in files)
        == db.execute("SELECT count(*) FROM safety_indices_realtime").fetchone()[0]
    )
    comparison = compare(datasets.get(SPEC_NAME), Days.parse("2025-11-01..2025-11-04"))
    assert comparison.differences == []


# --- 4. the kernel killed from outside ------------------------------------------------------------


def sleeper_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell('marker: str = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('print("before the kill:", 6 * 7)'),
        nbformat.v4.new_code_cell(
            "import pathlib, time\n\npathlib.Path(marker).write_text('sleeping')\ntime.sleep(120)"
        ),
        nbformat.v4.new_code_cell('print("after the sleep")'),
    ]
    nbformat.write(nb, path)
    return path


def is_kernel(proc: psutil.Process) -> bool:
    try:
        return "ipykernel_launcher" in proc.cmdline()
    except psutil.NoSuchProcess:
        return False


def test_kernel_killed_from_outside_exits_6_with_the_partial_report(db, tmp_path):
    notebook = sleeper_notebook(tmp_path / "sleeper.ipynb")
    marker = tmp_path / "sleeping"
    proc = start_cli(str(notebook), "-p", f"marker={marker}", "--json")
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the sleeping cell never started"
        # the run's own kernel: its cmdline does not name the opsbook-kernel- folder (the
        # connection file is elsewhere), so helpers.kernel_processes() cannot find it
        kernels = [p for p in psutil.Process(proc.pid).children(recursive=True) if is_kernel(p)]
        assert len(kernels) == 1
        kernels[0].kill()
    except BaseException:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()  # no kernel left sleeping when the test fails early
        raise
    finally:
        out, err = finish(proc)
    assert proc.returncode == 6, err
    outcome = json.loads(out)
    assert outcome["status"] == "fail" and outcome["error"].startswith("the kernel died")
    html, ipynb = Path(outcome["reports"]["html"]), Path(outcome["reports"]["ipynb"])
    assert html.is_file() and ipynb.is_file()
    assert 'data-status="fail"' in html.read_text()
    cells = [c for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code"]
    by_source = {c.source: c for c in cells}
    ran = by_source['print("before the kill:", 6 * 7)']
    assert [o.get("text") for o in ran.outputs] == ["before the kill: 42\n"]
    assert by_source['print("after the sleep")'].outputs == []
    assert runs.get(db, outcome["run_id"])["exit_code"] == 6
    assert not kernels[0].is_running()
