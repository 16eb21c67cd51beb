"""The model backends against real models: SmolLM2 in-process (transformers) and the same GGUF
behind llama.cpp's OpenAI-compatible server; and 20 real closed-loop tasks onto the broker."""

from __future__ import annotations

import uuid

import pytest

from runtime.backends.base import BackendError, GenerationParams, chat
from runtime.backends.openai_backend import OpenAIBackend
from runtime.core import Runtime
from runtime.producer import EventProducer
from runtime.prompts import StaticPrompts
from runtime.tasks import generate
from runtime.turns import GenerationLimits
from schemas.codec import AvroCodec
from schemas.models import InteractionEvent
from schemas.topics import INTERACTIONS
from tests.conftest import LLAMA_API_KEY
from tests.workers import reader_at_end

QUESTION = [{"role": "user", "content": "What is the capital of France? One word."}]
SEEDS = StaticPrompts(
    {
        "student": "You are a helpful assistant. Answer concisely and end with the final answer.",
        "teacher": "You are a strict reviewer of a student's answers.",
    }
)


def test_local_backend_batches_in_order(local_backend: object) -> None:
    conversations = [
        [{"role": "user", "content": f"Repeat the word: {w}"}] for w in ("apple", "river", "stone")
    ]
    params = GenerationParams(max_tokens=12, logprobs=True)
    results = local_backend.complete(conversations, params)  # type: ignore[attr-defined]
    assert len(results) == 3
    for result in results:
        assert result.text and 0 < result.completion_tokens <= 12 and result.prompt_tokens > 5
        assert result.mean_logprobs[0] is not None and result.mean_logprobs[0] <= 0
    single = local_backend.complete(conversations[1:2], params)  # type: ignore[attr-defined]
    assert single[0].text == results[1].text  # left padding does not change greedy output


def test_local_backend_samples_n(local_backend: object) -> None:
    result = chat(local_backend, QUESTION, temperature=1.0, n=3, max_tokens=16, seed=7)  # type: ignore[arg-type]
    assert len(result.texts) == 3 and all(result.texts)


def test_openai_backend_against_llama_cpp_server(llama_server: object) -> None:
    backend = OpenAIBackend("smollm2", base_url=llama_server.base_url, api_key=LLAMA_API_KEY)  # type: ignore[attr-defined]
    result = chat(backend, QUESTION, max_tokens=16)
    assert "Paris" in result.text
    assert result.prompt_tokens > 5 and 0 < result.completion_tokens <= 16
    sampled = chat(backend, QUESTION, temperature=0.9, n=2, max_tokens=8)
    assert len(sampled.texts) == 2  # the server ignores n; the backend tops up
    results = backend.complete([QUESTION, QUESTION], GenerationParams(max_tokens=8))
    assert [r.text for r in results] == [results[0].text] * 2


def test_openai_backend_wrong_key_is_a_clear_error(llama_server: object) -> None:
    backend = OpenAIBackend("smollm2", base_url=llama_server.base_url, api_key="wrong")  # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="authentication failed"):
        chat(backend, QUESTION, max_tokens=4)


def test_openai_backend_unreachable_endpoint_is_a_clear_error() -> None:
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", max_retries=1, timeout=2)
    with pytest.raises(BackendError, match="cannot reach the model endpoint"):
        chat(backend, QUESTION, max_tokens=4)


def test_20_paired_tasks_with_the_real_model_reach_the_broker(
    local_backend: object, kafka_config: dict[str, str]
) -> None:
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    runtime = Runtime(
        agent,
        local_backend,
        local_backend,
        SEEDS,  # type: ignore[arg-type]
        limits=GenerationLimits(answer_tokens=48, guidance_tokens=32),
    )
    tasks = generate("arithmetic", "test", 20)
    events = runtime.run_many(tasks, mode="paired")
    consumer = reader_at_end(kafka_config, [INTERACTIONS])
    with EventProducer(kafka_config) as producer:
        for event in events:
            producer.record_interaction(event)
    assert producer.delivered == 20

    codec, received = AvroCodec(), {}
    try:
        for _ in range(200):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            event = codec.decode(message.value(), InteractionEvent)
            if event.agent_id == agent:
                received[event.trace_id] = event
            if len(received) == 20:
                break
    finally:
        consumer.close()
    assert received == {e.trace_id: e for e in events}
    for event in events:
        assert event.mode == "paired"
        assert [s.kind for s in event.steps][:2] == ["baseline", "review"]
        assert event.usage.completion_tokens > 0 and event.baseline_answer
