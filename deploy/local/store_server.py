"""ClickHouse's HTTP interface served over chdb, so many processes can share one embedded store.

chdb runs the ClickHouse engine in-process and only one process may open a data directory.
This server is that one process: it owns the directory and speaks enough of ClickHouse's HTTP
protocol (queries, parameters, settings, inserts in any input format, compressed bodies,
``/ping``) that the ordinary clickhouse-connect HTTP client, the CLI, workers and Grafana can
use it like a ClickHouse server.

It is a locked door: every request but ``/ping`` must carry the stack's password (ClickHouse's
own HTTP auth), name 127.0.0.1 or localhost as its Host, and stay within the body, time and
statement limits (``deploy/local/store_policy.py`` says which statements). Settings a client
sends apply to its request only (``deploy/local/store_engine.py`` runs the statements). A
malformed request gets a 4xx reply, never a traceback.

Run: ``python -m deploy.local.store_server --path DIR --port PORT --password-file FILE``
(127.0.0.1 only; FILE holds the password, mode 0600).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from deploy.local.store_engine import (
    DEFAULT_MAX_EXECUTION_S,
    ChdbEngine,
    StoreError,
    sql_string,
)
from deploy.local.store_http import (
    TRANSPORT_PARAMS,
    HttpError,
    authenticate,
    check_host,
    decode_body,
    form_fields,
    read_body,
    safe_token,
)
from deploy.local.store_policy import PolicyError, StatementPolicy
from schemas.secrets import SecretFileError, read_secret

DEFAULT_MAX_BODY_BYTES = 512 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 60.0
STORE_USER = "default"
log = logging.getLogger("atlas.store")
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An INSERT whose data follows its FORMAT clause: the statement ends at the first line break.
INSERT_WITH_DATA = re.compile(rb"^(\s*INSERT\s.*?)\sFORMAT\s+(\w+)[ \t]*(\r?\n|$)", re.I | re.S)


class StoreRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Replies to requests with no or a bad version still start with a status line.
    default_request_version = "HTTP/1.0"
    error_message_format = "Code: 1000. %(code)d %(message)s: %(explain)s\n"
    error_content_type = "text/plain; charset=UTF-8"
    server: StoreHttpServer
    server_version = "atlas-store"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s  # a silent or slow client frees its thread
        super().setup()
        # Without this every small response waits on Nagle + delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a GET's body is never read: do not parse it next
        self._guarded(read_only=True)

    def do_POST(self) -> None:
        self._guarded(read_only=False)

    def _guarded(self, read_only: bool) -> None:
        """Every request gets a reply; an unexpected error is logged here, not sent."""
        query_id = str(uuid.uuid4())
        try:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            if params.get("query_id"):
                query_id = safe_token(params["query_id"], "query_id")
            self._handle(params, query_id, read_only)
        except HttpError as exc:
            self.close_connection = True  # the rest of a refused body is never read
            self._reply_error(exc.status, str(exc), exc.code, query_id)
        except (StoreError, PolicyError) as exc:
            status = getattr(exc, "status", HTTPStatus.FORBIDDEN)
            self._reply_error(status, str(exc), exc.code, query_id)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("request %s failed", query_id)
            self.close_connection = True
            self._reply_error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"Code: 1001. internal error in the local store (query {query_id}; see its log)",
                "1001",
                query_id,
            )

    def _handle(self, params: dict[str, str], query_id: str, read_only: bool) -> None:
        server = self.server
        if urlsplit(self.path).path in ("/ping", "/ping/"):
            self._reply(HTTPStatus.OK, b"Ok.\n", {})
            return
        check_host(self.headers.get("Host"), server.server_address[1])
        authenticate(self.headers, params, STORE_USER, server.password)
        output_format = safe_token(params.get("default_format") or "TabSeparated", "format")
        body = b"" if read_only else read_body(self.rfile, self.headers, server.max_body_bytes)
        body = decode_body(body, self.headers.get("Content-Encoding", ""), server.max_body_bytes)
        fields = form_fields(body, self.headers.get("Content-Type", ""))
        if fields is not None:  # the query and its parameters sent as a form, not SQL
            params, body = {**params, **fields}, b""
        read_only = read_only or params.get("readonly", "0") not in ("", "0")
        started = time.perf_counter()
        result = self._execute(params, body, output_format, read_only)
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
                "X-ClickHouse-Format": output_format,
            },
        )

    def _execute(
        self, params: dict[str, str], body: bytes, output_format: str, read_only: bool
    ) -> Any:
        database = params.get("database") or "default"
        bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v
            for k, v in params.items()
            if k not in TRANSPORT_PARAMS and not k.startswith("param_")
        }
        for name in settings:
            if not SETTING_NAME.match(name):
                raise HttpError(HTTPStatus.BAD_REQUEST, f"Code: 115. invalid setting name {name!r}")
        query = params.get("query", "").encode()
        text = query + (b"\n" if query and body else b"") + body
        if not text.strip():
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                "Code: 62. empty query: send it in the 'query' parameter or the request body",
            )
        engine = self.server.engine
        insert = INSERT_WITH_DATA.match(text)
        if insert and text[insert.end() :]:
            statement = _text(insert.group(1)).strip()
            data_format = safe_token(insert.group(2).decode(), "input format")
            self.server.policy.check(f"{statement} FORMAT {data_format}", read_only, bind)
            with tempfile.NamedTemporaryFile(
                dir=self.server.spool_dir, suffix=".insert", delete=False
            ) as spool:
                spool.write(text[insert.end() :])
            try:
                sql = f"{statement} FROM INFILE {sql_string(spool.name)} FORMAT {data_format}"
                return engine.execute(sql, "TabSeparated", database, settings, bind)
            finally:
                os.unlink(spool.name)
        sql = _text(text)
        self.server.policy.check(sql, read_only, bind)
        return engine.execute(sql, output_format, database, settings, bind)

    def _reply_error(self, status: int, message: str, code: str, query_id: str) -> None:
        headers = {"X-ClickHouse-Exception-Code": code, "X-ClickHouse-Query-Id": query_id}
        if status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = 'Basic realm="atlas local store"'
        with contextlib.suppress(OSError):
            self._reply(status, f"{message}\n".encode(), headers, "text/plain; charset=UTF-8")

    def _reply(
        self,
        status: int,
        payload: bytes,
        headers: dict[str, str],
        content_type: str = "application/octet-stream",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. the query is not UTF-8") from None


def _stat(result: Any, name: str) -> int:
    try:
        return int(getattr(result, name)())
    except Exception:
        return 0


class StoreHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old connections linger

    def __init__(
        self,
        port: int,
        engine: ChdbEngine,
        password: str,
        verbose: bool = False,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ):
        if not password:
            raise ValueError("the local store needs a password")
        self.engine = engine
        self.policy = StatementPolicy(engine.explain)
        self.password = password
        self.verbose = verbose
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.spool_dir = os.path.join(engine.path, ".spool")
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        super().__init__(("127.0.0.1", port), StoreRequestHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve ClickHouse's HTTP interface on 127.0.0.1 over an embedded chdb store, "
        "for clients that present the stack's password."
    )
    parser.add_argument("--path", required=True, help="chdb data directory (owned exclusively)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--password-file", required=True, help="file holding the password (mode 0600)"
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body, before and after decompression (default 512 MiB)",
    )
    parser.add_argument(
        "--max-execution-s",
        type=int,
        default=DEFAULT_MAX_EXECUTION_S,
        help="longest a statement may run; clients may ask for less (default 600)",
    )
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="the certificate's PEM private key (mode 0600)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        password = read_secret(Path(args.password_file)).get_secret_value()
    except SecretFileError as exc:
        print(f"cannot start the store: {exc}", file=sys.stderr)
        return 2
    try:
        engine = ChdbEngine(args.path, args.max_execution_s)
        server = StoreHttpServer(args.port, engine, password, args.verbose, args.max_body_bytes)
        if args.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(args.tls_cert, args.tls_key)
            # the handshake happens in the request's thread, never in the accept loop
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheme = "https" if args.tls_cert else "http"
    print(f"store serving {args.path} on {scheme}://127.0.0.1:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    server.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
