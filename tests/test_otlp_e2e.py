"""The OTLP receiver end to end, with clients nobody here wrote: the OpenTelemetry SDK and its
OTLP/HTTP exporter, the official OpenAI instrumentation around the stock `openai` client,
llama.cpp's server, the real broker, the reward worker and the sink; and the broker killed
with SIGKILL in the middle of an export."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from atlas import stack
from atlas.settings import Settings
from ingest.otlp import OtlpConfig, OtlpReceiver
from ingest.serving import ServerThread, open_sender
from schemas.codec import AvroCodec
from schemas.models import InteractionEvent
from schemas.topics import INTERACTIONS
from store.client import connect
from tests.otlp_payloads import chat_attrs
from tests.workers import WorkerProcess, eventually, reader_at_end

pytestmark = pytest.mark.integration
SCORED = (
    "SELECT trace_id, revision, reward, feedback_count, task_input, final_answer"
    " FROM latest_traces WHERE agent_id = {a:String} ORDER BY task_input"
)


@pytest.fixture(scope="module")
def workers(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("otlp-workers")
    running = [WorkerProcess(stack_settings, kind, logs) for kind in ("rewards", "sink")]
    # a worker that fetches its first metadata while the broker is down exits: start the
    # outage only once the reward worker is ready and the sink has joined its group
    eventually(lambda: b" ready" in running[0].log.read_bytes(), 180, "the reward worker")
    time.sleep(5)
    yield
    for worker in running:
        worker.stop()


@pytest.fixture
def receiver(kafka_config: dict[str, str]) -> Iterator[tuple[OtlpReceiver, str]]:
    sender = open_sender(kafka_config, delivery_timeout_s=120)
    otlp = OtlpReceiver(OtlpConfig(ack_timeout_s=3.0, retry_after_s=4), sender)
    server = ServerThread(otlp.app)
    yield otlp, server.url
    server.stop()
    sender.close()


def tracing(url: str, agent: str, **exporter: Any) -> tuple[Any, Any]:
    """A tracer provider exporting in batches to ``url``, and an in-memory copy of its spans."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider(resource=Resource.create({"atlas.agent_id": agent}))
    otlp = OTLPSpanExporter(f"{url}/v1/traces", **exporter)
    provider.add_span_processor(
        BatchSpanProcessor(otlp, schedule_delay_millis=200, max_export_batch_size=10)
    )
    copy = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(copy))
    return provider, copy


@pytest.mark.slow
def test_instrumented_openai_calls_to_llama_cpp_arrive_scored_in_clickhouse(
    stack_settings: Settings,
    workers: None,
    receiver: tuple[OtlpReceiver, str],
    llama_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openai
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    from tests.conftest import LLAMA_API_KEY

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    otlp, url = receiver
    agent = f"otel-{uuid.uuid4().hex[:8]}"
    provider, copy = tracing(url, agent)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=llama_server.base_url, api_key=LLAMA_API_KEY)
        ask = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 12}
        plain = client.chat.completions.create(
            messages=[{"role": "user", "content": "What is the capital of France?"}], **ask
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                messages=[{"role": "user", "content": "Name a colour."}], stream=True, **ask
            )
            if c.choices
        )
        [first] = [s for s in copy.get_finished_spans() if s.name.startswith("chat")][:1]
        rated = f"{first.context.trace_id:032x}-{first.context.span_id:016x}"
        with provider.get_tracer("ui").start_as_current_span("thumbs up") as thumbs:
            thumbs.add_event(
                "atlas.feedback",
                {
                    "atlas.trace_id": rated,
                    "atlas.feedback.kind": "rating",
                    "atlas.feedback.rating": 5.0,
                },
            )
        assert provider.force_flush(60_000)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    store = connect(stack_settings.store())

    def scored() -> list[tuple[Any, ...]] | None:
        rows = store.query(SCORED, parameters={"a": agent}).result_rows
        return rows if len(rows) == 2 and sum(r[3] for r in rows) == 1 else None

    rows = eventually(scored, 240, "both instrumented calls scored, one with its rating", 2)
    print(f"\n{SCORED}  [a={agent}]")
    for row in rows:
        print(row)
    answers = {r[4]: r[5] for r in rows}
    assert answers == {
        "Name a colour.": streamed,
        "What is the capital of France?": plain.choices[0].message.content,
    }
    assert {r[0]: r[3] for r in rows}[rated] == 1
    assert otlp.counts["interactions"] == 2 and otlp.counts["feedback"] == 1
    assert otlp.counts["ignored"] == 1  # the thumbs-up span itself


