"""The local store is a locked door: the review's probes, and malformed HTTP, against the real
store process of the session's stack. Every probe must get a reply, and the store must go on
answering its own clients afterwards."""

from __future__ import annotations

import base64
import gzip
import random
import socket
import uuid
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr

from store.client import StoreTarget, StoreUnavailable, connect


def _auth(target: StoreTarget) -> str:
    assert target.password is not None
    token = f"{target.username}:{target.password.get_secret_value()}".encode()
    return "Basic " + base64.b64encode(token).decode()


def _raw(target: StoreTarget, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, half-close, and return everything the store replies."""
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _request(
    target: StoreTarget,
    method: str = "POST",
    query: dict[str, str] | None = None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one request over a raw socket."""
    path = "/?" + urlencode(query or {})
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{target.port}", "Connection: close"]
    if auth:
        lines.append(f"Authorization: {_auth(target)}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    reply = _raw(target, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"no HTTP reply: {reply[:200]!r}"
    return int(head.split()[1]), head, payload


def _store_answers(target: StoreTarget) -> None:
    client = connect(target)
    assert client.query("SELECT 41 + 1").result_rows == [(42,)]
    client.close()


def test_every_request_needs_the_stack_password(store_target: StoreTarget) -> None:
    status, _, body = _request(store_target, "GET", {"query": "SELECT 1"}, auth=False)
    assert status == 401 and b"AUTHENTICATION_FAILED" in body
    wrong = store_target.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(Exception, match="Authentication failed"):
        connect(wrong).query("SELECT 1")
    for how in (
        {"headers": {"X-ClickHouse-User": "default", "X-ClickHouse-Key": "guess"}},
        {"query": {"query": "SELECT 1", "user": "default", "password": "guess"}},
    ):
        status, _, _ = _request(store_target, "GET", auth=False, **how)  # type: ignore[arg-type]
        assert status == 401
    assert store_target.password is not None
    secret = store_target.password.get_secret_value()
    status, _, body = _request(
        store_target,
        "GET",
        {"query": "SELECT 7"},
        auth=False,
        headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": secret},
    )
    assert (status, body.strip()) == (200, b"7")
    # /ping stays open, like ClickHouse's, for health checks
    assert b" 200 " in _raw(store_target, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest.mark.parametrize(
    ("sql", "refused_for"),
    [
        ("SELECT * FROM file('/etc/hostname', 'LineAsString')", "file()"),
        ("SELECT `file`('/etc/hostname')", "file()"),
        ("INSERT INTO FUNCTION file('/tmp/atlas-probe.csv', 'CSV') SELECT 1", "file()"),
        ("INSERT INTO scored_traces FROM INFILE '/etc/passwd' FORMAT CSV", "INFILE"),
        ("SELECT 1 INTO OUTFILE '/tmp/atlas-probe.out'", "OUTFILE"),
        ("SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'a String')", "url()"),
        ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "remote()"),
        ("SELECT * FROM s3('http://127.0.0.1:1/x.csv')", "s3()"),
        ("SELECT * FROM python(df)", "python()"),
        ("CREATE TABLE probe (a String) ENGINE = File(CSV)", "File()"),
        ("CREATE DATABASE probe ENGINE = Filesystem('/etc')", "Filesystem()"),
        ("SET readonly = 1", "SET"),
        ("USE system", "USE"),
        ("SYSTEM SHUTDOWN", "SYSTEM"),
        ("CREATE USER probe", "CREATE USER"),
        ("SELECT 1; SELECT * FROM file('/etc/hostname', 'LineAsString')", "more than one"),
        ("SELECT 1 /* ; */ ; SET readonly = 1", "more than one"),
        ("CREATE TEMPORARY TABLE probe (a Int8)", "temporary table"),
    ],
)
def test_statements_that_reach_outside_or_stick_are_refused(
    store_target: StoreTarget, sql: str, refused_for: str
) -> None:
    status, _, body = _request(store_target, "POST", body=sql.encode())
    assert status in (400, 403), body
    assert refused_for.encode() in body and b"ACCESS_DENIED" in body, body
    assert b"Traceback" not in body
    _store_answers(store_target)


def test_get_is_read_only_and_settings_never_outlive_their_request(
    store_target: StoreTarget,
) -> None:
    table = f"probe_{uuid.uuid4().hex[:8]}"
    client = connect(store_target)
    client.command(f"CREATE TABLE {table} (a Int64) ENGINE = MergeTree ORDER BY a")
    status, _, body = _request(store_target, "GET", {"query": f"INSERT INTO {table} VALUES (1)"})
    assert status == 403 and b"READONLY" in body
    status, _, body = _request(
        store_target, "POST", {"readonly": "1"}, body=f"INSERT INTO {table} VALUES (2)".encode()
    )
    assert status == 403 and b"READONLY" in body
    # a setting sent with one request is gone for the next
    status, _, body = _request(
        store_target, "POST", {"max_result_rows": "1", "query": "SELECT number FROM numbers(5)"}
    )
    assert status != 200 or body.count(b"\n") <= 1
    client.command(f"INSERT INTO {table} VALUES (3)")
    rows = client.query("SELECT number FROM numbers(5)").result_rows
    assert len(rows) == 5
    assert client.query(f"SELECT groupArray(a) FROM {table}").result_rows == [([3],)]
    client.command(f"DROP TABLE {table}")


def test_an_inserts_settings_hold_for_it_alone_and_each_request_gets_its_database(
    store_target: StoreTarget,
) -> None:
    """An insert's settings travel in its own SETTINGS clause: they act (a repeated
    deduplication token writes nothing), never stick to the shared session, and values are
    quoted, not run; requests that alternate databases each run in the one they name."""
    table = f"probe_{uuid.uuid4().hex[:8]}"
    other = f"db_{uuid.uuid4().hex[:8]}"
    client = connect(store_target)
    client.command(
        f"CREATE TABLE {table} (a Int64) ENGINE = MergeTree ORDER BY a"
        " SETTINGS non_replicated_deduplication_window = 100"
    )
    token = "t', max_execution_time = '9"  # a quote in a value stays inside the value
    for rows in ([[1], [2]], [[3], [4]]):  # other rows: only the token drops the second
        client.insert(table, rows, settings={"insert_deduplication_token": token})
    assert client.query(f"SELECT count() FROM {table}").result_rows == [(2,)]
    assert client.query("SELECT getSetting('insert_deduplication_token')").result_rows == [("",)]
    client.command(f"CREATE DATABASE {other}")
    try:
        for database in (other, "default", other):
            status, _, body = _request(
                store_target, "POST", {"database": database, "query": "SELECT currentDatabase()"}
            )
            assert (status, body.strip()) == (200, database.encode())
    finally:
        client.command(f"DROP DATABASE {other}")
        client.command(f"DROP TABLE {table}")


def test_a_statement_is_stopped_at_the_execution_limit(store_target: StoreTarget) -> None:
    status, _, body = _request(
        store_target,
        "POST",
        {"max_execution_time": "1"},
        body=b"SELECT count() FROM numbers(100000000000)",
    )
    assert status >= 400 and b"TIMEOUT_EXCEEDED" in body, body[:300]
    _store_answers(store_target)


def test_a_foreign_host_header_is_refused(store_target: StoreTarget) -> None:
    for host in ("evil.example", "127.0.0.1.evil.example", f"localhost:{store_target.port + 1}"):
        request = (
            f"GET /?query=SELECT+1 HTTP/1.1\r\nHost: {host}\r\nAuthorization: "
            f"{_auth(store_target)}\r\n\r\n"
        ).encode()
        assert b" 403 " in _raw(store_target, request).split(b"\r\n")[0]


def test_response_headers_cannot_be_injected(store_target: StoreTarget) -> None:
    status, head, _ = _request(
        store_target, "GET", {"query": "SELECT 1", "query_id": "x\r\nSet-Cookie: owned=1"}
    )
    assert status == 400 and b"Set-Cookie" not in head


def test_bodies_are_bounded_and_a_bomb_is_refused(store_target: StoreTarget) -> None:
    bomb = gzip.compress(b"0" * (600 * 1024 * 1024), compresslevel=9)
    status, _, body = _request(
        store_target, "POST", {"query": "SELECT 1"}, body=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert status == 413, body
    status, _, body = _request(
        store_target,
        "POST",
        headers={"Content-Length": str(10**12)},
        body=b"",
    )
    assert status in (400, 413)
    _store_answers(store_target)


POST = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
MALFORMED = [
    POST + b"Content-Length: -5\r\n\r\nSELECT 1",
    POST + b"Content-Length: abc\r\n\r\nSELECT 1",
    POST + b"Content-Length: 100\r\n\r\nSELECT 1",
    POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n",
    POST + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    POST + b"Transfer-Encoding: chunked\r\n\r\n4\r\nSELECT 1",
    POST + b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip",
    POST + b"Content-Encoding: lz4\r\nContent-Length: 8\r\n\r\nnot lz4!",
    POST + b"Content-Encoding: br\r\nContent-Length: 8\r\n\r\nSELECT 1",
    POST + b"Authorization: Basic !!!\r\n\r\n",
    b"GET /?query=%FF%FE HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /?%3D%3D%3D HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET " + b"/" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
]


def _authorised(request: bytes, target: StoreTarget) -> bytes:
    """The same malformed request, but past the password check (where the parsing is)."""
    head, sep, rest = request.partition(b"\r\n")
    if not head.startswith((b"POST", b"GET")) or b"Authorization" in request:
        return request
    host = f"Host: 127.0.0.1:{target.port}".encode()
    rest = rest.replace(b"Host: 127.0.0.1\r\n", host + b"\r\n")
    return head + sep + f"Authorization: {_auth(target)}\r\n".encode() + rest


def test_malformed_http_always_gets_a_reply_and_the_store_lives(
    store_target: StoreTarget,
) -> None:
    rng = random.Random(13)
    requests = [_authorised(r, store_target) for r in MALFORMED] + list(MALFORMED)
    for _ in range(200):  # mutations of valid requests: flipped, cut, duplicated bytes
        base = bytearray(rng.choice(requests))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(base))
            action = rng.random()
            if action < 0.4:
                base[at] = rng.randrange(256)
            elif action < 0.7:
                del base[at : at + rng.randint(1, 20)]
            else:
                base[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        requests.append(bytes(base))
    for request in requests:
        reply = _raw(store_target, request)
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), (request[:120], reply[:200])
        assert b"Traceback" not in reply
        code = int(status_line.split()[1])
        assert 200 <= code < 600, status_line
    _store_answers(store_target)


def test_password_never_appears_in_errors(store_target: StoreTarget) -> None:
    assert store_target.password is not None
    secret = store_target.password.get_secret_value()
    url = f"http://default:{secret}@127.0.0.1:1/default"
    with pytest.raises(StoreUnavailable) as info:
        connect(url)
    assert secret not in str(info.value) and "***" in str(info.value)
    assert secret not in str(store_target) and secret not in repr(store_target)


def test_long_parameters_sent_as_a_form_are_bound_not_run_as_sql(
    store_target: StoreTarget,
) -> None:
    """clickhouse-connect sends parameters over 4 KiB (and then the query) as multipart form
    fields, as ClickHouse accepts them: the store binds them like URL parameters."""
    client = connect(store_target)
    text = "x" * 10_000 + "'; DROP TABLE scored_traces; --"
    [[length]] = client.query("SELECT length({s:String})", parameters={"s": text}).result_rows
    assert length == len(text)
    texts = [f"t{i}" * 300 for i in range(50)]
    [[count]] = client.query(
        "SELECT length({a:Array(String)})", parameters={"a": texts}
    ).result_rows
    assert count == 50
    boundary = "b0undary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT 1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT 2\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    status, _, body = _request(
        store_target,
        "POST",
        body=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 400 and b"'query' twice" in body
    _store_answers(store_target)
