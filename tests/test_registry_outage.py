"""With a schema registry configured, a registry that cannot answer is an outage, never the
event's fault: the codec raises RegistryUnavailable (named, password redacted), which the CLI
prints as one line and the stream (tests/test_stream_engine.py) and the sink wait out instead of
dead-lettering. A registry
that answers "no" (an unknown schema id) is the message's fault: a DecodeError.

The registry here is a stub HTTP server that answers every request with one status: enough
for the client's error paths. No real Confluent-compatible registry runs on this machine (see
README, "Schema registry")."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from atlas.settings import Settings
from schemas.codec import AvroCodec, DecodeError, RegistryUnavailable
from schemas.models import InteractionEvent
from tests.factories import interaction
from tests.test_sink_batching import ScriptedConsumer, sink_with

CONFLUENT_FRAMED = b"\x00\x00\x00\x00\x07" + b"\x02"  # schema id 7, then a body


def answering(status: int) -> Iterator[str]:
    class Stub(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            body = json.dumps({"error_code": status * 100 + 3, "message": "stub"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://registry-user:s3cret-pass@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=[503, 429, 401])  # down, rate-limited, credentials being rotated
def unavailable(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from answering(request.param)


@pytest.fixture
def not_found() -> Iterator[str]:
    yield from answering(404)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def codec(url: str) -> AvroCodec:
    return AvroCodec(registry_url=url, registry_config={"max.retries": 0})


def test_a_registry_that_cannot_answer_is_an_outage_named_without_its_password(
    unavailable: str,
) -> None:
    with pytest.raises(RegistryUnavailable) as raised:
        codec(unavailable).encode(interaction(random.Random(1)))
    message = str(raised.value)
    assert "unavailable while registering InteractionEvent" in message
    assert "atlas.interactions.v1-value" in message
    assert "registry-user:***@127.0.0.1" in message and "s3cret-pass" not in message
    with pytest.raises(RegistryUnavailable, match="while reading a InteractionEvent"):
        codec(unavailable).decode(CONFLUENT_FRAMED, InteractionEvent)


def test_an_unreachable_registry_is_an_outage() -> None:
    with pytest.raises(RegistryUnavailable, match="ConnectError"):
        codec(closed_port_url()).decode(CONFLUENT_FRAMED, InteractionEvent)


def test_an_unknown_schema_id_is_the_messages_fault(not_found: str) -> None:
    with pytest.raises(DecodeError, match="cannot decode InteractionEvent from registry format"):
        codec(not_found).decode(CONFLUENT_FRAMED, InteractionEvent)


class Pausable(ScriptedConsumer):
    def __init__(self) -> None:
        super().__init__([])
        self.paused: list[Any] = []
        self.resumed: list[Any] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("atlas.rewards.v1", 0)]

    def pause(self, partitions: list[Any]) -> None:
        self.paused += partitions

    def resume(self, partitions: list[Any]) -> None:
        self.resumed += partitions

    def poll(self, timeout: float) -> None:
        return None


class FlakyCodec:
    """Decodes after ``outages`` registry failures."""

    def __init__(self, outages: int):
        self.outages, self.limits = outages, AvroCodec().limits

    def decode(self, data: bytes, event_type: type) -> str:
        if self.outages:
            self.outages -= 1
            raise RegistryUnavailable("schema registry http://r unavailable")
        return "event"


class Message:
    def topic(self) -> str:
        return "atlas.rewards.v1"

    def value(self) -> bytes:
        return b"\x00"


def test_the_sink_pauses_through_an_outage_and_dead_letters_nothing(
    kafka_config: dict[str, str],
) -> None:
    consumer = Pausable()
    sink = sink_with(kafka_config, consumer, max_backoff_s=0.2)
    sink.codec = FlakyCodec(outages=2)
    message = Message()
    decoded: list[tuple[object, object]] = []
    left_out: list[object] = []
    failures: list[float] = []
    assert sink._until_done(
        lambda: decoded.extend(sink._decode([message], left_out)),  # type: ignore[arg-type]
        (RegistryUnavailable,),
        lambda exc, backoff: failures.append(backoff),
        threading.Event(),
    )
    assert decoded == [(message, "event")] and failures == [0.5, 0.2]  # capped backoff
    assert consumer.paused == consumer.resumed == [TopicPartition("atlas.rewards.v1", 0)]
    assert sink.stats.dead_letters == 0 and sink.stats.skipped == 0 and left_out == []


def test_the_cli_uses_the_registry_and_says_so_in_one_line(stack_settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atlas.cli", "retrain", "gepa", "--agent", "registry-probe"],
        env={
            **os.environ,
            "ATLAS_HOME": str(stack_settings.home),
            "ATLAS_SCHEMA_REGISTRY_URL": closed_port_url(),
            "COLUMNS": "300",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "schema registry" in lines[0] and "unavailable" in lines[0], lines
