"""A local Google Cloud Storage for tests and local runs: ``gcp-storage-emulator``, multi-threaded.

The emulator's own server answers one request at a time, and pyarrow's or the client's
parallel range reads of a large object then hang; this runs the same handlers on a
``ThreadingHTTPServer``. Point the client at it with ``STORAGE_EMULATOR_HOST=http://host:port``.

    python -m opsbook.stores.gcs_emulator --port 9023 --bucket opsbook-lake
"""

from __future__ import annotations

import argparse
import threading
from functools import partial
from http import server as http_server

from gcp_storage_emulator import server as emulator


class _ThreadedAPI(emulator.APIThread):
    def run(self) -> None:
        self._httpd = http_server.ThreadingHTTPServer(
            (self._host, self._port), partial(emulator.RequestHandler, self._storage)
        )
        self._httpd.daemon_threads = True
        self.is_running.set()
        self._httpd.serve_forever()


def create(host: str = "127.0.0.1", port: int = 0, buckets: tuple[str, ...] = (), data_dir: str | None = None):
    """An emulator (not started), in memory or kept in ``data_dir``; ``port=0`` picks a free
    port, see :func:`address`."""
    srv = emulator.create_server(host, port, in_memory=data_dir is None, data_dir=data_dir)
    srv._api = _ThreadedAPI(host, port, srv._storage, daemon=True)
    for bucket in buckets:
        from gcp_storage_emulator.handlers import buckets as bucket_handlers

        bucket_handlers.create_bucket(bucket, srv._storage)
    return srv


def address(srv: emulator.Server) -> str:
    host, port = srv._api._httpd.server_address[:2]
    return f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsbook.stores.gcs_emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9023)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    parser.add_argument("--data-dir", default=None, help="keep objects here across restarts (default: in memory)")
    args = parser.parse_args(argv)
    srv = create(args.host, args.port, tuple(args.bucket), args.data_dir)
    srv.start()
    print(f"STORAGE_EMULATOR_HOST={address(srv)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
