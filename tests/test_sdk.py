"""The tracing SDK (runtime/tracing.py, runtime/openai_capture.py, atlas/sdk.py): unit tests
with an in-memory producer and a fake OpenAI upstream (the stock `openai` client, sync and
async, streamed and not); the bounded queue; prompts by label."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ingest.serving import ServerThread
from runtime.recorder import Recorder
from runtime.tracing import Tracer, current_trace, last_trace_id, trace_event, traced
from schemas.models import FeedbackEvent, InteractionEvent, PromptVersion
from tests.fake_openai import FakeUpstream
from tests.test_proxy import ListProducer, wait_for


class Recording:
    """A tracer on an in-memory producer; ``events()`` waits for what it produced."""

    def __init__(self, prompts: Any = None, capacity: int = 10_000) -> None:
        self.produced = ListProducer()
        recorder = Recorder(lambda: self.produced, capacity, convert=trace_event).start()
        self.tracer = Tracer("sdk-test", recorder, prompts)

    def events(self, n: int, kind: type = InteractionEvent) -> list[Any]:
        def found() -> list[Any]:
            events = [e for e in self.produced.events if isinstance(e, kind)]
            return events if len(events) >= n else []

        return wait_for(found)[:n]

    def traced(self, fn: Any = None, **options: Any) -> Any:
        if fn is None:
            return lambda f: traced(f, lambda: self.tracer, **options)
        return traced(fn, lambda: self.tracer, **options)


@pytest.fixture
def rec() -> Iterator[Recording]:
    recording = Recording()
    yield recording
    recording.tracer.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ServerThread(FakeUpstream().app)
    yield f"{server.url}/v1"
    server.stop()


def test_a_plain_function_is_one_trace_arguments_in_return_value_out(rec: Recording) -> None:
    @rec.traced
    def shout(text: str) -> str:
        return text.upper()

    assert shout("hello") == "HELLO"
    (event,) = rec.events(1)
    assert (event.task_input, event.final_answer, event.agent_id) == ("hello", "HELLO", "sdk-test")
    assert event.task_id.endswith("shout") and event.metadata["source"] == "atlas-sdk"
    assert event.trace_id == last_trace_id() and event.latency_ms >= 0
    assert [s.content for s in event.steps] == ["HELLO"]

    @rec.traced(task_family="math", model="rules-v1")
    def add(a: int, b: int = 2) -> int:
        return a + b

    assert add(1, b=5) == 6
    event = rec.events(2)[1]
    assert (event.task_input, event.final_answer) == ('{"a": 1, "b": 5}', "6")
    assert (event.task_family, event.models["student"]) == ("math", "rules-v1")


def test_a_block_names_its_input_output_and_metadata(rec: Recording) -> None:
    with rec.tracer.record("Which city?", metadata={"user": "u1", "n": 3}) as trace:  # type: ignore[dict-item]
        assert current_trace() is trace
        trace.output = {"city": "Lisbon"}
    assert current_trace() is None
    (event,) = rec.events(1)
    assert (event.task_input, event.final_answer) == ("Which city?", '{"city": "Lisbon"}')
    assert event.metadata["user"] == "u1" and event.metadata["n"] == "3"
    assert event.trace_id == trace.trace_id


def test_async_functions_and_blocks_keep_their_own_trace_per_task(rec: Recording) -> None:
    @rec.traced
    async def answer(question: str) -> str:
        await asyncio.sleep(0.01)
        assert current_trace() is not None
        return f"a:{question}"

    async def block(i: int) -> str:
        async with rec.tracer.record(f"block {i}") as trace:
            await asyncio.sleep(0.01)
            trace.output = f"done {i}"
        return trace.trace_id

    async def main() -> list[str]:
        return await asyncio.gather(answer("x"), answer("y"), block(1), block(2))

    results = asyncio.run(main())
    events = rec.events(4)
    assert sorted((e.task_input, e.final_answer) for e in events) == [
        ("block 1", "done 1"),
        ("block 2", "done 2"),
        ("x", "a:x"),
        ("y", "a:y"),
    ]
    assert set(results[2:]) <= {e.trace_id for e in events}
    assert len({e.trace_id for e in events}) == 4


def test_an_exception_propagates_unchanged_and_the_trace_is_recorded_with_its_class(
    rec: Recording,
) -> None:
    failure = KeyError("secret-token-123")

    @rec.traced
    def broken(text: str) -> str:
        raise failure

    with pytest.raises(KeyError) as raised:
        broken("hi")
    assert raised.value is failure

    async def broken_block() -> None:
        async with rec.tracer.record("async hi"):
            raise ValueError("user@example.com")

    with pytest.raises(ValueError, match=r"user@example\.com"):
        asyncio.run(broken_block())
    events = rec.events(2)
    assert [(e.task_input, e.metadata["error"], e.final_answer) for e in events] == [
        ("hi", "KeyError", ""),
        ("async hi", "ValueError", ""),
    ]
    assert all("secret-token" not in e.model_dump_json() for e in events)


def test_a_cancelled_block_is_counted_not_recorded(rec: Recording) -> None:
    @rec.traced
    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    rec.tracer.close()
    assert rec.produced.events == [] and rec.tracer.stats()["abandoned"] == 1


def test_nested_blocks_and_functions_join_the_outer_trace(rec: Recording) -> None:
    @rec.traced
    def inner(x: str) -> str:
        return x * 2

    with rec.tracer.record("outer") as outer:
        with rec.tracer.record("ignored") as joined:
            assert joined is outer
        outer.output = inner("ab")
    rec.tracer.close()
    (event,) = rec.produced.events
    assert (event.task_input, event.final_answer) == ("outer", "abab")


def test_generators_are_refused_with_a_reason(rec: Recording) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        rec.traced(numbers)


def test_hostile_values_are_cut_or_rendered_never_raised(rec: Recording) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    loop: list[Any] = []
    loop.append(loop)
    with rec.tracer.record("x" * 200_000) as trace:
        trace.output = loop
    with rec.tracer.record(Opaque()) as trace:
        trace.output = float("nan")
    first, second = rec.events(2)
    assert len(first.task_input) == 64 * 1024
    assert first.metadata["task_input_truncated_from"] == "200000"
    assert first.final_answer.startswith("[[")  # a cyclic list falls back to repr
    assert (second.task_input, second.final_answer) == ('"<opaque>"', "NaN")


def test_the_openai_client_is_captured_messages_completion_model_and_usage(
    rec: Recording, upstream: str
) -> None:
    client = openai.OpenAI(base_url=upstream, api_key="k")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "capital of France?"},
    ]

    @rec.traced
    def ask(question: str) -> Any:
        answer = client.chat.completions.create(model="echo-1", messages=messages, temperature=0)
        messages.append({"role": "assistant", "content": "later turn"})  # agents mutate
        return answer  # not text: the completion's text is the answer

    completion = ask("France")
    assert completion.choices[0].message.content == "echo: capital of France?"
    plain = client.chat.completions.create(model="echo-1", messages=[messages[1]])
    assert plain.choices[0].message.content  # outside a trace: nothing recorded
    (event,) = rec.events(1)
    assert event.task_input == "capital of France?"
    assert event.metadata["system_prompt"] == "Be brief."
    assert event.metadata["request_temperature"] == "0"
    assert event.final_answer == "echo: capital of France?"
    assert event.models["student"] == "echo-1"
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (7, 3)
    assert [(s.model, s.prompt_tokens, s.completion_tokens) for s in event.steps] == [
        ("echo-1", 7, 3)
    ]
    time.sleep(0.3)
    assert len(rec.produced.events) == 1


def test_streams_and_the_async_client_are_captured(rec: Recording, upstream: str) -> None:
    sync_client = openai.OpenAI(base_url=upstream, api_key="k")
    async_client = openai.AsyncOpenAI(base_url=upstream, api_key="k")
    ask = [{"role": "user", "content": "one two three"}]

    @rec.traced
    def streamed() -> str:
        chunks = sync_client.chat.completions.create(model="echo-1", messages=ask, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    @rec.traced
    async def both() -> str:
        first = await async_client.chat.completions.create(model="echo-1", messages=ask)
        stream = await async_client.chat.completions.create(
            model="echo-1", messages=ask, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return f"{first.choices[0].message.content}|{''.join(parts)}"

    assert streamed() == "echo: one two three"
    assert asyncio.run(both()) == "echo: one two three|echo: one two three"
    one, two = rec.events(2)
    assert one.metadata["streamed"] == "true" and one.steps[0].content == "echo: one two three"
    assert [s.content for s in two.steps] == ["echo: one two three"] * 2
    assert two.usage.prompt_tokens == 14


def test_feedback_is_checked_at_once_and_queued_for_the_last_trace(rec: Recording) -> None:
    with pytest.raises(ValueError, match="no trace"):
        contextvars.Context().run(rec.tracer.feedback)  # a fresh context has no trace
    with rec.tracer.record("q") as trace:
        trace.output = "a"
    with pytest.raises(ValueError, match="needs rating"):
        rec.tracer.feedback(kind="rating")
    with pytest.raises(ValueError, match="outside"):
        rec.tracer.feedback(kind="rating", rating=9)
    for hostile in ({"kind": "shrug"}, {"trace_id": " "}, {"comment": 5}):
        with pytest.raises(ValueError, match=r"^invalid feedback: \w+: [^\n]+$"):
            rec.tracer.feedback(**hostile)
    assert rec.tracer.feedback(kind="edit", edited_text="better")
    (sent,) = rec.events(1, FeedbackEvent)
    assert (sent.trace_id, sent.kind, sent.agent_id) == (trace.trace_id, "edit", "sdk-test")


class BlockedProducer(ListProducer):
    """Kafka that never takes anything: ``send`` waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.release = threading.Event(), threading.Event()

    def send(self, event: Any) -> None:
        self.holding.set()
        self.release.wait(30)
        super().send(event)


