"""The memory policy as a component of the student's prompt version: measured on held-out
examples with the agent's entries (never a graded task's own), gated, carried over by later
versions, restored by a rollback, and read as the default from versions written before it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from atlas.settings import PROJECT_CONFIGS, Settings
from consumers.gepa_worker import as_candidate
from rim.config import build_rim, load_rim_config
from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.memory import MemoryIndex
from runtime.prompts import PromptSubscriber, StaticPrompts, next_versions
from runtime.tasks import generate
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.models import Demonstration, MemoryEntry, MemoryPolicy, PromptVersion
from store.client import connect
from store.queries import prompt_history
from tests.fakes import ScriptedBackend, last_user
from tests.workers import WorkerProcess, eventually, stack_cli
from trainer.datasets import Example
from trainer.evaluation import (
    MEMORY_POLICY,
    GateConfig,
    PromptEvaluator,
    compare_on_heldout,
    measure,
)

SEEDS = {"student": "Answer with the city.", "teacher": "Review."}
HELDOUT = [Example(t, "builtin") for t in generate("extraction", "test", 12)]
SEEN = generate("extraction", "train", 30)
REFERENCES = {t.input: t.reference for t in [*SEEN, *(e.task for e in HELDOUT)]}


def _entry(input_: str, output: str) -> MemoryEntry:
    return MemoryEntry(
        agent_id="a", role="student", entry_id=f"e{abs(hash(input_))}", input=input_,
        output=output, source="edit", source_trace_id="t", reward=1.0, terms=[],
    )  # fmt: skip


def _memory() -> MemoryIndex:
    """Edits of other extraction tasks, and of every held-out task itself (which an honest
    evaluation must never show its task)."""
    index = MemoryIndex()
    for task in [*SEEN, *(e.task for e in HELDOUT)]:
        index.put(_entry(task.input, task.reference or ""))
    return index


def _shown(conversation: Sequence[Message]) -> list[str]:
    """The solved examples' inputs a student conversation holds before its task."""
    return [m["content"] for m in conversation[1:-1] if m["role"] == "user"]


def _student_who_learns_the_format() -> ScriptedBackend:
    """Answers the bare city when it was shown a solved example, else a rambling sentence
    naming two cities (wrong by the project's rule)."""

    def respond(conversation: Sequence[Message]) -> str:
        reference = REFERENCES.get(last_user(conversation), "Oslo")
        if _shown(conversation):
            return reference
        return f"It might go to {reference} or maybe Tokyo, hard to say."

    return ScriptedBackend("student", respond)


def _evaluator(student: ScriptedBackend, memory: MemoryIndex | None) -> PromptEvaluator:
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    return PromptEvaluator("a", student, student, rim, "auto", memory=memory)


def _candidate(policy: MemoryPolicy) -> dict[str, str]:
    return {**SEEDS, MEMORY_POLICY: policy.model_dump_json()}


def test_each_side_is_measured_under_its_own_policy_never_seeing_its_own_entry() -> None:
    student = _student_who_learns_the_format()
    evaluator = _evaluator(student, _memory())
    evaluator.evaluate(_candidate(MemoryPolicy(enabled=True, k=2)), HELDOUT)
    conversations = [c for batch in student.batches for c in batch]
    assert len(conversations) == len(HELDOUT)
    for conversation in conversations:
        shown = _shown(conversation)
        assert len(shown) == 2 and last_user(conversation) not in shown
    student.batches.clear()
    evaluator.evaluate(_candidate(MemoryPolicy(enabled=False)), HELDOUT)
    assert all(_shown(c) == [] for batch in student.batches for c in batch)


def test_a_policy_that_helps_passes_the_gate_and_one_that_hurts_does_not() -> None:
    evaluator = _evaluator(_student_who_learns_the_format(), _memory())
    off, on = _candidate(MemoryPolicy(enabled=False)), _candidate(MemoryPolicy(enabled=True, k=1))
    config = GateConfig()
    turning_on = compare_on_heldout(
        HELDOUT, measure(evaluator, off), measure(evaluator, on), config
    )
    assert turning_on.decision.passed, turning_on.decision.reason
    assert turning_on.decision.candidate_reward > turning_on.decision.current_reward
    turning_off = compare_on_heldout(
        HELDOUT, measure(evaluator, on), measure(evaluator, off), config
    )
    assert not turning_off.decision.passed
    # without the agent's memory there is nothing to measure a policy with: no gain, refused
    blind = _evaluator(_student_who_learns_the_format(), None)
    assert not compare_on_heldout(
        HELDOUT, measure(blind, off), measure(blind, on), config
    ).decision.passed


def _production(policy: MemoryPolicy) -> dict[str, PromptVersion]:
    shots = {"student": [Demonstration(input="q", output="a")]}
    return StaticPrompts(SEEDS, shots, policy).snapshot("a")


