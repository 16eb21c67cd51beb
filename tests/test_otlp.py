"""The OTLP receiver (ingest/otlp.py) with a fake producer: the real OpenTelemetry SDK,
its OTLP/HTTP exporters and the official OpenAI instrumentation in front of a fake upstream;
each span layout the receiver reads (spans and log records); grouping, feedback and ids.
Hostile input and Kafka away: test_otlp_hostile.py."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ingest.serving import ServerThread
from schemas.models import FeedbackEvent, InteractionEvent
from tests.otlp_payloads import (
    Receiver,
    as_json,
    as_protobuf,
    chat_attrs,
    kvs,
    new_ids,
    receiver,
    request,
    span,
)

__all__ = ["receiver"]  # the fixture


def instrumented_calls(receiver: Receiver, monkeypatch: pytest.MonkeyPatch, mode: str) -> Any:
    """Two chat completions (one streamed) by the stock openai client, instrumented by
    opentelemetry-instrumentation-openai-v2, exported by the SDK's OTLP/HTTP exporters."""
    import openai
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.fake_openai import FakeUpstream

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", mode)
    resource = Resource.create({"service.name": "shop", "atlas.agent_id": "otel-agent"})
    tracing = TracerProvider(resource=resource)
    tracing.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{receiver.url}/v1/traces")))
    logging = LoggerProvider(resource=resource)
    logging.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(f"{receiver.url}/v1/logs"))
    )
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracing, logger_provider=logging)
    upstream = ServerThread(FakeUpstream().app)
    try:
        client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="k")
        client.chat.completions.create(
            model="echo-1",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "ship to Lisbon"},
            ],
        )
        stream = client.chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": "and Porto"}], stream=True
        )
        for _ in stream:
            pass
        tracing.force_flush()
        logging.force_flush()
    finally:
        instrumentor.uninstrument()
        upstream.stop()
        tracing.shutdown()
        logging.shutdown()
    return receiver.kafka.of(InteractionEvent)


@pytest.mark.parametrize("mode", ["span_only", "event_only", "span_and_event"])
def test_the_official_openai_instrumentation_becomes_interactions(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    events = instrumented_calls(receiver, monkeypatch, mode)
    # span_and_event: each call arrives twice (span and log event) with one event id
    assert len(events) == (4 if mode == "span_and_event" else 2)
    by_id = {e.event_id: e for e in events}
    assert len(by_id) == 2
    first, second = sorted(by_id.values(), key=lambda e: e.task_input)
    assert (first.task_input, first.final_answer) == ("and Porto", "echo: and Porto")
    assert (second.task_input, second.final_answer) == ("ship to Lisbon", "echo: ship to Lisbon")
    assert second.metadata["system_prompt"] == "Be brief."
    assert {e.agent_id for e in events} == {"otel-agent"}
    assert second.models == {"student": "echo-1"} and second.usage.prompt_tokens > 0
    assert all(len(e.trace_id) == 49 and e.trace_id[32] == "-" for e in events)
    assert receiver.receiver.counts["rejected"] == 0


def test_without_content_capture_calls_are_counted_not_recorded(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert instrumented_calls(receiver, monkeypatch, "") == []
    assert receiver.receiver.counts["no_content"] == 2


LAYOUTS = {
    "openllmetry": {
        "gen_ai.system": "openai",
        "llm.request.type": "chat",
        "gen_ai.request.model": "m-1",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "q?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "a.",
        "gen_ai.usage.prompt_tokens": 5,
        "gen_ai.usage.completion_tokens": 2,
    },
    "openinference": {
        "openinference.span.kind": "LLM",
        "llm.model_name": "m-1",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Be brief.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": "q?",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": "a.",
        "llm.token_count.prompt": 5,
        "llm.token_count.completion": 2,
    },
    "current": {
        **chat_attrs("q?", "a."),
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
    },
}
LEGACY_EVENTS = [
    ("gen_ai.system.message", {"content": "Be brief."}),
    ("gen_ai.user.message", {"content": "q?"}),
    ("gen_ai.choice", {"message": json.dumps({"content": "a."}), "finish_reason": "stop"}),
]
OLDEST_EVENTS = [
    (
        "gen_ai.content.prompt",
        {
            "gen_ai.prompt": json.dumps(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q?"}]
            )
        },
    ),
    (
        "gen_ai.content.completion",
        {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "a."}])},
    ),
]


@pytest.mark.parametrize("layout", [*LAYOUTS, "events 1.28-1.30", "content events"])
@pytest.mark.parametrize("encoding", ["json", "protobuf+gzip"])
def test_each_layout_gives_the_same_interaction(
    receiver: Receiver, layout: str, encoding: str
) -> None:
    trace, span_id = new_ids()
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "m-1",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
    }
    attrs, events = (
        LAYOUTS.get(layout, base),
        {"events 1.28-1.30": LEGACY_EVENTS, "content events": OLDEST_EVENTS}.get(layout, []),
    )
    payload = request([span(trace, span_id, attrs, events=events)], {"atlas.agent_id": "a-1"})
    body, headers = as_json(payload) if encoding == "json" else as_protobuf(payload, compress=True)
    answer = receiver.post(body, headers)
    assert answer.status_code == 200, answer.text
    [event] = receiver.kafka.of(InteractionEvent)
    assert (event.task_input, event.final_answer, event.metadata["system_prompt"]) == (
        "q?",
        "a.",
        "Be brief.",
    )
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (5, 2)
    assert (event.agent_id, event.models["student"], event.trace_id) == (
        "a-1",
        "m-1",
        f"{trace}-{span_id}",
    )


