"""The OTLP/HTTP receiver: ``POST /v1/traces`` and ``POST /v1/logs`` (protobuf or JSON, gzip
or not) turn GenAI telemetry into InteractionEvents and FeedbackEvents on Kafka
(``ingest/otlp_events.py`` says which spans make which event); ``GET /atlas/stats`` shows the
counters.

Guarantees, so that an exporter's own retries give at-least-once delivery:

* 200 only once Kafka acknowledged (``acks=all``) every event of the request, and the dead
  letter of every rejected span; the exporter's retry of a request that got no answer makes
  the same event ids, which the reward processor and the store collapse.
* 503 with ``Retry-After`` when Kafka does not acknowledge within ``ack_timeout_s`` (it is
  unreachable, or the producer's buffer is full): OTLP exporters retry a 503.
* 400 with a reason when the body is no OTLP export request (undecodable protobuf or JSON, an
  unsupported Content-Type or Content-Encoding), or when every GenAI span in it was rejected
  (wrong types, NaN or negative token counts, an attribute over 1 MiB); the original bytes go
  to the dead-letter topic (the whole body, or each rejected span's own bytes). A request with
  some spans rejected and some accepted gets 200 with OTLP's ``partial_success`` naming how
  many were rejected and why, so nothing valid is lost to a retry the exporter will not make.
* 413 for a body over ``max_body_bytes``, compressed or decompressed.
* Non-GenAI spans and log records are counted (``ignored``) and dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.rpc.status_pb2 import Status
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.feedback import BodyTooLarge, read_capped
from ingest.otlp_decode import (
    JSON,
    PROTOBUF,
    Malformed,
    Signal,
    TooLarge,
    decompress,
    export_response,
    logs_of,
    media_type,
    parse_request,
    spans_of,
)
from ingest.otlp_events import Converted, from_logs, from_spans
from runtime.producer import ProducerError
from schemas.deadletter import make_dead_letter
from schemas.models import Event, path_component

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PROCESSOR = "otlp-receiver"
COUNTERS = (
    "requests",
    "spans",
    "log_records",
    "interactions",
    "feedback",
    "ignored",
    "no_content",
    "grouped",
    "rejected",
    "malformed",
    "too_large",
    "unavailable",
    "dead_letters",
)


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time; the message says what is missing."""


class Sink(Protocol):
    """What the sender needs of a producer (``EventProducer`` is one)."""

    def send(self, event: Event, verdict: Callable[[str | None], None] | None = None) -> None: ...

    def poll(self, timeout: float = 0.0) -> int: ...

    def close(self, timeout: float = 30.0) -> None: ...


class AckedSender:
    """Produces events and waits for Kafka's verdict on each: a thread serves the producer's
    delivery reports, each send's verdict resolves a future the request awaits."""

    def __init__(self, producer: Sink):
        self.producer = producer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="otlp-acks", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def send(self, events: list[Event]) -> list[concurrent.futures.Future[str | None]]:
        futures = []
        for event in events:
            future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
            self.producer.send(event, future.set_result)
            futures.append(future)
        return futures

    async def deliver(self, events: list[Event], timeout: float) -> None:
        """Return once Kafka acknowledged every event; KafkaUnavailable otherwise."""
        if not events:
            return
        try:
            futures = await asyncio.to_thread(self.send, events)
        except ProducerError as exc:
            raise KafkaUnavailable(str(exc)) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        done, pending = await asyncio.wait(waiting, timeout=timeout)
        errors = [f.result() for f in done if f.result() is not None]
        if pending or errors:
            reason = errors[0] if errors else f"no acknowledgement within {timeout:.0f}s"
            raise KafkaUnavailable(
                f"Kafka did not acknowledge {len(pending) + len(errors)} of {len(events)}"
                f" event(s): {reason}"
            )

    def close(self, timeout: float = 30.0) -> None:
        """Wait up to ``timeout`` for what is in flight; what Kafka has not acknowledged by
        then was answered 503 (or gets no answer), so its exporter still holds it."""
        self._stop.set()
        self._thread.join(5)
        try:
            self.producer.close(timeout)
        except ProducerError as exc:
            log.warning("closing with events unacknowledged: %s", exc)


@dataclass
class OtlpConfig:
    default_agent: str | None = "otlp"
    max_body_bytes: int = 16 * MIB
    ack_timeout_s: float = 5.0
    retry_after_s: int = 5

    def __post_init__(self) -> None:
        if self.default_agent is not None:
            path_component(self.default_agent, "default agent id")


