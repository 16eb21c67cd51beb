"""LLM judging in one request: every trace at every temperature goes to the backend at once
(`complete_each`), results come back to the right trace, malformed replies are retried in one
batch; the per-row temperature sampler, the shared-prefix, reserved KV cache and grouped
attention of the local backend; the bounded concurrency of the OpenAI-compatible backend."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Sequence

import pytest

from rim.judges import LLMJudge, Principle
from runtime.backends.base import ChatResult, GenerationParams, Message, complete_each
from runtime.backends.batching import RowTemperature, shared_prefix_len
from schemas.models import InteractionEvent
from tests.factories import interaction
from tests.fakes import ScriptedBackend, last_user

PRINCIPLES = [Principle(name="correctness", description="The answer is right.")]
TEMPERATURES = (0.2, 0.5, 0.8)


def trace(answer: str) -> InteractionEvent:
    return interaction(random.Random(0)).model_copy(update={"final_answer": answer})


def answer_of(conversation: Sequence[Message]) -> str:
    return last_user(conversation).rsplit("Final answer: ", 1)[1]


def verdict(answer: str, temperature: float) -> str:
    """Same score for every temperature of a trace (no escalation); 0.5 is the surest."""
    return json.dumps(
        {
            "score": int(answer) / 100,
            "rationale": f"{answer}@{temperature}",
            "uncertainty": 0.0 if temperature == 0.5 else 0.2,
        }
    )


class MixedFake:
    """A backend with its own `complete_each`; records each call's rows and temperatures.
    ``garbage`` lists (answer, temperature) rows that get a malformed reply the first time."""

    def __init__(self, garbage: set[tuple[str, float]] | None = None):
        self.model_name = "mixed-fake"
        self.calls: list[list[tuple[str, float]]] = []
        self.garbage = set(garbage or ())

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        raise AssertionError("the judge must send all temperatures through complete_each")

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        rows = [(answer_of(c), p.temperature) for c, p in zip(conversations, params, strict=True)]
        self.calls.append(rows)
        texts = []
        for row in rows:
            texts.append("no json" if row in self.garbage else verdict(*row))
            self.garbage.discard(row)
        return [ChatResult([t], 1, 1, 1.0, self.model_name) for t in texts]


def test_one_call_carries_every_trace_at_every_temperature() -> None:
    answers = ["7", "12", "30", "45", "99"]
    backend = MixedFake()
    scores = LLMJudge("acc", PRINCIPLES, backend, temperatures=TEMPERATURES).judge(
        [trace(a) for a in answers]
    )
    assert len(backend.calls) == 1
    [rows] = backend.calls
    assert len(rows) == 3 * len(answers)
    assert sorted(rows) == sorted((a, t) for a in answers for t in TEMPERATURES)
    # each trace's score comes from its own samples (the surest: temperature 0.5)
    assert [s.rationale for s in scores] == [f"{a}@0.5" for a in answers]
    assert [s.score for s in scores] == [int(a) / 100 for a in answers]
    assert all(s.samples == 3 and not s.escalated for s in scores)


def test_malformed_replies_are_retried_together_at_their_own_temperature() -> None:
    backend = MixedFake(garbage={("7", 0.8), ("12", 0.2)})
    scores = LLMJudge("acc", PRINCIPLES, backend, retries=1).judge([trace("7"), trace("12")])
    assert len(backend.calls) == 2
    assert sorted(backend.calls[1]) == [("12", 0.2), ("7", 0.8)]
    assert [s.score for s in scores] == [0.07, 0.12] and all(s.error is None for s in scores)


def test_the_arbiter_gets_one_call_for_the_escalated_traces() -> None:
    judge_backend = MixedFake(garbage={(a, t) for a in ("7", "30") for t in TEMPERATURES})
    arbiter = MixedFake()
    scores = LLMJudge("acc", PRINCIPLES, judge_backend, arbiter, retries=0).judge(
        [trace("7"), trace("12"), trace("30")]
    )
    assert arbiter.calls == [[("7", 0.2), ("30", 0.2)]]
    assert [s.escalated for s in scores] == [True, False, True]
    assert [s.rationale for s in scores] == ["7@0.2", "12@0.5", "30@0.2"]


def test_backends_without_complete_each_get_one_call_per_parameter_set() -> None:
    backend = ScriptedBackend("plain", lambda c: answer_of(c))
    conversations = [[{"role": "user", "content": f"Final answer: {i}"}] for i in range(6)]
    params = [GenerationParams(temperature=t) for t in (0.2, 0.5, 0.2, 0.8, 0.5, 0.2)]
    results = complete_each(backend, conversations, params)
    assert [r.text for r in results] == [str(i) for i in range(6)]
    assert [p.temperature for p in backend.params] == [0.2, 0.5, 0.8]
    assert [[answer_of(c) for c in batch] for batch in backend.batches] == [
        ["0", "2", "5"],
        ["1", "4"],
        ["3"],
    ]
    with pytest.raises(ValueError, match="parameter rows"):
        complete_each(backend, conversations, params[:2])


def test_judging_through_a_hot_loading_backend_keeps_one_batch() -> None:
    from runtime.checkpoints import CheckpointFollower, HotLoadingBackend

    inner = MixedFake()  # its `complete` fails the test: everything must arrive batched
    follower = CheckpointFollower({"bootstrap.servers": "127.0.0.1:9"})  # never started
    backend = HotLoadingBackend(inner, follower, "agent", "judge")  # type: ignore[arg-type]
    answers = ["7", "12", "30"]
    scores = LLMJudge("acc", PRINCIPLES, backend, temperatures=TEMPERATURES).judge(
        [trace(a) for a in answers]
    )
    assert len(inner.calls) == 1
    assert sorted(inner.calls[0]) == sorted((a, t) for a in answers for t in TEMPERATURES)
    assert [s.score for s in scores] == [int(a) / 100 for a in answers]
    conversations = [[{"role": "user", "content": f"Final answer: {a}"}] for a in answers]
    backend.complete(conversations, GenerationParams(temperature=0.5))
    assert inner.calls[1] == [(a, 0.5) for a in answers]


def test_row_temperature_scales_rows_independently_and_keeps_greedy_rows_greedy() -> None:
    torch = pytest.importorskip("torch")
    scores = torch.tensor([[1.0, 2.0, 3.0, 0.5], [1.0, 2.0, 3.0, 0.5], [0.1, 4.0, 2.0, 3.9]])
    processor = RowTemperature(torch.tensor([0.5, 2.0, 0.0]))
    out = processor(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    assert torch.allclose(out[0], scores[0] / 0.5)
    assert torch.allclose(out[1], scores[1] / 2.0)
    assert out[2, 1] == scores[2, 1] and torch.isinf(out[2, [0, 2, 3]]).all()
    draws = torch.multinomial(torch.softmax(out, dim=-1), 200, replacement=True)
    assert (draws[2] == 1).all()  # temperature 0: always the argmax
    assert len(set(draws[0].tolist())) > 1  # sampled rows still sample


def test_shared_prefix_leaves_each_row_a_token_of_its_own() -> None:
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_len([[4, 2], [1, 2]]) == 0
    assert shared_prefix_len([]) == 0


def tiny_llama(attn: str = "sdpa"):  # type: ignore[no-untyped-def]
    """A random 2-layer Llama with grouped-query attention (4 query heads, 2 key/value)."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def test_grouped_attention_and_reserved_cache_change_no_output() -> None:
    torch = pytest.importorskip("torch")
    from runtime.backends.batching import grouped_sdpa, reserved_cache

    reference = tiny_llama("sdpa")
    grouped = tiny_llama(grouped_sdpa())
    ids = torch.randint(1, 64, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, 3:5] = 0  # padding in the middle, as after a shared prefix
    with torch.inference_mode():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = grouped(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(expected[mask.bool()], got[mask.bool()], atol=1e-5)
        options = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
        plain = reference.generate(input_ids=ids, attention_mask=mask, **options)
        cache = reserved_cache(reference.config, reserve=4)  # outgrows it: reallocates
        reserved = reference.generate(
            input_ids=ids, attention_mask=mask, past_key_values=cache, **options
        )
    assert torch.equal(plain, reserved)


class NumberTokenizer:
    """Prompts are space-separated token ids."""

    eos_token_id = pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def test_local_decoding_matches_plain_greedy_decoding_row_by_row() -> None:
    """Shared prefix, repeated prompts, rows leaving the batch as they stop, a mixed batch:
    the greedy rows still say what one-prompt-at-a-time greedy decoding says."""
    torch = pytest.importorskip("torch")
    from runtime.backends.batching import grouped_sdpa
    from runtime.backends.local import MIN_SHARED_PREFIX, LocalBackend

    backend = LocalBackend.__new__(LocalBackend)  # no files: a tiny random model
    backend.model, backend.tokenizer, backend.device = (
        tiny_llama(grouped_sdpa()),
        NumberTokenizer(),
        "cpu",
    )
    rng = random.Random(1)
    prefix = [rng.randint(3, 63) for _ in range(MIN_SHARED_PREFIX + 4)]
    unique = [prefix + [rng.randint(3, 63) for _ in range(k)] for k in (1, 4, 7)]

    def greedy(ids: list[int], steps: int = 10) -> list[int]:
        out = list(ids)
        with torch.inference_mode():
            for _ in range(steps):
                out.append(int(backend.model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
        return out[len(ids) :]

    plain = [greedy(ids) for ids in unique]
    config_eos = backend.model.generation_config.eos_token_id
    stops = set(config_eos if isinstance(config_eos, list) else [config_eos])
    # prompt 1 stops at a token that prompt 0 never writes: its rows leave the batch early
    stopping, stop = next(
        (i, t)
        for i, t in enumerate(plain[1])
        if i >= 2 and t not in {*plain[1][:i], *plain[0], *stops}
    )
    stops.add(stop)
    NumberTokenizer.eos_token_id = NumberTokenizer.pad_token_id = stop
    try:
        expected = [next((seq[:i] for i, t in enumerate(seq) if t in stops), seq) for seq in plain]
        prompts = [" ".join(map(str, unique[i])) for i in (0, 1, 1, 2, 2, 0)]
        temps = [0.0, 0.0, 1.5, 0.0, 0.0, 0.9]
        with torch.inference_mode():
            ids, mask, cache = backend._prefill(prompts, 1, reserve=4)
            tokens, logprobs = backend._decode(ids, mask, cache, temps, 10, True)
    finally:
        NumberTokenizer.eos_token_id = NumberTokenizer.pad_token_id = 0
    for row, source in enumerate((0, 1, 1, 2, 2, 0)):
        if temps[row] == 0:
            assert tokens[row] == expected[source], row
        assert len(logprobs[row]) == len(tokens[row]) and all(lp <= 0 for lp in logprobs[row])
    assert len(tokens[1]) == stopping and len(tokens[0]) > stopping


class SlowOne:
    """Stands in for `OpenAIBackend._one`: records temperatures and requests in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def __call__(self, messages: Sequence[Message], params: GenerationParams) -> ChatResult:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
        text = f"{messages[0]['content']}@{params.temperature}"
        return ChatResult([text], 1, 1, 1.0, "fake")


def test_openai_backend_sends_rows_concurrently_within_its_bound() -> None:
    from runtime.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", concurrency=4)
    fake = SlowOne()
    backend._one = fake  # type: ignore[method-assign]
    conversations = [[{"role": "user", "content": str(i)}] for i in range(12)]
    params = [GenerationParams(temperature=t) for _ in range(4) for t in TEMPERATURES]
    results = backend.complete_each(conversations, params)
    assert [r.text for r in results] == [f"{i}@{p.temperature}" for i, p in enumerate(params)]
    assert 1 < fake.peak <= 4


@pytest.mark.slow
def test_real_local_backend_mixes_temperatures_in_one_call(local_backend: object) -> None:
    questions = ["What is 2 + 2?", "Name the capital of France in one word, please.", "Hi"]
    conversations = [[{"role": "user", "content": q}] for q in questions for _ in range(3)]
    params = [
        GenerationParams(temperature=t, max_tokens=12, logprobs=True)
        for _ in questions
        for t in (0.0, 0.7, 1.3)
    ]
    results = complete_each(local_backend, conversations, params)  # type: ignore[arg-type]
    assert len(results) == 9  # one per row, in one batch (the fixture's max_batch is 8: two)
    assert all(r.texts and r.completion_tokens <= 12 for r in results)
    greedy = local_backend.complete(  # type: ignore[attr-defined]
        conversations[::3], GenerationParams(max_tokens=12, logprobs=True)
    )
    assert [r.text for r in results[::3]] == [r.text for r in greedy]  # still greedy
    assert [r.mean_logprobs[0] for r in results[::3]] == pytest.approx(
        [r.mean_logprobs[0] for r in greedy], abs=1e-4
    )
