"""Producing atlas events to Kafka without ever losing one silently.

``acks=all`` with idempotence on (a retried send is written once), every delivery report
checked. While Kafka is unreachable, events wait in the client's bounded buffer; when the
buffer stays full past ``block_seconds`` ``send`` raises (or spills, below), and an event
whose delivery times out is kept in ``failed`` (with the reason) and reported by
``flush``/``close``, which raise until the caller has re-sent (``resend_failed``) or taken them.

With ``spill_path``, undelivered events are not only kept in memory: an event whose delivery
failed, or that is still unacknowledged when the producer closes, is appended to that file
(``runtime/spill.py``), and the next producer opened on the same file sends it again first.

With ``redact`` (a ``runtime.redaction.Redactor``), every interaction and feedback event is
redacted under its agent's policy before it is encoded: for teams that may not send raw user
text to Kafka at all. The raw text then exists only in the agent's memory; judges score the
redacted text.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Producer
from pydantic import ValidationError

from runtime.metrics import WorkerMetrics
from runtime.redaction import Redactor
from runtime.redaction_events import redact_feedback, redact_interaction
from runtime.spill import Spilled, SpillFile
from schemas.codec import AvroCodec
from schemas.configfile import validation_summary
from schemas.models import Event, FeedbackEvent, FeedbackKind, InteractionEvent
from schemas.topics import key_of, topic_of

log = logging.getLogger(__name__)


class ProducerError(Exception):
    """Events could not be delivered; the message says how many and why."""


def feedback_event(
    trace_id: str,
    kind: FeedbackKind,
    *,
    edited_text: str | None = None,
    rating: float | None = None,
    rating_range: tuple[float, float] = (1.0, 5.0),
    tool_name: str | None = None,
    tool_success: bool | None = None,
    agent_id: str | None = None,
    user_id: str | None = None,
    comment: str | None = None,
) -> FeedbackEvent:
    """A user's (or tool's) verdict on a trace as an event; ValueError (one readable line) when
    the kind lacks what it needs (an edit its text, a rating its value in ``rating_range``, a
    tool outcome its success) or a field is invalid."""
    required = {"edit": edited_text, "rating": rating, "tool_outcome": tool_success}
    if kind in required and required[kind] is None:
        field = {"edit": "edited_text", "rating": "rating", "tool_outcome": "tool_success"}
        raise ValueError(f"feedback kind {kind!r} needs {field[kind]}")
    if rating is not None and not rating_range[0] <= rating <= rating_range[1]:
        raise ValueError(f"rating {rating} outside {rating_range}")
    try:
        return FeedbackEvent(
            trace_id=trace_id,
            agent_id=agent_id,
            kind=kind,
            edited_text=edited_text,
            rating=rating,
            rating_min=rating_range[0],
            rating_max=rating_range[1],
            tool_name=tool_name,
            tool_success=tool_success,
            user_id=user_id,
            comment=comment,
        )
    except ValidationError as exc:
        raise ValueError(f"invalid feedback: {validation_summary(exc)}") from None


class EventProducer:
    def __init__(
        self,
        kafka_config: dict[str, str],
        codec: AvroCodec | None = None,
        buffer_messages: int = 100_000,
        delivery_timeout_s: float = 120.0,
        block_seconds: float = 10.0,
        spill_path: Path | None = None,
        redact: Redactor | None = None,
        metrics: WorkerMetrics | None = None,
    ):
        self.codec = codec or AvroCodec()
        self.redact = redact
        self.redacted: dict[str, int] = {}  # per PII kind, over every event sent
        self.block_seconds = block_seconds
        self.metrics = metrics  # counts each event Kafka acknowledged, when given
        self.bootstrap = kafka_config.get("bootstrap.servers", "?")
        self._producer = Producer(
            {
                **kafka_config,
                "acks": "all",
                "enable.idempotence": True,
                # Java's (and Faust's) partitioner: a trace's interaction and its feedback land
                # in the same partition whichever client produced them.
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "queue.buffering.max.messages": buffer_messages,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
            }
        )
        self._lock = threading.Lock()
        self.failed: list[tuple[Event, str]] = []
        self.delivered = 0
        self.spilled = 0
        self.spill = SpillFile(spill_path) if spill_path is not None else None
        self._closing = False
        if self.spill is not None:
            self._resend_spilled()

    def _resend_spilled(self) -> None:
        assert self.spill is not None
        messages, taken = self.spill.take()
        if not messages:
            SpillFile.done(taken)
            return
        log.warning("resending %d event(s) spilled to %s", len(messages), self.spill.path)
        for message in messages:
            self._produce(message.topic, message.key, message.value, None)
        if self._producer.flush(60) == 0:
            SpillFile.done(taken)  # failures among them were spilled again by _on_delivery

    def _on_delivery(
        self,
        event: Event | None,
        verdict: Callable[[str | None], None] | None,
        err: KafkaError | None,
        message: Any,
    ) -> None:
        if verdict is not None:
            verdict(None if err is None else err.str())
        with self._lock:
            if err is None:
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.delivered((message.topic(),))
                return
            if verdict is not None:
                return  # the caller was told and owns the retry: not kept, not spilled
            if self.spill is None:
                assert event is not None
                self.failed.append((event, err.str()))
        if self.spill is not None:
            self.spill.append([Spilled(message.topic(), message.key(), message.value())])
            self.spilled += 1
            if not self._closing:
                log.error(
                    "%s event not delivered (%s): spilled to %s",
                    message.topic(),
                    err,
                    self.spill.path,
                )
            return
        log.error("event %s to %s not delivered: %s", type(event).__name__, topic_of(event), err)

    def send(self, event: Event, verdict: Callable[[str | None], None] | None = None) -> None:
        """Queue ``event`` (redacted first, with ``redact``). With ``verdict``, Kafka's answer
        is handed to it (None once acknowledged, else the error's text), on whichever thread
        serves delivery reports, and a failed event is the caller's to send again: it is
        neither kept in ``failed`` nor spilled."""
        event = self._redacted(event)
        self._produce(topic_of(event), key_of(event), self.codec.encode(event), event, verdict)

    def _redacted(self, event: Event) -> Event:
        if self.redact is None:
            return event
        counts: dict[str, int] = {}
        if isinstance(event, InteractionEvent):
            event, counts = redact_interaction(self.redact, event)
        elif isinstance(event, FeedbackEvent):
            event, counts = redact_feedback(self.redact, event)
        for kind, n in counts.items():
            self.redacted[kind] = self.redacted.get(kind, 0) + n
        return event

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        event: Event | None,
        verdict: Callable[[str | None], None] | None = None,
    ) -> None:
        deadline = time.monotonic() + self.block_seconds
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    on_delivery=functools.partial(self._on_delivery, event, verdict),
                )
                break
            except BufferError:
                if time.monotonic() >= deadline and self.spill is not None and verdict is None:
                    self.spill.append([Spilled(topic, key, value)])  # on disk, sent next start
                    self.spilled += 1
                    return
                if time.monotonic() >= deadline:
                    raise ProducerError(
                        f"producer buffer full for {self.block_seconds:.0f}s: Kafka at"
                        f" {self.bootstrap} is not accepting events ({len(self)} waiting,"
                        f" {len(self.failed)} failed); nothing was dropped, this event was not"
                        " queued"
                    ) from None
                self._producer.poll(0.1)
        self._producer.poll(0)

    def record_interaction(self, event: InteractionEvent) -> None:
        self.send(event)

    def record_feedback(self, trace_id: str, kind: FeedbackKind, **fields: Any) -> FeedbackEvent:
        """Send a user's (or tool's) verdict on a trace (the fields of :func:`feedback_event`);
        returns the event sent (redacted, with ``redact``)."""
        event = self._redacted(feedback_event(trace_id, kind, **fields))
        self._produce(topic_of(event), key_of(event), self.codec.encode(event), event)
        return event

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (counting, spilling) for up to ``timeout`` seconds; returns
        how many were served. A producer fed now and then calls it while idle."""
        return int(self._producer.poll(timeout))

    def __len__(self) -> int:
        """Events handed over but not yet acknowledged or failed."""
        return len(self._producer)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every pending delivery; return how many were delivered in total. Raises if
        any event failed or is still pending at ``timeout``."""
        remaining = self._producer.flush(timeout)
        with self._lock:
            failed = len(self.failed)
            reasons = sorted({reason for _, reason in self.failed})
        if failed or remaining:
            denied = any("authorization" in reason.lower() for reason in reasons)
            advice = (
                "these credentials may not write there (see the role's ACLs)"
                if denied
                else "they are kept in producer.failed — call resend_failed() once Kafka is back"
            )
            raise ProducerError(
                f"{failed} event(s) not delivered to Kafka at {self.bootstrap}"
                f" ({'; '.join(reasons) or 'none failed'}), {remaining} still pending; {advice}"
            )
        return self.delivered

    def resend_failed(self) -> int:
        """Queue every failed event again; returns how many."""
        with self._lock:
            pending, self.failed = self.failed, []
        for event, _reason in pending:
            self.send(event)
        return len(pending)

    def close(self, timeout: float = 30.0) -> None:
        if self.spill is None:
            self.flush(timeout)
            return
        remaining = self._producer.flush(timeout)
        if remaining:  # still unacknowledged: to the spill file, sent by the next producer
            self._closing = True
            self._producer.purge()
            self._producer.flush(5)  # delivery reports of the purged messages spill them
        if self.spilled:
            log.warning(
                "%d event(s) Kafka did not acknowledge are kept in %s and sent again when a"
                " producer opens it",
                self.spilled,
                self.spill.path,
            )

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