class Answer(Exception):
    """A reply other than 200: status, reason, and headers."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def status_body(kind: str, code: int, message: str) -> tuple[bytes, str]:
    """OTLP's error body (a google.rpc.Status) in the request's media; gRPC's code 3 is
    INVALID_ARGUMENT, 14 UNAVAILABLE."""
    if kind == "json":
        return json.dumps({"code": code, "message": message}).encode(), JSON
    return Status(code=code, message=message).SerializeToString(), PROTOBUF


class OtlpReceiver:
    """The receiver's handlers around one acknowledged sender; ``app`` is the ASGI app."""

    def __init__(self, config: OtlpConfig, sender: AckedSender):
        self.config, self.sender = config, sender
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.app = Starlette(
            routes=[
                Route("/v1/traces", self.traces, methods=["POST"]),
                Route("/v1/logs", self.logs, methods=["POST"]),
                Route("/atlas/stats", self.stats, methods=["GET"]),
            ]
        )

    async def traces(self, request: Request) -> Response:
        return await self._export(request, "traces")

    async def logs(self, request: Request) -> Response:
        return await self._export(request, "logs")

    async def stats(self, _request: Request) -> Response:
        return JSONResponse(self.counts)

    async def _export(self, request: Request, signal: Signal) -> Response:
        self.counts["requests"] += 1
        kind = "json" if request.headers.get("content-type", "").startswith(JSON) else "protobuf"
        try:
            converted = await self._convert(request, signal)
            dead = [
                self._dead_letter(signal, r.original, r.reason, "InvalidSpan")
                for r in converted.rejected
            ]
            await self._deliver(converted.events + dead)
        except Answer as answer:
            code = {503: 14, 500: 13}.get(answer.status, 3)  # gRPC: UNAVAILABLE, INTERNAL
            body, media = status_body(kind, code, answer.reason)
            return Response(body, answer.status, answer.headers, media_type=media)
        self._count(converted)
        reasons = "; ".join(r.reason for r in converted.rejected[:3])[:1000]
        if converted.rejected and not converted.events:
            body, media = status_body(kind, 3, f"every GenAI item was rejected: {reasons}")
            return Response(body, 400, media_type=media)
        body = export_response(signal, kind, len(converted.rejected), reasons)
        return Response(body, 200, media_type=JSON if kind == "json" else PROTOBUF)

    async def _convert(self, request: Request, signal: Signal) -> Converted:
        cap = self.config.max_body_bytes
        try:
            raw = await read_capped(request, cap)
        except BodyTooLarge as exc:
            self.counts["too_large"] += 1
            raise Answer(413, str(exc)) from None
        try:
            converted = await asyncio.to_thread(self._parse, raw, request.headers, signal)
            self.counts["spans" if signal == "traces" else "log_records"] += converted.items
            return converted
        except TooLarge as exc:
            self.counts["too_large"] += 1
            await self._deliver([self._dead_letter(signal, raw, str(exc), "TooLarge")])
            raise Answer(413, str(exc)) from None
        except Malformed as exc:
            self.counts["malformed"] += 1
            log.warning("malformed OTLP %s request (%d bytes): %s", signal, len(raw), exc)
            await self._deliver([self._dead_letter(signal, raw, str(exc), "Malformed")])
            raise Answer(400, str(exc)) from None
        except Exception as exc:  # a fault of ours: the request is kept as a dead letter
            log.exception("OTLP %s request (%d bytes) not converted", signal, len(raw))
            reason = f"the receiver failed on this request: {type(exc).__name__}"
            await self._deliver([self._dead_letter(signal, raw, reason, type(exc).__name__)])
            raise Answer(500, reason) from None

    def _parse(self, raw: bytes, headers: Any, signal: Signal) -> Converted:
        kind = media_type(headers.get("content-type", ""))
        body = decompress(raw, headers.get("content-encoding", ""), self.config.max_body_bytes)
        request = parse_request(body, kind, signal)
        if signal == "traces":
            return from_spans(list(spans_of(request)), self.config.default_agent)  # type: ignore[arg-type]
        return from_logs(list(logs_of(request)), self.config.default_agent)  # type: ignore[arg-type]

    async def _deliver(self, events: list[Event]) -> None:
        try:
            await self.sender.deliver(events, self.config.ack_timeout_s)
        except KafkaUnavailable as exc:
            self.counts["unavailable"] += 1
            log.warning("answering 503: %s", exc)
            retry = {"Retry-After": str(self.config.retry_after_s)}
            raise Answer(503, f"Kafka is unavailable, retry later: {exc}", retry) from None

    def _dead_letter(self, signal: Signal, original: bytes, reason: str, error: str) -> Event:
        self.counts["dead_letters"] += 1
        # The offset is the original's digest: the store keeps one row per dead letter, and a
        # retried request's dead letter collapses with the first.
        digest = int.from_bytes(hashlib.sha256(original).digest()[:7], "big")
        return make_dead_letter(
            source_topic=f"otlp:/v1/{signal}",
            source_partition=-1,
            source_offset=digest,
            key=None,
            original=original,
            reason=reason,
            error_type=error,
            processor=PROCESSOR,
        )

    def _count(self, converted: Converted) -> None:
        interactions = converted.interactions
        self.counts["interactions"] += interactions
        self.counts["feedback"] += len(converted.events) - interactions
        self.counts["ignored"] += converted.ignored
        self.counts["no_content"] += converted.no_content
        self.counts["grouped"] += converted.grouped
        self.counts["rejected"] += len(converted.rejected)
