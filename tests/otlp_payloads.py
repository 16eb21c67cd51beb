"""OTLP export requests built by hand (OTLP/JSON, hex ids), for the receiver's tests and
benchmark: GenAI spans in each layout the receiver reads, a fake producer, and a receiver on a
thread (the ``receiver`` fixture)."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.otlp import AckedSender, OtlpConfig, OtlpReceiver
from ingest.otlp_decode import _hex_ids_to_base64
from ingest.serving import ServerThread
from schemas.codec import AvroCodec
from schemas.models import Event


def value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        finite = v == v and abs(v) != float("inf")
        return {"doubleValue": v if finite else {"nan": "NaN"}.get(str(v), str(v).title())}
    if isinstance(v, list):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    return {"stringValue": str(v)}


def kvs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in attrs.items()]


def new_ids() -> tuple[str, str]:
    return os.urandom(16).hex(), os.urandom(8).hex()


def span(
    trace_id: str,
    span_id: str,
    attrs: dict[str, Any],
    parent: str = "",
    name: str = "chat m",
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    start: int = 1_795_000_000_000_000_000,
) -> dict[str, Any]:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 250_000_000),
        "attributes": kvs(attrs),
        "events": [
            {"name": n, "timeUnixNano": str(start + 1), "attributes": kvs(a)} for n, a in events
        ],
    }


def request(spans: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": kvs(resource or {"service.name": "test"})},
                "scopeSpans": [{"scope": {"name": "hand"}, "spans": spans}],
            }
        ]
    }


def chat_attrs(question: str, answer: str, **extra: Any) -> dict[str, Any]:
    """A model call in the current conventions, content on the span (span_only)."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m-1",
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": question}]}]
        ),
        "gen_ai.output.messages": json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": answer}],
                    "finish_reason": "stop",
                }
            ]
        ),
        **extra,
    }


def as_json(payload: dict[str, Any], compress: bool = False) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if compress:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    return body, headers


def as_protobuf(payload: dict[str, Any], compress: bool = False) -> tuple[bytes, dict[str, str]]:
    message = ExportTraceServiceRequest()
    ParseDict(_hex_ids_to_base64(payload), message)
    body = message.SerializeToString()
    headers = {"content-type": "application/x-protobuf"}
    if compress:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    return body, headers


class FakeKafka:
    """Encodes what it is sent (so the codec's limits apply) and acknowledges at once, or,
    while ``down``, never."""

    def __init__(self) -> None:
        self.codec = AvroCodec()
        self.events: list[Event] = []
        self.down = False
        self._lock = threading.Lock()

    def send(self, event: Event, verdict: Callable[[str | None], None] | None = None) -> None:
        self.codec.encode(event)
        if self.down:
            return
        with self._lock:
            self.events.append(event)
        if verdict is not None:
            verdict(None)

    def poll(self, timeout: float = 0.0) -> int:
        threading.Event().wait(timeout)
        return 0

    def close(self, timeout: float = 30.0) -> None:
        pass

    def of(self, kind: type[Event]) -> list[Any]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


class Receiver:
    def __init__(self, kafka: Any = None, **config: Any) -> None:
        self.kafka = kafka or FakeKafka()
        self.sender = kafka if isinstance(kafka, AckedSender) else AckedSender(self.kafka)
        self.receiver = OtlpReceiver(OtlpConfig(**config), self.sender)
        self.server = ServerThread(self.receiver.app)
        self.url = self.server.url

    def post(
        self, body: bytes, headers: dict[str, str], path: str = "/v1/traces"
    ) -> httpx.Response:
        return httpx.post(self.url + path, content=body, headers=headers, timeout=30)

    def stop(self) -> None:
        self.server.stop()
        self.sender.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()