def test_an_agent_span_groups_its_calls_and_other_spans_are_ignored(receiver: Receiver) -> None:
    trace, agent_span = new_ids()
    calls = [os.urandom(8).hex() for _ in range(2)]
    tool = os.urandom(8).hex()
    spans = [
        span(
            trace,
            agent_span,
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"},
            name="invoke_agent a",
        ),
        span(trace, tool, {"http.method": "GET"}, parent=agent_span, name="GET /stock"),
        span(
            trace,
            calls[0],
            chat_attrs("plan it", "step 1"),
            parent=agent_span,
            start=1_795_000_000_000_000_100,
        ),
        span(
            trace,
            calls[1],
            chat_attrs("do it", "done"),
            parent=tool,
            start=1_795_000_000_000_000_200,
        ),
    ]
    answer = receiver.post(*as_json(request(spans)))
    assert answer.status_code == 200
    [event] = receiver.kafka.of(InteractionEvent)
    assert event.trace_id == f"{trace}-{agent_span}"
    assert (event.task_input, event.final_answer) == ("plan it", "done")
    assert [s.content for s in event.steps] == ["step 1", "done"]
    assert event.usage.prompt_tokens == 14 and event.metadata["calls"] == "2"
    assert event.agent_id == "otlp"  # the receiver's default
    counts = receiver.receiver.counts
    assert (counts["ignored"], counts["grouped"], counts["interactions"]) == (1, 2, 1)


def test_feedback_span_events_and_retries_make_the_same_ids(receiver: Receiver) -> None:
    trace, call = new_ids()
    _, other = new_ids()
    spans = [
        span(
            trace,
            call,
            chat_attrs("q", "a"),
            events=[
                ("atlas.feedback", {"atlas.feedback.kind": "rating", "atlas.feedback.rating": 4.0})
            ],
        ),
        span(
            trace,
            other,
            {"app": "ui"},
            name="thumbs",
            events=[
                (
                    "atlas.feedback",
                    {"atlas.feedback.kind": "approve", "atlas.trace_id": f"{trace}-{call}"},
                )
            ],
        ),
    ]
    body, headers = as_protobuf(request(spans, {"atlas.agent_id": "fb"}))
    for _ in range(2):  # an exporter's retry of a request whose answer it did not get
        answer = receiver.post(body, headers)
        assert answer.status_code == 200
        assert not ExportTraceServiceResponse.FromString(answer.content).HasField("partial_success")
    interactions, feedback = receiver.kafka.of(InteractionEvent), receiver.kafka.of(FeedbackEvent)
    assert len(interactions) == 2 and len({e.event_id for e in interactions}) == 1
    assert len(feedback) == 4 and len({e.event_id for e in feedback}) == 2
    assert {(f.kind, f.trace_id, f.agent_id) for f in feedback} == {
        ("rating", f"{trace}-{call}", "fb"),
        ("approve", f"{trace}-{call}", "fb"),
    }


def test_legacy_log_events_of_one_call_are_joined_into_one_interaction(receiver: Receiver) -> None:
    """The 1.28-1.30 layout as log records (older openai-v2 releases' default with
    capture=true): one record per message, joined by their span id within the request."""
    trace, span_id = new_ids()

    def record(name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "timeUnixNano": "1795000000000000000",
            "traceId": trace,
            "spanId": span_id,
            "eventName": name,
            "attributes": kvs({"gen_ai.system": "openai"}),
            "body": {"kvlistValue": {"values": kvs(body)}},
        }

    records = [
        record("gen_ai.system.message", {"content": "Be brief."}),
        record("gen_ai.user.message", {"content": "q?"}),
        record("gen_ai.choice", {"index": 0, "finish_reason": "stop"}),
        {"timeUnixNano": "1", "body": {"stringValue": "an ordinary log line"}},
    ]
    records[2]["body"]["kvlistValue"]["values"].append(
        {
            "key": "message",
            "value": {"kvlistValue": {"values": kvs({"role": "assistant", "content": "a."})}},
        }
    )
    payload = {
        "resourceLogs": [
            {
                "resource": {"attributes": kvs({"atlas.agent_id": "logs-agent"})},
                "scopeLogs": [{"logRecords": records}],
            }
        ]
    }
    answer = receiver.post(*as_json(payload, compress=True), path="/v1/logs")
    assert answer.status_code == 200, answer.text
    [event] = receiver.kafka.of(InteractionEvent)
    assert (event.task_input, event.final_answer) == ("q?", "a.")
    assert (event.metadata["system_prompt"], event.metadata["finish_reason"]) == (
        "Be brief.",
        "stop",
    )
    assert (event.trace_id, event.agent_id) == (f"{trace}-{span_id}", "logs-agent")
    assert receiver.receiver.counts["ignored"] == 1