def test_versions_carry_the_policy_over_and_a_new_policy_is_a_student_version_only() -> None:
    production = _production(MemoryPolicy(enabled=True, k=5))
    assert (
        as_candidate(production)[MEMORY_POLICY] == MemoryPolicy(enabled=True, k=5).model_dump_json()
    )
    [teacher] = next_versions(production, {"teacher": "Review harder."}, "manual")
    assert teacher.role == "teacher" and teacher.memory == production["teacher"].memory
    [student] = next_versions(production, {"student": "Be brief."}, "gepa")
    assert student.memory == MemoryPolicy(enabled=True, k=5)  # a text change keeps the policy
    [changed] = next_versions(production, {}, "manual", memory=MemoryPolicy(enabled=False))
    assert (changed.role, changed.version, changed.parent_version) == ("student", 1, 0)
    assert changed.memory == MemoryPolicy(enabled=False)
    assert (changed.text, changed.demonstrations) == (
        production["student"].text,
        production["student"].demonstrations,
    )


class _PromptVersionV2(PromptVersion):
    """A prompt version as publishers wrote it before the memory policy was part of it."""

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        return super().model_dump(
            **{**kwargs, "exclude": {"memory", "label", "rollout_id", "traffic_share"}}
        )


def test_a_policy_round_trips_and_versions_written_before_it_read_as_the_default(
    schema_dir_copy: Path,
) -> None:
    codec = AvroCodec()
    version = _production(MemoryPolicy(enabled=True, k=7, token_budget=100, min_score=0.5))[
        "student"
    ]
    assert codec.decode(codec.encode(version), PromptVersion).memory == version.memory
    history = schema_dir_copy / "history" / "io.atlas_stream.PromptVersion.v2.avsc"
    (schema_dir_copy / "io.atlas_stream.PromptVersion.avsc").write_text(history.read_text())
    old_writer = AvroCodec(catalog=SchemaCatalog.load(schema_dir_copy))
    old = _PromptVersionV2.model_validate(version.model_dump())
    assert codec.decode(old_writer.encode(old), PromptVersion).memory == MemoryPolicy()


@pytest.mark.parametrize(
    "hostile", [{"k": -1}, {"k": 10**9}, {"token_budget": -5}, {"min_score": float("nan")}]
)
def test_hostile_policies_are_refused(hostile: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MemoryPolicy.model_validate(hostile)


@pytest.mark.integration
def test_operators_change_the_policy_agents_switch_live_and_a_rollback_restores_it(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """On the real broker and store: `atlas memory policy` shows the seed's, publishes a
    forced change as a student version that a following runtime applies at its next task (and
    the sink stores with it), refuses to gate without held-out examples, and `atlas prompts
    rollback` restores the earlier policy from the store."""
    agent = f"policy-{uuid.uuid4().hex[:10]}"
    cli = stack_cli(stack_settings)

    assert f"{agent}/student v0: off" in cli("memory", "policy", "--agent", agent)
    index = MemoryIndex()
    for task in SEEN[:3]:
        index.put(_entry(task.input, task.reference or "").model_copy(update={"agent_id": agent}))
    seeds = StaticPrompts(SEEDS)
    store = connect(stack_settings.store())
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        _change_follow_and_roll_back(agent, cli, index, seeds, store, stack_settings)
    finally:
        sink.stop()


def _change_follow_and_roll_back(  # type: ignore[no-untyped-def]
    agent: str, cli, index: MemoryIndex, seeds: StaticPrompts, store, settings: Settings
) -> None:
    student = ScriptedBackend("student", lambda _c: "Lisbon")
    with PromptSubscriber(settings.kafka_config(), seeds).start() as prompts:
        runtime = Runtime(agent, student, student, prompts, memory=index)
        assert runtime.run(SEEN[0], "auto").memory_entries == []  # the seed's policy: off
        cli("memory", "policy", "--agent", agent, "--enabled", "--k", "1", "--force")
        assert prompts.wait_for(agent, "student", 1)
        assert prompts.snapshot(agent)["student"].memory == MemoryPolicy(enabled=True, k=1)
        assert prompts.snapshot(agent)["teacher"].version == 0
        assert len(runtime.run(SEEN[0], "auto").memory_entries) == 1
        cli("memory", "policy", "--agent", agent, "--disabled", "--force")
        assert prompts.wait_for(agent, "student", 2)
        assert runtime.run(SEEN[0], "auto").memory_entries == []
        refused = cli("memory", "policy", "--agent", agent, "--k", "2", code=2)
        assert "no held-out examples" in refused
        stored = lambda: [v.memory for v in prompt_history(store, agent, "student")]  # noqa: E731
        eventually(lambda: len(stored()) == 2, 60, "both versions stored", interval=0.5)
        # each change is made to the policy in use: --disabled keeps k=1
        assert stored() == [MemoryPolicy(enabled=True, k=1), MemoryPolicy(enabled=False, k=1)]
        restored = cli("prompts", "rollback", "--agent", agent, "--role", "student")
        assert "memory policy of v1 restored" in restored
        assert prompts.wait_for(agent, "student", 3)
        assert prompts.snapshot(agent)["student"].memory == MemoryPolicy(enabled=True, k=1)
        assert "k=1" in cli("prompts", "show", "--agent", agent)
