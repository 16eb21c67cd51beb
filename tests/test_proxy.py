"""The OpenAI-compatible recording proxy (ingest/proxy.py): unit tests against a fake upstream
with an in-memory producer. A Kafka outage with the real producer, and the proxy end to end
with the stock `openai` client and llama.cpp's server, are in test_proxy_e2e.py."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ingest.exchange import Exchange, parse_sse_answer, to_event
from ingest.proxy import AGENT_HEADER, TRACE_HEADER, ProxyConfig, key_digest
from ingest.serving import ServerThread, load_agent_keys, proxy_on_thread
from runtime.recorder import Recorder
from schemas.configfile import ConfigError
from schemas.models import (
    Demonstration,
    Event,
    FeedbackEvent,
    InteractionEvent,
    PromptRef,
    PromptVersion,
)
from tests.factories import no_completion_exchange
from tests.fake_openai import FakeUpstream


class ListProducer:
    """Keeps what it is sent; Kafka acknowledges everything at once."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.delivered = 0
        self.spilled = 0

    def send(self, event: Event) -> None:
        self.events.append(event)
        self.delivered += 1

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> None:
        pass


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out; last {check()!r}")


class Setup:
    def __init__(self, upstream: FakeUpstream, config: ProxyConfig | None = None) -> None:
        self.upstream = upstream
        self.upstream_server = ServerThread(upstream.app)
        self.produced = ListProducer()
        self.recorder = Recorder(lambda: self.produced, convert=to_event).start()
        self.config = config or ProxyConfig("http://127.0.0.1:1/v1")
        self.config.upstream = f"{self.upstream_server.url}/v1"
        self.proxy, self.server = proxy_on_thread(self.config, self.recorder)
        self.url = f"{self.server.url}/v1"

    def client(self, key: str = "k", **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, default_headers=headers)

    def events(self, n: int, kind: type[Event] = InteractionEvent) -> list[Any]:
        return wait_for(lambda: [e for e in self.produced.events if isinstance(e, kind)][:n])

    def stop(self) -> None:
        self.server.stop()
        self.upstream_server.stop()
        self.recorder.close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    running = Setup(FakeUpstream())
    yield running
    running.stop()


def test_a_completion_comes_back_unchanged_and_is_recorded_after_it(setup: Setup) -> None:
    direct = openai.OpenAI(base_url=f"{setup.upstream_server.url}/v1", api_key="k")
    ask = {
        "model": "echo-1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
        ],
    }
    expected = direct.chat.completions.create(**ask, temperature=0)
    raw = setup.client(**{AGENT_HEADER: "shop-bot"}).chat.completions.with_raw_response.create(
        **ask, temperature=0
    )
    got = raw.parse()
    assert got.choices[0].message.content == expected.choices[0].message.content == "echo: 2+2?"
    assert got.usage is not None and got.usage.total_tokens == 10
    trace_id = raw.headers[TRACE_HEADER]
    (event,) = setup.events(1)
    assert (event.trace_id, event.agent_id, event.task_input) == (trace_id, "shop-bot", "2+2?")
    assert event.final_answer == "echo: 2+2?" and event.mode == "auto"
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (7, 3)
    assert event.metadata["system_prompt"] == "Be brief."
    assert event.metadata["source"] == "openai-proxy" and event.models == {"student": "echo-1"}
    assert event.latency_ms > 0
    headers, body = setup.upstream.requests[-1]
    assert json.loads(body)["messages"][1]["content"] == "2+2?"  # forwarded as it came
    assert headers["authorization"] == "Bearer k" and AGENT_HEADER.lower() not in headers


def test_a_stream_comes_back_chunk_by_chunk_as_the_upstream_sends_it() -> None:
    # The upstream sends a word every `gap` seconds: a proxy that buffered would hand the first
    # word over only after the last, one that streams before the second is sent.
    gap = 0.6
    running = Setup(FakeUpstream(delay=gap))
    try:
        ask = {
            "model": "echo-1",
            "stream": True,
            "messages": [{"role": "user", "content": "one two three"}],
        }
        arrivals, chunks = [], []
        started = time.monotonic()
        with httpx.stream("POST", f"{running.url}/chat/completions", json=ask) as answer:
            trace_id = answer.headers[TRACE_HEADER]
            for chunk in answer.iter_raw():
                arrivals.append(time.monotonic() - started)
                chunks.append(chunk)
        assert arrivals[0] < gap, arrivals  # the first word before the upstream's second
        assert arrivals[-1] >= 3 * gap
        direct = httpx.post(f"{running.upstream_server.url}/v1/chat/completions", json=ask)
        assert b"".join(chunks) == direct.content
        (event,) = running.events(1)
        assert event.trace_id == trace_id and event.final_answer == "echo: one two three"
        assert event.metadata["streamed"] == "true" and event.usage.completion_tokens == 4
        assert float(event.metadata["time_to_first_chunk_ms"]) < gap * 1000
    finally:
        running.stop()


