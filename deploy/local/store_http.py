"""The HTTP edge of the local store: who may ask, and reading what they send within bounds.

Everything here fails with :class:`HttpError` (a status and a ClickHouse-style one-line
message), never with a traceback, whatever the request: a negative or huge Content-Length, a
bad chunk, a body that inflates past the cap, CR/LF in a header a reply would echo.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import zlib
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import BinaryIO

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
        "readonly",  # honoured by the statement policy, never set on the shared session
    }
)
ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
CHUNK_SIZE_LINE = 64


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str = "1000"):
        super().__init__(message)
        self.status = status
        self.code = code


def check_host(host_header: str | None, port: int) -> None:
    """Only 127.0.0.1/localhost on our port: a web page cannot reach us through DNS
    rebinding (its Host is its own name)."""
    if not host_header:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. a Host header is required")
    value = host_header.strip().lower()
    if value.startswith("["):  # [::1]:port
        host, _, rest = value.partition("]")
        host, given_port = host + "]", rest.removeprefix(":")
    else:
        host, _, given_port = value.partition(":")
    if host not in ALLOWED_HOSTS or given_port not in ("", str(port)):
        raise HttpError(
            HTTPStatus.FORBIDDEN,
            "Code: 497. Host header not allowed: the local store answers only 127.0.0.1 or "
            "localhost. (ACCESS_DENIED)",
            "497",
        )


def credentials(headers: Message, params: dict[str, str]) -> tuple[str, str]:
    """(user, password) the way ClickHouse takes them: Basic auth, X-ClickHouse-User/Key, or
    the user/password parameters."""
    authorization = headers.get("Authorization", "")
    if authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise HttpError(
                HTTPStatus.BAD_REQUEST, "Code: 1000. malformed Basic authorization"
            ) from None
        user, _, password = decoded.partition(":")
        return user, password
    user = headers.get("X-ClickHouse-User") or params.get("user") or "default"
    password = headers.get("X-ClickHouse-Key") or params.get("password") or ""
    return user, password


def authenticate(headers: Message, params: dict[str, str], user: str, password: str) -> None:
    given_user, given_password = credentials(headers, params)
    user_ok = hmac.compare_digest(given_user.encode(), user.encode())
    if not (hmac.compare_digest(given_password.encode(), password.encode()) and user_ok):
        raise HttpError(
            HTTPStatus.UNAUTHORIZED,
            f"Code: 516. DB::Exception: {user_label(given_user)}: Authentication failed: password "
            "is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
            "516",
        )


def user_label(user: str) -> str:
    return user if SAFE_TOKEN.match(user) else "(a user name with unusual characters)"


def safe_token(value: str, what: str) -> str:
    """A value a reply echoes in a header: no CR/LF, nothing odd."""
    if not SAFE_TOKEN.match(value):
        raise HttpError(
            HTTPStatus.BAD_REQUEST,
            f"Code: 1000. invalid {what}: use 1-128 letters, digits and _ . : -",
        )
    return value


def read_body(rfile: BinaryIO, headers: Message, limit: int) -> bytes:
    if headers.get("Transfer-Encoding", "").strip().lower() == "chunked":
        return _read_chunked(rfile, limit)
    length_text = headers.get("Content-Length")
    if length_text is None:
        return b""
    if not length_text.strip().isdigit():
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Code: 1000. bad Content-Length {length_text!r}")
    length = int(length_text)
    _check_size(length, limit)
    body = rfile.read(length)
    if len(body) != length:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. the body ended before Content-Length")
    return body


def _read_chunked(rfile: BinaryIO, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(CHUNK_SIZE_LINE)
        size_text = line.split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. bad chunk size") from None
        if size < 0:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. bad chunk size")
        if size == 0:
            for _ in range(100):  # trailers, bounded
                if rfile.readline(8192) in (b"\r\n", b"\n", b""):
                    return b"".join(chunks)
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. too many trailer lines")
        total += size
        _check_size(total, limit)
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. truncated or malformed chunk")
        chunks.append(chunk)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise HttpError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"Code: 1000. request body over {limit:,} bytes (the store's --max-body-bytes)",
        )


def decode_body(data: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding, never producing more than ``limit`` bytes."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return data
        if encoding in ("gzip", "deflate"):
            inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            out = inflater.decompress(data, limit + 1)
            _check_size(len(out), limit)
            if not inflater.eof:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"Code: 1000. truncated {encoding} body")
            return out
        if encoding == "lz4":
            return _lz4(data, limit)
    except (zlib.error, RuntimeError, ValueError) as exc:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"Code: 1000. corrupt {encoding} body: {exc}"
        ) from None
    raise HttpError(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"Code: 1000. unsupported Content-Encoding {encoding[:40]!r} (use gzip, deflate or lz4)",
    )


def _lz4(data: bytes, limit: int) -> bytes:
    import lz4.frame

    out: list[bytes] = []
    total = 0
    rest = data
    while rest:  # clickhouse-connect sends one lz4 frame per block
        decompressor = lz4.frame.LZ4FrameDecompressor()
        block = decompressor.decompress(rest, max_length=limit + 1 - total)
        total += len(block)
        _check_size(total, limit)
        if not decompressor.eof:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. truncated lz4 body")
        out.append(block)
        rest = decompressor.unused_data
    return b"".join(out)


def form_fields(body: bytes, content_type: str) -> dict[str, str] | None:
    """The fields of a ``multipart/form-data`` body (None for any other content type): how
    clickhouse-connect sends the query and its parameters once they are too long for the URL
    (over 4 KiB), as ClickHouse's HTTP interface accepts them. Each field needs a name and a
    UTF-8 value; a field named twice is refused rather than guessed."""
    if not content_type.strip().lower().startswith("multipart/form-data"):
        return None
    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. a multipart form without its parts")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Code: 1000. a form field without a name")
        if name in fields:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Code: 1000. form field {name[:60]!r} twice")
        value = part.get_payload(decode=True)
        try:
            fields[name] = (value if isinstance(value, bytes) else b"").decode()
        except UnicodeDecodeError:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"Code: 1000. form field {name[:60]!r} is not UTF-8"
            ) from None
    return fields
