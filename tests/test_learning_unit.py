"""The learning engine's logic with scripted models: the gate's rule, leak-free splits, GEPA
finding a better prompt and the gate rejecting an overfit one, the automatic retrain policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from atlas.settings import PROJECT_CONFIGS
from rim.config import build_rim, load_rim_config
from schemas.codec import AvroCodec
from schemas.models import ScoredTrace
from schemas.topics import DEADLETTER, POLICY_OBSERVATIONS, TRIGGERS
from store.queries import TrainingTrace
from streams.engine import Batch
from streams.policy_stream import AGENTS_CHANGELOG, policy_stream
from streams.retrain_policy import (
    AgentRewardState,
    Observation,
    RetrainPolicy,
    RetrainPolicyConfig,
)
from tests.factories import interaction, scored
from tests.fakes import Msg, ScriptedTaskWorld
from trainer.datasets import DatasetConfig, build_splits, split_of
from trainer.evaluation import GateConfig, PromptEvaluator, gate
from trainer.gepa_config import GepaConfig
from trainer.gepa_engine import evolve_prompts, reflection_lm
from trainer.grpo_config import GrpoConfig

SEEDS = {"student": "You are a helpful assistant.", "teacher": "You are a reviewer."}


def test_gate_publishes_only_a_real_non_degrading_gain() -> None:
    config = GateConfig(margin=0.01, min_non_degradation=0.97)
    assert gate([1, 1, 1, 0], [1, 0, 1, 0], config).passed
    worse = gate([0, 0, 1, 0], [1, 0, 1, 0], config)
    assert not worse.passed and "mean reward 0.250 < production 0.500" in worse.reason
    # a higher mean bought by breaking examples that used to work is still refused
    trade = gate([1, 1, 1, 0] * 10, [1, 0, 0, 1] * 10, config)
    assert trade.candidate_reward > trade.current_reward
    assert not trade.passed and trade.non_degradation == 0.75
    assert not gate([0.5] * 4, [0.5] * 4, config).passed  # no gain, no publish


def test_gate_refuses_to_break_what_a_weak_production_gets_right() -> None:
    """The arithmetic case of the offline model (CALIBRATION.md): bare answers earn the format
    reward on 54 wrong answers and lose the 6 right ones. The mean rises and 90% of examples
    are no worse, but everything that worked is broken."""
    config = GateConfig(min_non_degradation=0.9, min_retention=0.9)
    production, bare = [0.8] * 6 + [0.0] * 54, [0.2] * 60
    broken = gate(bare, production, config)
    assert broken.candidate_reward > broken.current_reward and broken.non_degradation == 0.9
    assert not broken.passed and broken.retention == 0.0
    assert "keeps 0.000 of the 6 examples production gets right" in broken.reason
    # the extraction case: right but wordy -> right and bare, 3 of 60 copy a wrong city
    wordy, shown = [0.8] * 60, [1.0] * 57 + [0.2] * 3
    kept = gate(shown, wordy, config)
    assert kept.passed and kept.retention == 0.95 and "keeps 0.950 of 60 right" in kept.reason
    assert gate([0.2] * 4, [0.0] * 4, config).retention is None  # nothing right to keep


def test_trigger_params_override_nested_knobs_of_both_job_kinds_and_refuse_typos() -> None:
    grpo = GrpoConfig().with_overrides(12, {"dataset.heldout_size": "60", "role": "student"})
    assert (grpo.steps, grpo.dataset.heldout_size, grpo.role) == (12, 60, "student")
    gepa = GepaConfig().with_overrides(None, {"gate.min_retention": "0.8"})
    assert gepa.gate.min_retention == 0.8 and gepa.budget == GepaConfig().budget
    for bad in ({"dataset.heldout": "60"}, {"dataset": "60"}, {"nope.steps": "1"}):
        with pytest.raises(ValueError, match="unknown GRPO setting"):
            GrpoConfig().with_overrides(None, bad)
    with pytest.raises(ValueError, match="role"):
        GrpoConfig().with_overrides(None, {"role": "critic"})


def _trace(i: int, text: str, reference: str | None, edit: str | None) -> TrainingTrace:
    return TrainingTrace(
        f"t{i}", f"task{i}", "extraction", text, reference, "answer", 0.5, None, edit, ""
    )


def test_splits_never_share_an_input_and_edits_become_references() -> None:
    config = DatasetConfig(train_size=500, validation_size=500, heldout_size=500)
    traces = [_trace(i, f"Where is parcel {i} going?", None, f"City{i}") for i in range(60)]
    traces += [_trace(100, "Where is parcel 1 going?", "Oslo", None)]  # a duplicate input
    traces += [_trace(101, "No reference, no edit", None, None)]
    splits = build_splits(traces, config, families=["arithmetic"])
    inputs = {
        name: {" ".join(e.task.input.split()) for e in getattr(splits, name)}
        for name in ("train", "validation", "heldout")
    }
    assert not inputs["train"] & inputs["heldout"]
    assert not inputs["validation"] & inputs["heldout"]
    assert not inputs["train"] & inputs["validation"]
    for name, texts in inputs.items():
        assert all(split_of(t, config) == name for t in texts)
    edited = [e for e in splits.train + splits.validation + splits.heldout if e.source == "trace"]
    assert len(edited) == 60 and all(e.task.reference == e.user_edit for e in edited)
    assert "No reference, no edit" not in set().union(*inputs.values())
    assert {e.task.family for e in splits.heldout} == {"extraction", "arithmetic"}


def _evolve(world: ScriptedTaskWorld, config: GepaConfig):  # type: ignore[no-untyped-def]
    rim = build_rim(load_rim_config(PROJECT_CONFIGS))
    splits = build_splits([], config.dataset, families=["arithmetic"])
    evaluator = PromptEvaluator("unit", world.student, world.student, rim, "auto", config.limits)
    return evolve_prompts(SEEDS, splits, evaluator, reflection_lm(world.reflection, config), config)


def test_gepa_finds_the_better_prompt_and_the_gate_passes_it() -> None:
    config = GepaConfig(budget=30, eval_mode="auto")
    outcome = _evolve(ScriptedTaskWorld(), config)
    assert outcome.changed_roles == ["student"] and "MAGIC" in outcome.best["student"]
    assert outcome.best["teacher"] == SEEDS["teacher"]
    assert outcome.decision.passed, outcome.decision.reason
    assert outcome.decision.candidate_reward > outcome.decision.current_reward + 0.3
    assert outcome.metric_calls >= config.budget  # GEPA spent its budget, then the gate ran


def test_an_overfit_prompt_that_wins_on_training_data_is_rejected() -> None:
    dataset = DatasetConfig()
    # with the keyword, right on everything GEPA sees, wrong on every held-out input
    world = ScriptedTaskWorld(fails_with_keyword=lambda text: split_of(text, dataset) == "heldout")
    outcome = _evolve(world, GepaConfig(budget=30, eval_mode="auto", dataset=dataset))
    assert "MAGIC" in outcome.best["student"] and outcome.validation_best == 1.0
    assert not outcome.decision.passed
    assert outcome.decision.candidate_reward < outcome.decision.current_reward


def _scored(agent: str, reward: float, revision: int = 1) -> ScoredTrace:
    import random

    trace = scored(interaction(random.Random(0), agent), random.Random(0), revision)
    return trace.model_copy(update={"reward": reward})


def test_policy_fires_once_per_cause_and_respects_the_cooldown() -> None:
    policy = RetrainPolicy(
        RetrainPolicyConfig(window=10, drop_margin=0.2, every_n_traces=0, cooldown_s=60)
    )
    state, now, fired = AgentRewardState(), datetime(2026, 11, 25, tzinfo=UTC), []
    rewards = [0.8] * 20 + [0.3] * 40  # one drop, then a long flat low stretch
    for i, reward in enumerate(rewards):
        state, trigger = policy.observe(state, _scored("a", reward), now + timedelta(seconds=i))
        if trigger:
            fired.append((i, trigger))
    assert len(fired) == 1
    index, trigger = fired[0]
    assert 20 < index < 30 and trigger.kind == "gepa" and trigger.requested_by == "policy"
    assert "fell below the reference 0.800" in trigger.reason
    assert trigger.window_end - trigger.window_start == timedelta(hours=24)


def test_policy_counts_new_traces_only_and_debounces() -> None:
    policy = RetrainPolicy(RetrainPolicyConfig(window=5, every_n_traces=20, cooldown_s=100))
    state, start, fired = AgentRewardState(), datetime(2026, 11, 25, tzinfo=UTC), []
    for i in range(100):
        revision = 2 if i % 2 else 1  # every other event is a feedback revision
        state, trigger = policy.observe(
            state, _scored("a", 0.5, revision), start + timedelta(seconds=i)
        )
        if trigger:
            fired.append(i)
    # 20 first revisions take 40 events; the cooldown (100 s) then holds every later cause
    assert fired == [38]
    state, trigger = policy.observe(state, _scored("a", 0.5), start + timedelta(seconds=200))
    assert trigger is not None and "new scored traces" in trigger.reason


def test_a_policy_observation_round_trips_and_garbage_is_refused() -> None:
    seen = Observation("agent-7", 2, 0.25)
    assert Observation.from_message(b"agent-7", seen.to_bytes()) == seen
    for key, value in [
        (b"agent-7", b"not json"),
        (b"agent-7", b"[1]"),
        (b"agent-7", b'[1, "NaN"]'),
        (b"agent-7", b"[0, 0.5]"),
        (b"", b"[1, 0.5]"),
        (b"\xff", b"[1, 0.5]"),
    ]:
        with pytest.raises(ValueError, match="not a policy observation"):
            Observation.from_message(key, value)


def test_the_policy_stream_writes_each_agents_state_once_per_batch_as_one_by_one() -> None:
    """A batch of observations moves each agent's state as observing them one by one does,
    writes it to the changelog once, sends the trigger it fires, and dead-letters a bad
    observation without stopping the rest."""
    config = RetrainPolicyConfig(window=5, every_n_traces=8, cooldown_s=0)
    table, handle = policy_stream(RetrainPolicy(config), AvroCodec())
    table.partitions[0] = {}
    seen = [Observation(agent, 1, 0.1 * (i % 7)) for i in range(20) for agent in ("a", "b")]
    messages = [
        Msg(o.to_bytes(), o.agent_id.encode(), i, POLICY_OBSERVATIONS) for i, o in enumerate(seen)
    ]
    messages.insert(3, Msg(b"[1, NaN]", b"a", 99, POLICY_OBSERVATIONS))
    batch = Batch()
    handle(messages, batch)  # type: ignore[arg-type]
    by_topic: dict[str, list[bytes | None]] = {}
    for output in batch.outputs:
        by_topic.setdefault(output.topic, []).append(output.key)
    assert sorted(by_topic[AGENTS_CHANGELOG]) == [b"a", b"b"]  # one entry per agent
    assert by_topic[DEADLETTER] == [POLICY_OBSERVATIONS.encode()]
    policy, triggers = RetrainPolicy(config), 0
    for agent in ("a", "b"):
        state = AgentRewardState()
        for observation in (o for o in seen if o.agent_id == agent):
            state, trigger = policy.observe(state, observation)
            triggers += trigger is not None
        stored = AgentRewardState.model_validate_json(table.get(0, agent.encode()) or b"")
        assert stored.model_dump(exclude={"last_trigger_at"}) == state.model_dump(
            exclude={"last_trigger_at"}
        )
    assert triggers == len(by_topic[TRIGGERS]) == 6  # 3 per agent: every 8 new traces
