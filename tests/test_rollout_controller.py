"""The canary rollout controller without Kafka (streams/rollout.py, streams/rollout_stream.py):
arms counted once per task at their latest reward, a decision taken once and never again,
wall-clock aborts, an operator's removal, and what a decision publishes (the canary as
production, its label removed, signed)."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.codec import AvroCodec
from schemas.models import PromptVersion, RolloutArm
from schemas.rollouts import RolloutStatus
from schemas.signing import Signer, Verifier
from schemas.topics import PROMPTS, ROLLOUTS, key_of
from streams.engine import Batch
from streams.rollout import RolloutBook, RolloutObservation, ended_by_operator, observe
from streams.rollout_config import RolloutConfig
from streams.rollout_stats import RolloutTestConfig
from streams.rollout_stream import CanaryFollower, CanaryNotFollowed, rollout_stream
from tests.fakes import Msg

AGENT = "agent-c"
CONFIG = RolloutConfig(
    test=RolloutTestConfig(alpha=0.05, min_samples=20, tuned_samples=50), report_every=10
)


def seen(
    arm: str, reward: float, trace: str, revision: int = 1, previous: float | None = None,
    at: float = 1000.0, rollout: str = "r-1",
) -> RolloutObservation:  # fmt: skip
    return RolloutObservation.model_construct(  # construct: hostile numbers get through
        kind="rollout", agent_id=AGENT, trace_id=trace, revision=revision, reward=reward,
        previous_reward=previous, at=at,
        arms=[RolloutArm(role="student", rollout_id=rollout, arm=arm, canary_version=2,
                         production_version=1)],
    )  # fmt: skip


def run(
    book: RolloutBook, canary_p: float, production_p: float, n: int, seed: int = 1
) -> tuple[RolloutBook, list[RolloutStatus]]:
    rng = random.Random(seed)
    statuses: list[RolloutStatus] = []
    for i in range(n):
        arm = "canary" if rng.random() < 0.5 else "production"
        p = canary_p if arm == "canary" else production_p
        book, out, _ = observe(book, seen(arm, float(rng.random() < p), f"t-{i}"), CONFIG)
        statuses += out
    return book, statuses


def test_a_better_canary_is_promoted_once_and_a_worse_one_rolled_back() -> None:
    book, statuses = run(RolloutBook(), 0.95, 0.2, 200)
    decided = [s for s in statuses if s.state != "running"]
    assert [s.state for s in decided] == ["promoted"] and book.decided == {"r-1": "promoted"}
    first = decided[0]
    assert first.lower > 0 and min(first.canary_count, first.production_count) >= 20
    assert first.canary_mean is not None and first.canary_mean > 0.8
    running = [s for s in statuses if s.state == "running"]
    assert running and all(s.lower <= s.upper for s in running)  # the chart's line
    book, more = run(book, 0.0, 1.0, 100, seed=2)  # late observations of a decided rollout
    assert more == [] and book.running == {}
    _, statuses = run(RolloutBook(), 0.2, 0.95, 200)
    assert [s.state for s in statuses if s.state != "running"] == ["rolled_back"]


def test_equal_arms_are_never_promoted_or_rolled_back_in_a_short_run() -> None:
    book, statuses = run(RolloutBook(), 0.6, 0.6, 300)
    assert [s.state for s in statuses if s.state != "running"] == []
    assert book.running["r-1"].arms.canary.count + book.running["r-1"].arms.production.count == 300


def test_a_rescore_replaces_its_reward_and_bad_rewards_are_ignored() -> None:
    book, _, _ = observe(RolloutBook(), seen("canary", 1.0, "t-1"), CONFIG)
    book, _, _ = observe(book, seen("canary", 0.0, "t-1", 2, previous=1.0), CONFIG)
    arms = book.running["r-1"].arms
    assert (arms.canary.count, arms.canary.total) == (1, 0.0)
    for bad in (float("nan"), float("inf"), -0.5, 2.0):
        same, out, why = observe(book, seen("canary", bad, "t-2"), CONFIG)
        assert same is book and out == [] and "ignored" in why
    same, _, why = observe(book, seen("canary", 0.5, "t-3", revision=3), CONFIG)
    assert same is book and "without its previous reward" in why


def test_a_rollout_is_aborted_past_its_duration_or_without_canary_traffic() -> None:
    config = CONFIG.model_copy(update={"max_duration_s": 100.0})
    book, _, _ = observe(RolloutBook(), seen("production", 1.0, "t-1", at=0.0), config)
    book, out, _ = observe(book, seen("canary", 1.0, "t-2", at=50.0), config)
    assert out == []
    book, out, _ = observe(book, seen("production", 1.0, "t-3", at=101.0), config)
    assert [s.state for s in out] == ["aborted"] and "no decision in 100 s" in out[0].reason
    book, out, _ = observe(RolloutBook(), seen("production", 1.0, "t-1", at=0.0), config)
    book, out, _ = observe(book, seen("production", 1.0, "t-2", at=150.0), config)
    assert [s.state for s in out] == ["aborted"]
    assert "the canary arm got no traffic for 150 s" in out[0].reason
    ended, status = ended_by_operator(
        RolloutBook(), AGENT, seen("canary", 1, "t").arms[0], 5.0, CONFIG
    )
    assert ended.decided == {"r-1": "aborted"} and "ended by an operator" in status.reason


def canary(version: int = 2, rollout: str = "r-1") -> PromptVersion:
    return PromptVersion(
        agent_id=AGENT, role="student", version=version, parent_version=1, text="be exact",
        source="manual", label="canary", rollout_id=rollout, traffic_share=0.5,
    )  # fmt: skip


def test_the_stream_publishes_a_decision_and_its_effect_once_signed() -> None:
    codec = AvroCodec()
    signer = Signer(Ed25519PrivateKey.generate())
    follower = CanaryFollower({}, codec)
    follower._apply(key_of(canary()), codec.encode(canary()))
    table, handle = rollout_stream(CONFIG, codec, follower, signer)
    table.partitions[0] = {}
    rng = random.Random(3)
    messages = []
    for i in range(200):
        arm = "canary" if i % 2 else "production"
        reward = float(rng.random() < (0.95 if arm == "canary" else 0.1))
        messages.append(Msg(seen(arm, reward, f"t-{i}").to_bytes(), AGENT.encode(), i))
    batch = Batch()
    handle(messages, batch)  # type: ignore[arg-type]
    decided = [
        codec.decode(o.value or b"", RolloutStatus)
        for o in batch.outputs
        if o.topic == ROLLOUTS and codec.decode(o.value or b"", RolloutStatus).state != "running"
    ]
    assert [s.state for s in decided] == ["promoted"]
    prompts = [o for o in batch.outputs if o.topic == PROMPTS]
    assert [(o.key, o.value is None) for o in prompts] == [
        (f"{AGENT}/student".encode(), False), (f"{AGENT}/student@canary".encode(), True),
    ]  # fmt: skip
    production = codec.decode(prompts[0].value or b"", PromptVersion)
    assert (production.version, production.label, production.text) == (2, "production", "be exact")
    assert production.rollout_id is None and production.traffic_share is None
    verifier = Verifier(signer.public_key())
    for o in prompts:  # agents that verify accept both (raises if not)
        verifier.check(PROMPTS, o.key, o.value, o.headers)
    # a decision whose canary this worker does not follow yet is retried, never guessed
    table2, handle2 = rollout_stream(CONFIG, codec, CanaryFollower({}, codec))
    table2.partitions[0] = {}
    with pytest.raises(CanaryNotFollowed):
        handle2(messages, Batch())  # type: ignore[arg-type]


def test_an_operator_removal_ends_the_rollout_and_publishes_nothing_on_prompts() -> None:
    codec = AvroCodec()
    follower = CanaryFollower({}, codec)
    follower._apply(key_of(canary()), codec.encode(canary()))
    follower._apply(f"{AGENT}/student@canary".encode(), None)  # `atlas rollout abort`
    assert follower.ended == {"r-1"}
    table, handle = rollout_stream(CONFIG, codec, follower)
    table.partitions[0] = {}
    batch = Batch()
    handle([Msg(seen("canary", 1.0, "t-1").to_bytes(), AGENT.encode(), 0)], batch)  # type: ignore[list-item]
    states = [
        codec.decode(o.value or b"", RolloutStatus).state
        for o in batch.outputs
        if o.topic == ROLLOUTS
    ]
    assert states == ["aborted"] and not [o for o in batch.outputs if o.topic == PROMPTS]
    batch = Batch()
    handle([Msg(seen("canary", 1.0, "t-2").to_bytes(), AGENT.encode(), 1)], batch)  # type: ignore[list-item]
    assert [o.topic for o in batch.outputs] == [table.changelog]  # closed: nothing again


def test_a_queued_candidate_starts_as_the_next_canary_when_the_rollout_is_decided() -> None:
    codec = AvroCodec()
    follower = CanaryFollower({}, codec)
    queued = canary(3).model_copy(update={"label": "queued", "rollout_id": None})
    for version in (canary(), queued):
        follower._apply(key_of(version), codec.encode(version))
    table, handle = rollout_stream(CONFIG, codec, follower)
    table.partitions[0] = {}
    messages = [
        Msg(seen("canary" if i % 2 else "production", float(i % 2 == 0), f"t-{i}").to_bytes(),
            AGENT.encode(), i)
        for i in range(120)
    ]  # fmt: skip  # canary always wrong, production always right: rolled back
    batch = Batch()
    handle(messages, batch)  # type: ignore[arg-type]
    prompts = [(o.key, o.value) for o in batch.outputs if o.topic == PROMPTS]
    assert [(key, value is None) for key, value in prompts] == [
        (f"{AGENT}/student@canary".encode(), True),  # the rolled-back canary's label removed
        (f"{AGENT}/student@canary".encode(), False),  # the queued candidate is the canary now
        (f"{AGENT}/student@queued".encode(), True),
    ]
    started = codec.decode(prompts[1][1] or b"", PromptVersion)
    assert (started.version, started.label, started.traffic_share) == (3, "canary", 0.5)
    assert started.rollout_id not in (None, "r-1")
