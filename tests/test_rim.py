"""RIM: programmatic judges, LLM judges (sampling, validation, retries, escalation), human
signals and their combination, batching."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from atlas.settings import Settings
from rim.config import build_rim, load_rim_config
from rim.judges import (
    FormatJudge,
    LLMJudge,
    Principle,
    ReferenceMatchJudge,
    ToolSuccessJudge,
    parse_judge_output,
)
from rim.reward import RewardWeights, Rim, human_signal
from runtime.backends.base import Message
from schemas.models import FeedbackEvent, InteractionEvent
from tests.factories import interaction
from tests.fakes import ScriptedBackend

PRINCIPLES = [Principle(name="correctness", description="The answer is right.")]


def trace(answer: str, reference: str | None = "7", family: str = "arithmetic") -> InteractionEvent:
    event = interaction(random.Random(0))
    return event.model_copy(
        update={
            "final_answer": answer,
            "reference": reference,
            "task_family": family,
            "baseline_answer": "6",
        }
    )


def reply(score: float, uncertainty: float = 0.1, rationale: str = "ok") -> str:
    return "Here you go: " + json.dumps(
        {
            "principles": [{"name": "correctness", "weight": 1, "description": "right"}],
            "score": score,
            "rationale": rationale,
            "uncertainty": uncertainty,
        }
    )


def by_temperature(replies: dict[float, str]) -> ScriptedBackend:
    backend = ScriptedBackend("judge", lambda c: "")
    backend.respond = lambda c: replies[backend.params[-1].temperature]  # type: ignore[method-assign]
    return backend


def test_reference_match_numbers_words_and_abstain() -> None:
    judge = ReferenceMatchJudge()
    scores = judge.judge([trace("so the answer is 7."), trace("it is 8"), trace("x", None)])
    assert [s.score for s in scores] == [1.0, 0.0, None]
    assert ReferenceMatchJudge(tolerance=1).judge([trace("8")])[0].score == 1.0
    city = trace("It goes to Paris.", "Paris", "extraction")
    both = trace("Paris or Rome", "Paris", "extraction")
    assert [s.score for s in judge.judge([city, both])] == [1.0, 0.0]
    # whole words only; naming the reference twice is still naming it alone
    words = ["Parisian Rome", "Paris, then Paris again", "Romeo in Paris", "nowhere", "paris"]
    scored = judge.judge([trace(w, "Paris", "extraction") for w in words])
    assert [s.score for s in scored] == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_format_judge() -> None:
    scores = FormatJudge().judge([trace("7"), trace("The answer is 7"), trace("hi", None, "chat")])
    assert [s.score for s in scores] == [1.0, 0.0, None]


def test_tool_success_judge() -> None:
    used = trace("7").model_copy(update={"metadata": {"tool_calls": "4", "tool_failures": "1"}})
    assert [s.score for s in ToolSuccessJudge().judge([used, trace("7")])] == [0.75, None]


def test_parse_judge_output_validates() -> None:
    assert parse_judge_output(reply(0.8)).score == 0.8
    with pytest.raises(ValueError, match="no JSON object"):
        parse_judge_output("I think it is good")
    with pytest.raises(ValueError, match="score"):
        parse_judge_output('{"score": 1.7, "rationale": "x"}')
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_judge_output('{"score": 0.5,}')


def test_agreeing_samples_keep_the_least_uncertain() -> None:
    backend = by_temperature(
        {0.2: reply(0.8, 0.2, "a"), 0.5: reply(0.75, 0.05, "b"), 0.8: reply(0.7, 0.1, "c")}
    )
    arbiter = ScriptedBackend("arbiter", lambda c: reply(0.0))
    score = LLMJudge("acc", PRINCIPLES, backend, arbiter).judge([trace("7")])[0]
    assert (score.score, score.rationale, score.escalated, score.samples) == (0.75, "b", False, 3)
    assert arbiter.calls == 0


@pytest.mark.parametrize(
    "replies",
    [
        {0.2: reply(0.9), 0.5: reply(0.5), 0.8: reply(0.9)},  # spread 0.4 > 0.15
        {0.2: reply(0.9), 0.5: reply(0.9, 0.6), 0.8: reply(0.9)},  # unsure > 0.3
        {0.2: "garbage", 0.5: "{not json", 0.8: "nope"},  # nothing parsed
    ],
    ids=["disagree", "unsure", "unparsed"],
)
def test_escalation_to_the_arbiter(replies: dict[float, str]) -> None:
    arbiter = ScriptedBackend("arbiter", lambda c: reply(0.33, 0.0, "arbiter says"))
    score = LLMJudge("acc", PRINCIPLES, by_temperature(replies), arbiter).judge([trace("7")])[0]
    assert (score.score, score.escalated, score.rationale) == (0.33, True, "arbiter says")


def test_garbage_everywhere_is_a_judge_error_not_a_crash() -> None:
    garbage = ScriptedBackend("judge", lambda c: "lol no json")
    judge = LLMJudge("acc", PRINCIPLES, garbage, ScriptedBackend("arb", lambda c: "still no"))
    score = judge.judge([trace("7")])[0]
    assert score.score is None and "no valid judgement" in score.error
    assert garbage.calls == 6  # 3 temperatures, each retried once


def test_a_backend_without_complete_each_gets_one_call_per_temperature() -> None:
    # (backends with it get one call in all: tests/test_judge_batching.py)
    backend = ScriptedBackend("judge", lambda c: reply(0.8))
    scores = LLMJudge("acc", PRINCIPLES, backend).judge([trace("7")] * 10)
    assert len(scores) == 10 and len(backend.batches) == 3
    assert all(len(b) == 10 for b in backend.batches)


def test_retry_only_the_malformed() -> None:
    seen: list[int] = []

    def flaky(conversation: Sequence[Message]) -> str:
        seen.append(1)
        return "oops" if len(seen) == 2 else reply(0.8)

    backend = ScriptedBackend("judge", flaky)
    LLMJudge("acc", PRINCIPLES, backend, temperatures=[0.2]).judge([trace("7"), trace("8")])
    assert [len(b) for b in backend.batches] == [2, 1]


def feedback(kind: str, **kw: object) -> FeedbackEvent:
    return FeedbackEvent(trace_id="t", kind=kind, **kw)  # type: ignore[arg-type]


def test_human_signals() -> None:
    assert human_signal("7", [feedback("approve")]) == 1.0
    assert human_signal("7", [feedback("reject")]) == 0.0
    assert human_signal("Paris", [feedback("edit", edited_text="paris")]) == 1.0
    assert 0 < human_signal("The answer is 7", [feedback("edit", edited_text="7")]) < 0.5
    assert human_signal("7", [feedback("rating", rating=4.0)]) == 0.75
    outcomes = [feedback("tool_outcome", tool_success=s) for s in (True, True, False, True)]
    assert human_signal("7", outcomes) == 0.75
    assert human_signal("7", []) is None


def test_human_feedback_outranks_the_judges() -> None:
    rim = Rim([ReferenceMatchJudge()], RewardWeights(human_weight=0.7))
    wrong_but_approved = rim.score(trace("8"), [feedback("approve")])
    assert wrong_but_approved.score == pytest.approx(0.7)
    assert rim.score(trace("7")).score == 1.0 and rim.score(trace("8")).score == 0.0


def test_a_broken_judge_leaves_the_others_scoring() -> None:
    class Exploding:
        name = "exploding"

        def judge(self, traces: Sequence[InteractionEvent]) -> list:
            raise RuntimeError("backend on fire")

    garbage = LLMJudge("llm", PRINCIPLES, ScriptedBackend("j", lambda c: "<html>"))
    reward = Rim([ReferenceMatchJudge(), Exploding(), garbage]).score(trace("7"))
    assert reward.score == 1.0
    assert any("backend on fire" in e for e in reward.errors)
    assert any(e.startswith("llm: no valid judgement") for e in reward.errors)


def test_weighted_judges_and_baseline_reward() -> None:
    rim = Rim(
        [ReferenceMatchJudge(), FormatJudge()],
        RewardWeights(judges={"reference_match": 1.0, "format": 0.25}),
    )
    reward = rim.score(trace("The answer is 7"))
    assert reward.score == pytest.approx(1.0 / 1.25)
    no_baseline = trace("7").model_copy(update={"baseline_answer": None})
    # baseline "6": wrong (0) but bare (1, weight 0.25)
    assert rim.baseline_rewards([trace("7"), no_baseline]) == [pytest.approx(0.2), None]


def test_default_config_builds_and_llm_judges_need_a_model() -> None:
    config = load_rim_config(Settings().config_dir)
    rim = build_rim(config)
    assert [j.name for j in rim.judges] == ["reference_match", "format", "tool_success"]
    config.judges[-1].enabled = True
    with pytest.raises(ValueError, match="needs a judge model"):
        build_rim(config)
    rim = build_rim(config, ScriptedBackend("j", lambda c: reply(0.5)))
    assert rim.judges[-1].name == "accuracy"


def test_the_real_local_model_as_a_judge_never_crashes(local_backend: object) -> None:
    judge = LLMJudge(
        "accuracy",
        PRINCIPLES,
        local_backend,  # type: ignore[arg-type]
        temperatures=[0.2, 0.8],
        retries=0,
        max_tokens=64,
    )
    scores = judge.judge([trace("The answer is 7."), trace("It is 12.")])
    assert len(scores) == 2
    for score in scores:
        assert (score.score is not None and 0 <= score.score <= 1) or score.error
        assert score.samples >= 2