def test_a_broker_killed_mid_export_loses_nothing_and_duplicates_collapse(
    stack_settings: Settings,
    kafka_config: dict[str, str],
    workers: None,
    receiver: tuple[OtlpReceiver, str],
) -> None:
    """Spans keep coming while the broker is killed (SIGKILL) and restarted; the receiver
    answers 503 meanwhile and the SDK exporter's own retries deliver every span once Kafka is
    back. Kafka may hold some interactions twice (queued before the 503, then retried), the
    store holds each once."""
    otlp, url = receiver
    agent = f"outage-{uuid.uuid4().hex[:8]}"
    reader = reader_at_end(kafka_config, [INTERACTIONS])
    provider, copy = tracing(url, agent, timeout=300)
    tracer = provider.get_tracer("load")
    total = 60

    def call(i: int) -> None:
        with tracer.start_as_current_span(f"chat m-{i}") as span:
            for key, value in chat_attrs(f"question {i:03d}", f"answer {i}").items():
                span.set_attribute(key, value)
        time.sleep(0.05)

    try:
        for i in range(total // 3):
            call(i)
        eventually(lambda: otlp.counts["interactions"] >= 10, 60, "the first exports", 0.2)
        assert stack.stop_kafka(stack_settings, kill=True)
        for i in range(total // 3, total):
            call(i)
        time.sleep(3)
        stack.start_kafka(stack_settings)
        assert provider.force_flush(300_000)
    finally:
        provider.shutdown()
    sent = {
        f"{s.context.trace_id:032x}-{s.context.span_id:016x}" for s in copy.get_finished_spans()
    }
    assert len(sent) == total
    codec, on_kafka = AvroCodec(), []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(on_kafka)) < total:
        message = reader.poll(1.0)
        if message is not None and not message.error() and message.key().decode() in sent:
            on_kafka.append(codec.decode(message.value(), InteractionEvent).event_id)
    reader.close()
    store = connect(stack_settings.store())
    count = (
        "SELECT count(), uniqExact(trace_id) FROM scored_traces FINAL WHERE agent_id = {a:String}"
    )
    rows = eventually(
        lambda: (r := store.query(count, parameters={"a": agent}).result_rows[0])[1] == total and r,
        240,
        "every span scored",
        2,
    )
    stored = store.query(SCORED, parameters={"a": agent}).result_rows
    lost = len(sent - {r[0] for r in stored})
    print(
        f"\nbroker outage: {total} spans exported, {otlp.counts['unavailable']} answers 503,"
        f" {len(on_kafka)} interactions on Kafka ({len(set(on_kafka))} distinct event ids),"
        f" {rows[0]} rows in scored_traces FINAL ({rows[1]} traces), {lost} lost"
    )
    assert otlp.counts["unavailable"] >= 1  # the outage was seen
    assert lost == 0 and rows == (total, total)
    assert len(set(on_kafka)) == total


def test_atlas_up_otlp_runs_the_receiver_as_a_service_and_down_stops_it(
    stack_settings: Settings,
) -> None:
    import httpx

    from atlas import otlp_service, registry
    from deploy.local.processes import free_port
    from tests.otlp_payloads import as_protobuf, new_ids, request, span

    receiver = otlp_service.start(stack_settings, free_port())
    try:
        assert otlp_service.running(stack_settings) == receiver
        assert "otlp" in {w.kind for w in registry.running(stack_settings.home)}
        body, headers = as_protobuf(request([span(*new_ids(), chat_attrs("q", "a"))]))
        answer = httpx.post(f"{receiver.url}/v1/traces", content=body, headers=headers, timeout=30)
        assert answer.status_code == 200
        stats = httpx.get(f"{receiver.url}/atlas/stats").json()
        assert (stats["spans"], stats["interactions"]) == (1, 1)
    finally:
        stopped = otlp_service.stop(stack_settings)
    assert stopped == f"OTLP receiver (pid {receiver.pid})"
    assert otlp_service.running(stack_settings) is None
