"""ClickHouse's HTTP interface served over chdb, so many processes can share one embedded store.

chdb runs the ClickHouse engine in-process and only one process may open a data directory.
This server is that one process: it owns the directory and speaks enough of ClickHouse's HTTP
protocol (queries, parameters, settings, inserts in any input format, compressed bodies,
``/ping``) that the ordinary clickhouse-connect HTTP client, the CLI, workers and Grafana can
use it like a ClickHouse server.

Run: ``python -m deploy.local.store_server --path DIR --port PORT`` (127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# URL parameters that steer the HTTP exchange rather than the query; never sent to the engine.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "add_http_cors_header",
        "client_protocol_version",
    }
)
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An INSERT whose data follows its FORMAT clause: the statement ends at the first line break.
INSERT_WITH_DATA = re.compile(rb"^(\s*INSERT\s.*?)\sFORMAT\s+(\w+)[ \t]*(\r?\n|$)", re.I | re.S)
ERROR_CODE = re.compile(r"Code:\s*(\d+)")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decode_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        out: list[bytes] = []
        rest = data
        while rest:  # clickhouse-connect sends one lz4 frame per block
            decompressor = lz4.frame.LZ4FrameDecompressor()
            out.append(decompressor.decompress(rest))
            rest = decompressor.unused_data
        return b"".join(out)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise ValueError(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate, lz4 or zstd)")


class StoreError(Exception):
    def __init__(self, message: str, status: int = HTTPStatus.INTERNAL_SERVER_ERROR):
        super().__init__(message)
        self.status = status
        found = ERROR_CODE.search(message)
        self.code = found.group(1) if found else "1000"


class ChdbEngine:
    """One chdb connection, serialised: chdb runs one statement at a time per connection."""

    def __init__(self, path: str):
        import chdb

        os.makedirs(path, exist_ok=True)
        try:
            self._conn = chdb.connect(path)
        except Exception as exc:
            raise SystemExit(
                f"cannot open the store at {path}: {exc} (is another process using it?)"
            ) from exc
        self._lock = threading.Lock()
        self.path = path

    def _run(self, sql: str, fmt: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self._conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise StoreError(str(exc).strip()) from exc

    def execute(
        self,
        sql: str,
        fmt: str,
        database: str,
        settings: dict[str, str],
        params: dict[str, Any],
    ) -> Any:
        with self._lock:
            self._run(f"USE `{database.replace('`', '')}`", "TabSeparated")
            previous = self._snapshot(settings)
            try:
                for name, value in settings.items():
                    self._run(f"SET {name} = {_quote(value)}", "TabSeparated")
                return self._run(sql, fmt, params)
            finally:
                self._restore(previous)

    def _snapshot(self, settings: dict[str, str]) -> dict[str, str | None]:
        if not settings:
            return {}
        names = ", ".join(_quote(name) for name in settings)
        rows = self._run(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
            "JSONEachRow",
        )
        previous: dict[str, str | None] = dict.fromkeys(settings)
        for line in rows.bytes().splitlines():
            row = json.loads(line)
            if row["changed"]:
                previous[row["name"]] = row["value"]
        return previous

    def _restore(self, previous: dict[str, str | None]) -> None:
        for name, value in previous.items():
            restore = "DEFAULT" if value is None else _quote(value)
            # an unknown custom setting never took effect: nothing to restore
            with contextlib.suppress(StoreError):
                self._run(f"SET {name} = {restore}", "TabSeparated")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class StoreRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StoreHttpServer
    server_version = "atlas-store"

    def setup(self) -> None:
        super().setup()
        # Without this every small response waits on Nagle + delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self._read_body())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in ("/ping", "/ping/"):
            self._reply(HTTPStatus.OK, b"Ok.\n", {})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        started = time.perf_counter()
        try:
            body = _decode_body(body, self.headers.get("Content-Encoding", ""))
            result = self._execute(params, body)
        except StoreError as exc:
            self._reply(
                exc.status,
                f"{exc}\n".encode(),
                {"X-ClickHouse-Exception-Code": exc.code, "X-ClickHouse-Query-Id": query_id},
            )
            return
        except ValueError as exc:
            self._reply(
                HTTPStatus.BAD_REQUEST,
                f"Code: 1000. {exc}\n".encode(),
                {"X-ClickHouse-Exception-Code": "1000", "X-ClickHouse-Query-Id": query_id},
            )
            return
        payload = result.bytes() if result is not None else b""
        summary = {
            "read_rows": str(_stat(result, "rows_read")),
            "read_bytes": str(_stat(result, "bytes_read")),
            "written_rows": str(_stat(result, "rows_written")),
            "elapsed_ns": str(int((time.perf_counter() - started) * 1e9)),
        }
        self._reply(
            HTTPStatus.OK,
            payload,
            {
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Summary": json.dumps(summary),
                "X-ClickHouse-Timezone": "UTC",
                "X-ClickHouse-Format": params.get("default_format", "TabSeparated"),
            },
        )

    def _execute(self, params: dict[str, str], body: bytes) -> Any:
        database = params.get("database") or "default"
        output_format = params.get("default_format") or "TabSeparated"
        bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v
            for k, v in params.items()
            if k not in TRANSPORT_PARAMS and not k.startswith("param_")
        }
        for name in settings:
            if not SETTING_NAME.match(name):
                raise ValueError(f"invalid setting name {name!r}")
        query = params.get("query", "").encode()
        text = query + (b"\n" if query and body else b"") + body
        if not text.strip():
            raise ValueError("empty query: send it in the 'query' parameter or the request body")
        engine = self.server.engine
        insert = INSERT_WITH_DATA.match(text)
        if insert and text[insert.end() :]:
            statement = insert.group(1).decode().strip()
            data_format = insert.group(2).decode()
            with tempfile.NamedTemporaryFile(
                dir=self.server.spool_dir, suffix=".insert", delete=False
            ) as spool:
                spool.write(text[insert.end() :])
            try:
                sql = f"{statement} FROM INFILE {_quote(spool.name)} FORMAT {data_format}"
                return engine.execute(sql, "TabSeparated", database, settings, bind)
            finally:
                os.unlink(spool.name)
        return engine.execute(text.decode(), output_format, database, settings, bind)

    def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def _stat(result: Any, name: str) -> int:
    try:
        return int(getattr(result, name)())
    except Exception:
        return 0


class StoreHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old connections linger

    def __init__(self, port: int, engine: ChdbEngine, verbose: bool = False):
        self.engine = engine
        self.verbose = verbose
        self.spool_dir = os.path.join(engine.path, ".spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        super().__init__(("127.0.0.1", port), StoreRequestHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve ClickHouse's HTTP interface on 127.0.0.1 over an embedded chdb store."
    )
    parser.add_argument("--path", required=True, help="chdb data directory (owned exclusively)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        server = StoreHttpServer(args.port, ChdbEngine(args.path), args.verbose)
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"store serving {args.path} on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    server.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
