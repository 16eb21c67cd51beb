"""Demonstrations distilled from users' edits: the runtime puts them before the task as chat
turns, GEPA's proposer draws them from training examples only, and a set that makes answers
bare wins through the gate (scripted student; the offline model's run is in the note)."""

from __future__ import annotations

from collections.abc import Sequence

from atlas.settings import PROJECT_CONFIGS
from rim.config import build_rim, load_rim_config
from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.prompts import StaticPrompts
from runtime.tasks import CITIES, generate
from schemas.models import Demonstration
from store.queries import TrainingTrace
from tests.fakes import ScriptedBackend, last_user
from trainer.datasets import DatasetConfig, build_splits, split_of
from trainer.demonstrations import (
    DEMONSTRATIONS,
    DemonstrationConfig,
    DemonstrationProposer,
    candidates_from,
    decode,
)
from trainer.evaluation import PromptEvaluator
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import evolve_prompts

CITY_SET = set(CITIES)
SEEDS = {"student": "You are a helpful assistant.", "teacher": "You are a reviewer."}


def _edited_traces(n: int = 120) -> list[TrainingTrace]:
    """Extraction traffic: the model named the city in a sentence; the user cut it to the city."""
    return [
        TrainingTrace(
            f"t{i}",
            t.task_id,
            "extraction",
            t.input,
            t.reference,
            f"The parcel goes to {t.reference}.",
            0.8,
            0.9,
            t.reference,
            "",
        )
        for i, t in enumerate(generate("extraction", "test", n, seed=4))
    ]


def _bare_when_shown(conversation: Sequence[Message]) -> str:
    """Right city every time; bare only when the conversation holds solved examples."""
    task = last_user(conversation)
    city = next(c for c in CITIES if c in task)
    shown = any(m["role"] == "assistant" for m in conversation)
    return city if shown else f"The parcel goes to {city}."


def test_the_runtime_puts_demonstrations_before_the_task() -> None:
    student = ScriptedBackend("s", _bare_when_shown)
    shots = [Demonstration(input="Ship it to Oslo, please.", output="Oslo")]
    prompts = StaticPrompts(SEEDS, {"student": shots})
    task = generate("extraction", "test", 1)[0]
    event = Runtime("a", student, student, prompts).run(task, "auto")
    conversation = student.batches[0][0]
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user"]
    assert conversation[1]["content"] == "Ship it to Oslo, please."
    assert conversation[-1]["content"] == task.input and event.final_answer == task.reference


def test_demonstrations_come_only_from_training_inputs() -> None:
    config = DatasetConfig(train_size=500, validation_size=500, heldout_size=500)
    splits = build_splits(_edited_traces(), config)
    pool = candidates_from(splits.train, min_reward=0.8, set_size=3)
    assert pool and all(split_of(d.input, config) == "train" for d in pool)
    held_out = {e.task.input for e in splits.heldout + splits.validation}
    proposer = DemonstrationProposer(pool, DemonstrationConfig(max_examples=3), seed=1)
    for _ in range(200):
        proposal = proposer.propose()
        assert 1 <= len(proposal) <= 3
        assert not {d.input for d in proposal} & held_out
        assert len({d.output for d in proposal}) == len(proposal)  # diverse outputs


def test_each_set_covers_every_kind_of_input_before_repeating_one() -> None:
    tasks = generate("extraction", "train", 90, seed=2)
    pool = [Demonstration(input=t.input, output=t.reference) for t in tasks]
    kinds = {"Order #", "parcel", "Please deliver"}

    def kind(text: str) -> str:
        return next(k for k in kinds if k in text)

    assert {kind(d.input) for d in pool} == kinds
    proposer = DemonstrationProposer(pool, DemonstrationConfig(max_examples=3), seed=5)
    proposals = [proposer.propose() for _ in range(50)]
    assert all({kind(d.input) for d in p} == kinds for p in proposals)
    assert len({tuple(d.input for d in p) for p in proposals}) > 40  # still random sets


def test_careless_approvals_are_not_taught_when_there_are_enough_edits() -> None:
    edited = _edited_traces(40)
    approved = [
        TrainingTrace(
            f"r{i}",
            t.task_id,
            "extraction",
            t.input,
            t.reference,
            "Let me think about parcels and distances first.",
            1.0,
            1.0,
            None,
            "",
        )
        for i, t in enumerate(generate("extraction", "test", 40, seed=9))
    ]
    config = DatasetConfig(train_size=500, validation_size=500, heldout_size=500)
    train = build_splits(edited + approved, config).train
    outputs = {d.output for d in candidates_from(train, min_reward=0.8, set_size=3)}
    assert outputs and outputs <= CITY_SET
    few_edits = build_splits(edited[:12] + approved, config).train
    fallback = {d.output for d in candidates_from(few_edits, min_reward=0.8, set_size=50)}
    assert fallback & CITY_SET and fallback - CITY_SET  # too few edits: approved answers join


def test_edits_become_a_published_set_that_passes_the_gate_without_any_reflection_model() -> None:
    config = GepaConfig(budget=30, eval_mode="auto")
    splits = build_splits(_edited_traces(), config.dataset)
    student = ScriptedBackend("s", _bare_when_shown)
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    evaluator = PromptEvaluator("a", student, student, rim, "auto", config.limits)
    outcome = evolve_prompts(SEEDS, splits, evaluator, None, config)
    assert outcome.changed_roles == [DEMONSTRATIONS]
    assert outcome.best["student"] == SEEDS["student"]  # no reflection model, text untouched
    shots = decode(outcome.best[DEMONSTRATIONS])
    assert shots and all(d.output in CITY_SET for d in shots)
    heldout_inputs = {e.task.input for e in splits.heldout}
    assert not {d.input for d in shots} & heldout_inputs
    assert outcome.decision.passed, outcome.decision.reason
    assert outcome.decision.current_reward < outcome.decision.candidate_reward == 1.0