def test_the_openai_client_streams_through_the_proxy(setup: Setup) -> None:
    ask = {"model": "echo-1", "messages": [{"role": "user", "content": "hi there"}]}
    raw = setup.client().chat.completions.with_raw_response.create(**ask, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "echo: hi there"
    (event,) = setup.events(1)
    assert event.trace_id == raw.headers[TRACE_HEADER] and event.agent_id == "proxy"


def test_models_pass_through(setup: Setup) -> None:
    assert [m.id for m in setup.client().models.list()] == ["echo-1"]


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_upstream_errors_pass_through_with_their_status_unrecorded(
    setup: Setup, status: int
) -> None:
    answer = httpx.post(
        f"{setup.url}/chat/completions",
        json={"model": f"fail-{status}", "messages": [{"role": "user", "content": "x"}]},
    )
    assert answer.status_code == status
    assert answer.json() == {"error": {"message": f"failed {status}", "type": "x"}}
    assert TRACE_HEADER not in answer.headers
    time.sleep(0.2)
    assert setup.produced.events == [] and setup.proxy.counts["upstream_errors"] == 1


def test_an_unreachable_upstream_is_a_502_with_a_reason(setup: Setup) -> None:
    setup.config.upstream = "http://127.0.0.1:9/v1"  # discard: nobody listens
    answer = httpx.post(
        f"{setup.url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status_code == 502
    message = answer.json()["error"]["message"]
    assert "unreachable" in message and "127.0.0.1:9" in message and "\n" not in message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"messages": "hello"}', "'messages' must be a non-empty list"),
        (b'{"messages": []}', "'messages' must be a non-empty list"),
        (b'{"messages": [{"content": "x"}]}', "string 'role'"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content must be a string"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "'model' must"),
        (b'{"stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "'stream' must"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_hostile_requests_are_refused_before_anything_goes_upstream(
    setup: Setup, body: bytes, reason: str
) -> None:
    answer = httpx.post(f"{setup.url}/chat/completions", content=body)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]["message"]
    assert setup.upstream.requests == []


def test_a_huge_body_is_refused_whether_it_says_its_size_or_not(setup: Setup) -> None:
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    answer = httpx.post(f"{setup.url}/chat/completions", content=huge)
    assert answer.status_code == 413 and "limit" in answer.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to go by
        for _ in range(80):
            yield b"x" * 65536

    answer = httpx.post(f"{setup.url}/chat/completions", content=chunks())
    assert answer.status_code == 413
    bad_agent = httpx.post(
        f"{setup.url}/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers={AGENT_HEADER: "../etc"},
    )
    assert bad_agent.status_code == 400 and AGENT_HEADER in bad_agent.json()["error"]["message"]
    assert setup.upstream.requests == []


def test_a_mapped_api_key_names_the_agent_and_is_never_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"billing-bot: {secret}\nother-bot: [sk-other-000000]\n")
    keys.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_agent_keys(keys)
    keys.chmod(0o600)
    mapping = load_agent_keys(keys)
    assert mapping == {
        key_digest(secret): "billing-bot",
        key_digest("sk-other-000000"): "other-bot",
    }
    running = Setup(FakeUpstream(api_key=secret), ProxyConfig("http://x/v1", agent_keys=mapping))
    try:
        caplog.set_level(logging.DEBUG)
        client = running.client(key=secret, **{AGENT_HEADER: "someone-else"})
        client.chat.completions.create(
            model="echo-1", messages=[{"role": "user", "content": "bill me"}]
        )
        (event,) = running.events(1)
        assert event.agent_id == "billing-bot"  # the key wins over the header
        assert secret not in event.model_dump_json() and secret not in caplog.text
        with pytest.raises(openai.AuthenticationError):  # the upstream still checks its key
            running.client(key="sk-wrong-key").models.list()
    finally:
        running.stop()


def test_feedback_is_recorded_for_a_trace_and_bad_feedback_refused(setup: Setup) -> None:
    url = f"{setup.server.url}/v1/feedback"
    ok = httpx.post(
        url,
        json={"trace_id": "t-1", "kind": "rating", "rating": 4},
        headers={AGENT_HEADER: "shop-bot"},
    )
    assert ok.status_code == 202 and ok.json()["trace_id"] == "t-1"
    (event,) = setup.events(1, FeedbackEvent)
    assert (event.trace_id, event.kind, event.rating, event.agent_id) == (
        "t-1",
        "rating",
        4,
        "shop-bot",
    )
    for body, reason in [
        ({"trace_id": "t", "kind": "like"}, "kind"),
        ({"trace_id": "t", "kind": "edit"}, "needs edited_text"),
        ({"trace_id": "t", "kind": "rating", "rating": 9}, "outside"),
        ({"trace_id": "t", "kind": "rating", "rating": "NaN"}, "rating"),
        ({"trace_id": " ", "kind": "approve"}, "trace_id"),
        ({"trace_id": "t", "kind": "approve", "agent_id": "x"}, "unknown feedback field"),
        ({"kind": "approve"}, "trace_id"),
    ]:
        refused = httpx.post(url, json=body)
        assert refused.status_code == 400, body
        assert reason in refused.json()["error"]["message"], (body, refused.text)
    huge = httpx.post(url, content=b"x" * 100_000)
    assert huge.status_code == 413
    stats = httpx.get(f"{setup.server.url}/atlas/stats").json()
    assert stats["feedback"] == 1 and stats["refused"] == 8


