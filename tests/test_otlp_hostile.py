"""Hostile input to the OTLP receiver (ingest/otlp.py): undecodable bodies, gzip bombs, NaN,
negative and mistyped token counts, huge attributes, bad ids; each gets 400 (or 413) with a
reason and a dead letter, a mixed batch keeps its valid spans, and Kafka away is a 503."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

from google.rpc.status_pb2 import Status

from ingest.serving import open_sender
from schemas.models import DeadLetter, InteractionEvent
from tests.otlp_payloads import (
    FakeKafka,
    Receiver,
    as_json,
    as_protobuf,
    chat_attrs,
    new_ids,
    receiver,
    request,
    span,
)

__all__ = ["receiver"]  # the fixture


def hostile_payloads() -> dict[str, tuple[bytes, dict[str, str], int, str]]:
    trace, span_id = new_ids()

    def one(attrs: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        return as_protobuf(request([span(trace, span_id, attrs)]))

    proto = {"content-type": "application/x-protobuf"}
    bomb = gzip.compress(b"\0" * (40 * 1024 * 1024))
    return {
        "garbage protobuf": (os.urandom(3000) + b"\xff\xff", proto, 400, "no OTLP traces protobuf"),
        "invalid JSON": (
            b'{"resourceSpans": [',
            {"content-type": "application/json"},
            400,
            "not valid JSON",
        ),
        "JSON of the wrong shape": (
            b'{"resourceSpans": 7}',
            {"content-type": "application/json"},
            400,
            "no OTLP traces JSON",
        ),
        "ids that are not hex": (
            json.dumps(request([span("zz", "yy", {})])).encode(),
            {"content-type": "application/json"},
            400,
            "not hex",
        ),
        "text/plain": (b"hello", {"content-type": "text/plain"}, 400, "is not OTLP"),
        "truncated gzip": (
            gzip.compress(b"x" * 1000)[:20],
            {**proto, "content-encoding": "gzip"},
            400,
            "truncated",
        ),
        "gzip bomb": (bomb, {**proto, "content-encoding": "gzip"}, 413, "decompresses to over"),
        "NaN token count": (
            *one(chat_attrs("q", "a", **{"gen_ai.usage.input_tokens": float("nan")})),
            400,
            "gen_ai.usage.input_tokens is nan",
        ),
        "negative token count": (
            *one(chat_attrs("q", "a", **{"gen_ai.usage.output_tokens": -3})),
            400,
            "outside [0",
        ),
        "token count as text": (
            *one(chat_attrs("q", "a", **{"gen_ai.usage.input_tokens": "many"})),
            400,
            "must be a whole number, not str",
        ),
        "messages not JSON": (
            *one(chat_attrs("q", "a", **{"gen_ai.input.messages": "[{"})),
            400,
            "gen_ai.input.messages is not JSON",
        ),
        "messages not a list": (
            *one(chat_attrs("q", "a", **{"gen_ai.input.messages": "42"})),
            400,
            "must be a list",
        ),
        "model not text": (
            *one(chat_attrs("q", "a", **{"gen_ai.response.model": 12})),
            400,
            "gen_ai.response.model must be a string",
        ),
        "huge attribute": (
            *one(chat_attrs("q" * (2 * 1024 * 1024), "a")),
            400,
            "over the 1,048,576-character limit",
        ),
        "agent id with a slash": (
            *one(chat_attrs("q", "a", **{"atlas.agent_id": "../etc"})),
            400,
            "cannot name a file",
        ),
        "feedback with no trace": (
            *as_protobuf(
                request(
                    [
                        span(
                            trace,
                            span_id,
                            {},
                            events=[("atlas.feedback", {"atlas.feedback.kind": "approve"})],
                        )
                    ]
                )
            ),
            400,
            "needs atlas.trace_id",
        ),
    }


def test_hostile_payloads_get_400_and_a_dead_letter_and_the_receiver_keeps_serving(
    receiver: Receiver,
) -> None:
    for name, (body, headers, status, reason) in hostile_payloads().items():
        before = len(receiver.kafka.of(DeadLetter))
        answer = receiver.post(body, headers)
        assert answer.status_code == status, (name, answer.status_code, answer.content[:300])
        json_answer = answer.headers["content-type"].startswith("application/json")
        message = (
            answer.json()["message"] if json_answer else Status.FromString(answer.content).message
        )
        assert reason in message, (name, message)
        letters = receiver.kafka.of(DeadLetter)
        if status == 400:
            assert len(letters) == before + 1, name
            assert reason in letters[-1].reason and letters[-1].processor == "otlp-receiver"
            if name in ("garbage protobuf", "invalid JSON"):
                assert letters[-1].original == body
    assert (
        receiver.post(*as_json(request([span(*new_ids(), chat_attrs("q", "a"))]))).status_code
        == 200
    )
    assert len(receiver.kafka.of(InteractionEvent)) == 1


def test_a_batch_with_one_bad_span_keeps_the_good_ones_as_a_partial_success(
    receiver: Receiver,
) -> None:
    trace, good, bad = new_ids()[0], os.urandom(8).hex(), os.urandom(8).hex()
    spans = [
        span(trace, good, chat_attrs("q", "a")),
        span(trace, bad, chat_attrs("q", "a", **{"gen_ai.usage.input_tokens": float("inf")})),
    ]
    answer = receiver.post(*as_json(request(spans)))
    assert answer.status_code == 200
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and bad in partial["errorMessage"]
    assert [e.trace_id for e in receiver.kafka.of(InteractionEvent)] == [f"{trace}-{good}"]
    [letter] = receiver.kafka.of(DeadLetter)
    assert bad in letter.reason and letter.source_topic == "otlp:/v1/traces"


def test_kafka_away_is_a_503_with_retry_after() -> None:
    from deploy.local.processes import free_port

    fake = FakeKafka()
    fake.down = True
    nowhere = open_sender({"bootstrap.servers": f"127.0.0.1:{free_port()}"}, delivery_timeout_s=2)
    for kafka in (fake, nowhere):
        running = Receiver(kafka, ack_timeout_s=1.0, retry_after_s=3)
        try:
            answer = running.post(*as_protobuf(request([span(*new_ids(), chat_attrs("q", "a"))])))
            assert answer.status_code == 503 and answer.headers["retry-after"] == "3"
            assert "Kafka is unavailable" in Status.FromString(answer.content).message
            assert (
                running.post(b"junk", {"content-type": "application/x-protobuf"}).status_code == 503
            )
        finally:
            running.stop()
    assert nowhere.producer.failed == []  # the exporter keeps what was not acknowledged
