"""The recording proxy (ingest/proxy.py) with real clients and services: a Kafka outage with the
real producer (the call never fails, the event is spilled), and end to end with the stock
`openai` client, llama.cpp's server, Kafka, the reward worker and the sink."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai

from ingest.proxy import AGENT_HEADER, TRACE_HEADER, ProxyConfig
from ingest.serving import ServerThread, open_recorder, proxy_on_thread
from schemas.models import FeedbackEvent, InteractionEvent
from tests.fake_openai import FakeUpstream
from tests.test_proxy import wait_for


def test_kafka_unreachable_never_fails_a_call_and_the_event_is_spilled(tmp_path: Path) -> None:
    from deploy.local.processes import free_port

    spill = tmp_path / "spill" / "proxy.jsonl"
    nowhere = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    recorder = open_recorder(nowhere, spill_path=spill, delivery_timeout_s=1.0)
    fake = FakeUpstream()
    upstream = ServerThread(fake.app)
    _proxy, server = proxy_on_thread(ProxyConfig(f"{upstream.url}/v1"), recorder)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
        started = time.monotonic()
        for i in range(3):
            answer = client.chat.completions.create(
                model="echo-1", messages=[{"role": "user", "content": f"q{i}"}]
            )
            assert answer.choices[0].message.content == f"echo: q{i}"
        assert time.monotonic() - started < 2.0
        stats = wait_for(lambda: (s := recorder.stats())["spilled"] == 3 and s, timeout=20)
        assert stats["recorded"] == 3 and stats["delivered"] == 0
    finally:
        server.stop()
        upstream.stop()
        recorder.close()
    assert len(spill.read_text().splitlines()) == 3
    assert not os.stat(spill).st_mode & 0o002


def test_the_openai_client_through_the_proxy_gets_the_upstreams_answers_and_they_are_scored(
    stack_settings: Any, kafka_config: dict[str, str], llama_server: Any, tmp_path: Path
) -> None:
    """llama.cpp's server (temperature 0) answers the stock client the same directly and
    through the proxy, streamed and not; the proxy's interactions and a feedback arrive on
    Kafka, and the reward worker and the sink put them scored into latest_traces."""
    from schemas.codec import AvroCodec
    from schemas.topics import FEEDBACK, INTERACTIONS
    from store.client import connect
    from tests.conftest import LLAMA_API_KEY
    from tests.workers import WorkerProcess, eventually, reader_at_end

    agent = f"proxied-{uuid.uuid4().hex[:8]}"
    reader = reader_at_end(kafka_config, [INTERACTIONS, FEEDBACK])
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    recorder = open_recorder(kafka_config, spill_path=tmp_path / "spill.jsonl")
    _proxy, server = proxy_on_thread(ProxyConfig(llama_server.base_url), recorder)
    try:
        direct = openai.OpenAI(base_url=llama_server.base_url, api_key=LLAMA_API_KEY)
        proxied = openai.OpenAI(
            base_url=f"{server.url}/v1",
            api_key=LLAMA_API_KEY,
            default_headers={AGENT_HEADER: agent},
        )
        ask = {
            "model": "SmolLM2-135M-Instruct",
            "messages": [
                {"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            "temperature": 0,
            "max_tokens": 12,
        }
        expected = direct.chat.completions.create(**ask).choices[0].message.content
        raw = proxied.chat.completions.with_raw_response.create(**ask)
        assert raw.parse().choices[0].message.content == expected
        streamed_direct = "".join(
            c.choices[0].delta.content or ""
            for c in direct.chat.completions.create(**ask, stream=True)
            if c.choices
        )
        raw_stream = proxied.chat.completions.with_raw_response.create(**ask, stream=True)
        streamed = "".join(
            c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices
        )
        assert streamed == streamed_direct and expected
        traces = {raw.headers[TRACE_HEADER], raw_stream.headers[TRACE_HEADER]}
        assert len(traces) == 2
        rated = raw.headers[TRACE_HEADER]
        feedback = httpx.post(
            f"{server.url}/v1/feedback",
            json={"trace_id": rated, "kind": "rating", "rating": 5},
            headers={AGENT_HEADER: agent},
        )
        assert feedback.status_code == 202

        codec, seen = AvroCodec(), {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 3:
            message = reader.poll(1.0)
            if message is None or message.error() or message.key() is None:
                continue
            if message.key().decode() not in traces:
                continue
            kind = InteractionEvent if message.topic() == INTERACTIONS else FeedbackEvent
            event = codec.decode(message.value(), kind)
            seen[(message.topic(), event.trace_id)] = event
        assert set(seen) == {(INTERACTIONS, t) for t in traces} | {(FEEDBACK, rated)}
        answers = {e.final_answer for (topic, _), e in seen.items() if topic == INTERACTIONS}
        assert answers == {expected, streamed}

        store = connect(stack_settings.store())

        def scored() -> list[tuple[str, int, float]]:
            return store.query(
                "SELECT trace_id, feedback_count, reward FROM latest_traces"
                " WHERE agent_id = {a:String} ORDER BY trace_id",
                parameters={"a": agent},
            ).result_rows

        def both_scored() -> list[tuple[str, int, float]] | None:
            rows = scored()
            return rows if len(rows) == 2 and sum(row[1] for row in rows) == 1 else None

        rows = eventually(
            both_scored,
            240,
            "both proxied traces scored, one with its feedback",
            2,
        )
        assert {r[0] for r in rows} == traces
        assert {r[0]: r[1] for r in rows}[rated] == 1
        stats = recorder.stats()
        assert (stats["recorded"], stats["feedback"], stats["delivered"]) == (2, 1, 3)
    finally:
        reader.close()
        server.stop()
        recorder.close()
        for worker in workers:
            worker.stop()