def test_an_answer_that_is_no_completion_is_counted_not_recorded() -> None:
    exchange = no_completion_exchange()
    produced = ListProducer()
    recorder = Recorder(lambda: produced, convert=to_event).start()
    recorder.submit(exchange)
    recorder.close()
    assert produced.events == [] and recorder.stats()["unreadable"] == 1


def test_a_long_conversation_and_tool_calls_become_the_events_text() -> None:
    stream = (
        b'data: {"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,'
        b' "function": {"name": "lookup", "arguments": "{\\"q\\""}}]}}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,'
        b' "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    call = parse_sse_answer(stream)
    assert json.loads(call.answer) == [{"name": "lookup", "arguments": '{"q": 1}'}]
    assert (call.model, call.finish_reason) == ("m", "tool_calls")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "c" * 100_000}]},
    ]
    event = to_event(Exchange("t", "a", {"messages": messages}, stream, True, 1.0))
    assert event.task_input.startswith("user: a\n\nassistant: b\n\nuser: ccc")
    prefix = "user: a\n\nassistant: b\n\nuser: "
    assert event.metadata["task_input_truncated_from"] == str(len(prefix) + 100_000)


def test_a_client_that_leaves_right_after_done_is_recorded_one_that_leaves_early_is_not() -> None:
    running = Setup(FakeUpstream(delay=0.2))
    try:
        ask = {"stream": True, "messages": [{"role": "user", "content": "a b c d"}]}
        url = f"{running.url}/chat/completions"
        with httpx.stream("POST", url, json=ask) as answer:
            for line in answer.iter_lines():
                if line == "data: [DONE]":
                    break  # and close the connection at once, as clients do
        with httpx.stream("POST", url, json=ask) as answer:
            next(answer.iter_raw())  # the first word, then gone
        (event,) = running.events(1)
        assert event.final_answer == "echo: a b c d"
        wait_for(lambda: running.proxy.counts["incomplete"] == 1)
        time.sleep(0.3)
        assert len(running.produced.events) == 1
    finally:
        running.stop()


class PublishedPrompts:
    """Version 3 of the student prompt published for ``pirate-bot``, nothing for others."""

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        published = agent_id == "pirate-bot"
        return {
            role: PromptVersion(
                agent_id=agent_id,
                role=role,
                version=3 if published else 0,
                text="Talk like a pirate." if published else "",
                source="gepa" if published else "seed",
                demonstrations=[Demonstration(input="hi", output="arr")] if published else [],
            )
            for role in ("student", "teacher")
        }

    def canaries(self, agent_id: str) -> dict[str, PromptVersion]:
        return {}


def test_an_agent_that_opts_in_gets_its_managed_prompt_and_the_event_names_it() -> None:
    from ingest.managed import MANAGED_HEADER, ManagedPrompts

    running = Setup(FakeUpstream())
    running.proxy.managed = ManagedPrompts(PublishedPrompts())
    try:
        ask = {
            "messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
        }
        opted = {AGENT_HEADER: "pirate-bot", MANAGED_HEADER: "on"}
        assert httpx.post(f"{running.url}/chat/completions", json=ask, headers=opted).is_success
        sent = json.loads(running.upstream.requests[-1][1])["messages"]
        assert sent == [
            {"role": "system", "content": "Talk like a pirate."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "arr"},
            {"role": "user", "content": "q"},
        ]
        (event,) = running.events(1)
        assert event.prompt_versions == [PromptRef(role="student", version=3)]
        assert event.metadata["system_prompt"] == "Talk like a pirate."
        others = {AGENT_HEADER: "plain-bot", MANAGED_HEADER: "on"}
        httpx.post(f"{running.url}/chat/completions", json=ask, headers=others)
        assert json.loads(running.upstream.requests[-1][1]) == ask  # nothing published
        httpx.post(
            f"{running.url}/chat/completions", json=ask, headers={AGENT_HEADER: "pirate-bot"}
        )
        assert json.loads(running.upstream.requests[-1][1]) == ask  # not opted in
        running.proxy.managed = None
        refused = httpx.post(f"{running.url}/chat/completions", json=ask, headers=opted)
        assert refused.status_code == 400 and "--managed-prompts" in refused.text
    finally:
        running.stop()
