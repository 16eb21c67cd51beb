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
from trainer.gepa_engine import GepaConfig, evolve_prompts

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
    pool = candidates_from(splits.train, min_reward=0.8)
    assert pool and all(split_of(d.input, config) == "train" for d in pool)
    held_out = {e.task.input for e in splits.heldout + splits.validation}
    proposer = DemonstrationProposer(pool, DemonstrationConfig(max_examples=3), seed=1)
    for _ in range(200):
        proposal = proposer.propose()
        assert 1 <= len(proposal) <= 3
        assert not {d.input for d in proposal} & held_out
        assert len({d.output for d in proposal}) == len(proposal)  # diverse outputs


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
