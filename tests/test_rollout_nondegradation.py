"""Non-degradation on live traffic in a canary rollout (issue 17): a student canary task also
carries production's shadow answer, the reward stream scores both un-taught answers, and the
controller rolls back a canary that loses what production answers even when the mean rewards
cannot tell the arms apart, and holds a promotion while a share is under its minimum."""

from __future__ import annotations

import random

from rim.judges import ReferenceMatchJudge
from rim.reward import Rim
from schemas.codec import AvroCodec
from schemas.models import InteractionEvent, RolloutArm
from schemas.rollouts import RolloutStatus
from streams.processor import RewardProcessor
from streams.rollout import RolloutBook, RolloutObservation, observation_of, observe
from streams.rollout_config import RolloutConfig
from streams.rollout_stats import (
    NonDegradationConfig,
    PairStats,
    RolloutTestConfig,
    degradation,
)

AGENT = "agent-nd"
CONFIG = RolloutConfig(
    test=RolloutTestConfig(alpha=0.05, min_samples=20, tuned_samples=50), report_every=10
)


def seen(
    arm: str, reward: float, trace: str, baseline: float | None = None,
    production: float | None = None, previous: float | None = None, role: str = "student",
) -> RolloutObservation:  # fmt: skip
    return RolloutObservation.model_construct(  # construct: hostile numbers get through
        kind="rollout", agent_id=AGENT, trace_id=trace, revision=1 if previous is None else 2,
        reward=reward, previous_reward=previous, at=1000.0, baseline_reward=baseline,
        production_reward=production,
        arms=[RolloutArm(role=role, rollout_id="r-1", arm=arm, canary_version=2,
                         production_version=1)],
    )  # fmt: skip


def feed(
    book: RolloutBook, n: int, reward: dict[str, float], lost: float, seed: int = 1
) -> tuple[RolloutBook, list[RolloutStatus]]:
    """``n`` tasks split in two; rewards drawn per arm; each canary task pairs production's
    right answer with a canary answer lost with probability ``lost``."""
    rng = random.Random(seed)
    statuses: list[RolloutStatus] = []
    for i in range(n):
        arm = "canary" if rng.random() < 0.5 else "production"
        value = float(rng.random() < reward[arm])
        pair = {}
        if arm == "canary":
            pair = {"baseline": float(rng.random() >= lost), "production": 1.0}
        book, out, _ = observe(book, seen(arm, value, f"t-{seed}-{i}", **pair), CONFIG)
        statuses += out
    return book, statuses


def test_a_canary_losing_productions_answers_is_rolled_back_though_rewards_look_equal() -> None:
    book, statuses = feed(RolloutBook(), 400, {"canary": 0.6, "production": 0.6}, lost=0.35)
    [decided] = [s for s in statuses if s.state != "running"]
    assert decided.state == "rolled_back" and book.decided == {"r-1": "rolled_back"}
    assert decided.lower < 0 < decided.upper  # the means alone could not tell the arms apart
    assert decided.paired_count >= CONFIG.non_degradation.min_pairs
    assert decided.non_degradation is not None and decided.non_degradation < 0.8
    assert decided.non_degradation_upper is not None and decided.non_degradation_upper < 0.9
    assert decided.right_count == decided.paired_count  # production was right on every pair
    assert "non-degradation" in decided.reason and "below the minimum 0.9" in decided.reason
    codec = AvroCodec()  # the figures travel on atlas.rollouts.v1 and into ClickHouse
    assert codec.decode(codec.encode(decided), RolloutStatus) == decided


def test_a_better_canary_waits_while_it_loses_too_much_then_is_promoted() -> None:
    rewards = {"canary": 0.95, "production": 0.2}
    book, statuses = feed(RolloutBook(), 200, rewards, lost=0.0)
    assert [s.state for s in statuses if s.state != "running"] == ["promoted"]
    book, statuses = RolloutBook(), []
    # 3 lost of the first 12 pairs: a share of 0.75 is under 0.9 but not yet shown to be
    for i in range(12):
        obs = seen("canary", 1.0, f"p-{i}", baseline=0.0 if i < 3 else 1.0, production=1.0)
        book, out, _ = observe(book, obs, CONFIG)
        statuses += out
    book, more = feed(book, 300, rewards, lost=0.0, seed=3)
    held = [s for s in more if "promotion waits" in s.reason]
    assert held and all(s.state == "running" and s.lower > 0 for s in held)
    [decided] = [s for s in more if s.state != "running"]
    assert more.index(decided) > more.index(held[-1])
    assert decided.state == "promoted" and decided.non_degradation is not None
    assert decided.non_degradation >= 0.9 and decided.retention == decided.non_degradation
    assert held[0].non_degradation is not None and held[0].non_degradation < 0.9


def test_pairs_count_once_on_the_student_canary_and_never_from_bad_numbers() -> None:
    book = RolloutBook()
    for obs in (
        seen("canary", 0.5, "t-1", baseline=1.0, production=1.0),  # counted
        seen("canary", 0.7, "t-1", baseline=1.0, production=1.0, previous=0.5),  # re-score
        seen("production", 0.5, "t-2", baseline=1.0, production=1.0),  # no pair there
        seen("canary", 0.5, "t-3", baseline=1.0, production=1.0, role="teacher"),
        seen("canary", 0.5, "t-4", baseline=float("nan"), production=1.0),
        seen("canary", 0.5, "t-5", baseline=1.0, production=2.0),
        seen("canary", 0.5, "t-6", baseline=None, production=1.0),
        seen("canary", 0.5, "t-7", baseline=0.0, production=0.0),  # counted: a tie, not right
    ):
        book, _, _ = observe(book, obs, CONFIG)
    assert book.running["r-1"].pairs == PairStats(count=2, kept=2, right=1, retained=1)


def test_a_canary_as_good_as_the_minimum_is_rarely_rolled_back_by_the_check() -> None:
    """Peeking after every pair, a canary that keeps exactly the minimum share is rolled back
    by the always-valid bound in at most alpha / 2 of runs (Monte-Carlo, 200 runs)."""
    config, test = NonDegradationConfig(min_retention=0.0), RolloutTestConfig()
    rng, wrong = random.Random(7), 0
    for _ in range(200):
        pairs = PairStats()
        for _ in range(400):
            pairs = pairs.counted(float(rng.random() < 0.9), 1.0, config)
            if degradation(pairs, config, test).rollback is not None:
                wrong += 1
                break
    assert wrong / 200 <= test.alpha / 2


def test_the_reward_stream_scores_both_untaught_answers_and_sends_the_pair() -> None:
    processor = RewardProcessor(Rim([ReferenceMatchJudge()]))
    arm = RolloutArm(role="student", rollout_id="r-1", arm="canary", canary_version=2,
                     production_version=1)  # fmt: skip
    event = InteractionEvent(
        agent_id=AGENT, task_id="t", task_input="2+2?", reference="4", mode="auto",
        final_answer="4", baseline_answer="5", production_answer="4", rollouts=[arm],
    )  # fmt: skip
    [judgement] = processor.judge([event])
    outcome = processor.on_interaction(event, None, judgement)
    assert outcome.scored is not None
    assert (outcome.scored.baseline_reward, outcome.scored.production_reward) == (0.0, 1.0)
    observation = observation_of(outcome.scored, outcome.previous_reward)
    assert observation is not None
    assert (observation.baseline_reward, observation.production_reward) == (0.0, 1.0)
    book, _, _ = observe(RolloutBook(), observation, CONFIG)
    assert book.running["r-1"].pairs == PairStats(count=1, kept=0, right=1, retained=0)