def test_a_full_queue_drops_and_counts_and_never_blocks_the_call() -> None:
    producer = BlockedProducer()
    recorder = Recorder(lambda: producer, capacity=3, convert=trace_event).start()
    tracer = Tracer("sdk-test", recorder)

    noop = traced(lambda x: x, lambda: tracer)
    noop(0)
    assert producer.holding.wait(10)  # the recorder's thread is stuck sending it
    slowest = 0.0
    for i in range(1, 20):
        started = time.perf_counter()
        noop(i)
        slowest = max(slowest, time.perf_counter() - started)
    stats = tracer.stats()
    assert slowest < 0.5  # a blocked Kafka would hold a call for 30 s
    # one trace is on the recorder's thread (held in send), three queued, the rest dropped
    assert stats["dropped"] == 16 and stats["queued"] == 3
    producer.release.set()
    tracer.close()
    assert len(producer.events) == 4 and tracer.stats()["recorded"] == 4


def test_prompts_by_label_name_their_version_in_the_trace(rec: Recording) -> None:
    def version(n: int, label: str, **extra: Any) -> PromptVersion:
        return PromptVersion(
            agent_id="sdk-test", role="student", version=n, text=f"v{n}", source="gepa",
            label=label, **extra,
        )  # fmt: skip

    class Prompts:
        def __init__(self) -> None:
            self.closed = False
            self.by_label = {
                "production": {"student": version(3, "production")},
                "canary": {
                    "student": version(4, "canary", rollout_id="r1", traffic_share=0.9999999)
                },
                "staging": {"student": version(5, "staging")},
            }

        def labelled(self, agent_id: str, label: str) -> dict[str, PromptVersion]:
            return self.by_label.get(label, {}) if agent_id == "sdk-test" else {}

        def close(self) -> None:
            self.closed = True

    prompts = Prompts()
    recording = Recording(prompts=lambda: prompts)
    tracer = recording.tracer
    assert tracer.prompt() == "v3"  # outside a trace: production, no canary routing
    assert tracer.prompt(label="staging") == "v5"
    assert tracer.prompt("teacher", default="seed") == "seed"
    with pytest.raises(LookupError, match="no production prompt"):
        tracer.prompt("teacher")
    with tracer.record("q") as trace:
        trace.output = tracer.prompt()  # a canary at share ~1 takes the trace
    (event,) = recording.events(1)
    assert event.final_answer == "v4"
    assert [(p.role, p.version) for p in event.prompt_versions] == [("student", 4)]
    assert [(a.arm, a.canary_version, a.production_version) for a in event.rollouts] == [
        ("canary", 4, 3)
    ]
    tracer.close()
    assert prompts.closed


def test_kafka_unreachable_never_slows_a_call_and_the_trace_is_spilled(tmp_path: Any) -> None:
    from deploy.local.processes import free_port
    from runtime.recorder import open_recorder

    spill = tmp_path / "spill" / "sdk-a.jsonl"
    nowhere = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    recorder = open_recorder(nowhere, spill_path=spill, delivery_timeout_s=1.0, convert=trace_event)
    tracer = Tracer("sdk-test", recorder)
    shout = traced(lambda text: text.upper(), lambda: tracer)
    started = time.monotonic()
    assert [shout(f"q{i}") for i in range(3)] == ["Q0", "Q1", "Q2"]
    assert time.monotonic() - started < 1.0
    assert tracer.feedback(kind="approve")
    tracer.close(2.0)
    stats = tracer.stats()
    assert (stats["recorded"], stats["feedback"], stats["delivered"]) == (3, 1, 0)
    assert stats["spilled"] == 4 and len(spill.read_text().splitlines()) == 4
