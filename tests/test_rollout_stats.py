"""The canary rollout's sequential test (streams/rollout_stats.py), without Kafka: clear cases
decide, the minimum and maximum samples hold, hostile rewards are refused, the state survives
JSON and merges, and peeking after every event keeps wrong promotions within alpha."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import numpy as np
import pytest
from pydantic import ValidationError

from streams.rollout_stats import (
    ArmStats,
    RolloutState,
    RolloutTestConfig,
    arm_bounds,
    decide,
    observe,
    radius,
)

CONFIG = RolloutTestConfig()


def state(canary: tuple[int, float], production: tuple[int, float]) -> RolloutState:
    """A state from (count, mean) per arm."""
    return RolloutState(
        canary=ArmStats(count=canary[0], total=canary[0] * canary[1]),
        production=ArmStats(count=production[0], total=production[0] * production[1]),
    )


def fed(pairs: list[tuple[str, float]]) -> RolloutState:
    current = RolloutState()
    for arm, reward in pairs:
        current, refused = observe(current, arm, reward)
        assert refused is None
    return current


def test_a_much_better_canary_is_promoted_from_observed_rewards() -> None:
    rng = random.Random(1)
    events = []
    for _ in range(3000):
        arm = "canary" if rng.random() < 0.1 else "production"
        events.append((arm, float(rng.random() < (0.9 if arm == "canary" else 0.5))))
    decision = decide(fed(events), CONFIG)
    assert decision.verdict == "promote", decision.reason
    assert decision.lower > 0 and "not worse" in decision.reason
    assert decision.canary_mean is not None and decision.production_mean is not None
    assert decision.canary_mean > decision.production_mean


def test_a_much_worse_canary_is_rolled_back() -> None:
    decision = decide(state((400, 0.3), (3600, 0.7)), CONFIG)
    assert decision.verdict == "rollback", decision.reason
    assert decision.upper < 0 and (decision.canary_count, decision.production_count) == (400, 3600)


def test_no_decision_before_min_samples_even_when_clear() -> None:
    clear = state((20, 1.0), (1000, 0.0))
    assert decide(clear, CONFIG).verdict == "extend"
    assert "fewer than 30" in decide(clear, CONFIG).reason
    assert decide(clear, RolloutTestConfig(min_samples=10)).verdict == "promote"


def test_max_samples_aborts_only_without_a_decision() -> None:
    config = RolloutTestConfig(max_samples=500)
    assert decide(state((499, 0.6), (4500, 0.6)), config).verdict == "extend"
    aborted = decide(state((500, 0.6), (4500, 0.6)), config)
    assert aborted.verdict == "abort" and "500 rewards per arm" in aborted.reason
    assert decide(state((500, 0.9), (4500, 0.5)), config).verdict == "promote"


def test_margin_is_non_inferiority() -> None:
    slightly_worse = state((20_000, 0.55), (20_000, 0.60))
    config = RolloutTestConfig(max_samples=50_000)
    assert decide(slightly_worse, config).verdict == "rollback"
    lenient = config.model_copy(update={"margin": 0.1})
    assert decide(slightly_worse, lenient).verdict == "promote"


def test_an_empty_rollout_extends_with_trivial_bounds() -> None:
    decision = decide(RolloutState(), CONFIG)
    assert decision.verdict == "extend"
    assert (decision.lower, decision.upper) == (-1.0, 1.0)
    assert decision.canary_mean is None and "n/a" in decision.reason
    assert arm_bounds(ArmStats(), CONFIG) == (0.0, 1.0) and math.isinf(radius(0, CONFIG))


@pytest.mark.parametrize(
    "reward",
    [math.nan, math.inf, -math.inf, -0.01, 1.01, 1e308, "0.5", None, True, b"1", [0.5],
     Decimal("0.5"), 1 + 0j, np.float64("nan")],
)  # fmt: skip
def test_hostile_rewards_are_refused_with_a_reason(reward: object) -> None:
    before = RolloutState()
    after, refused = observe(before, "canary", reward)
    assert after is before and refused and "reward" in refused
    assert decide(after, CONFIG).verdict == "extend"


@pytest.mark.parametrize("arm", ["", "Canary", "control", None, 1])
def test_unknown_arms_are_refused(arm: object) -> None:
    after, refused = observe(RolloutState(), arm, 0.5)  # type: ignore[arg-type]
    assert after == RolloutState() and refused and "unknown arm" in refused


def test_numeric_types_in_range_are_accepted() -> None:
    current = fed([("canary", 0), ("canary", 1), ("production", np.float32(0.5))])
    assert current.canary == ArmStats(count=2, total=1.0)
    assert current.production == ArmStats(count=1, total=0.5)


def test_state_round_trips_through_json_and_merges() -> None:
    rng = random.Random(7)
    rewards = [("canary" if rng.random() < 0.3 else "production", rng.random()) for _ in range(99)]
    whole = fed(rewards)
    assert RolloutState.model_validate_json(whole.model_dump_json()) == whole
    first, second = fed(rewards[:40]), fed(rewards[40:])
    for arm in ("canary", "production"):
        merged = getattr(first, arm).merged(getattr(second, arm))
        assert merged.count == getattr(whole, arm).count
        assert merged.total == pytest.approx(getattr(whole, arm).total)


@pytest.mark.parametrize(
    "text",
    [
        '{"canary": {"count": 2, "total": 2.5}}',
        '{"canary": {"count": -1, "total": 0}}',
        '{"canary": {"count": 2, "total": NaN}}',
        '{"canary": {"count": 2, "total": -0.5}}',
        '{"canary": {"count": 2, "total": 1, "sumsq": 1}}',
        '{"canary": {}, "baseline": {}}',
    ],
)
def test_invalid_states_are_rejected_on_load(text: str) -> None:
    with pytest.raises(ValidationError):
        RolloutState.model_validate_json(text)


@pytest.mark.parametrize(
    "fields",
    [{"alpha": 0}, {"alpha": 1}, {"alpha": math.nan}, {"margin": -0.1}, {"min_samples": 0},
     {"min_samples": 50, "max_samples": 40}, {"tuned_samples": 0}, {"beta": 0.2}],
)  # fmt: skip
def test_invalid_configs_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RolloutTestConfig.model_validate(fields)


def test_rho_makes_the_radius_tightest_at_tuned_samples() -> None:
    config = RolloutTestConfig(tuned_samples=800)
    best = radius(800, config)
    for factor in (0.5, 0.9, 1.1, 2.0):
        other = config.model_copy(update={"tuned_samples": round(800 * factor)})
        assert radius(800, other) > best
    assert radius(100, config) > radius(800, config) > radius(6400, config)


@pytest.mark.parametrize("canary_mean", [0.5, 0.47])
def test_peeking_after_every_event_keeps_wrong_promotions_within_alpha(
    canary_mean: float,
) -> None:
    """A canary no better than production, equal shares, a decision looked at after every
    event from the first: promotions stay within alpha (set high so that a bound too narrow
    would show) plus three binomial standard deviations."""
    config = RolloutTestConfig(alpha=0.2, min_samples=1, max_samples=150, tuned_samples=20)
    rng = np.random.default_rng(3)
    rollouts, events = 300, 300
    arms = rng.random((rollouts, events)) < 0.5
    coins = rng.random((rollouts, events))
    promoted = 0
    for arm_row, coin_row in zip(arms, coins, strict=True):
        current = RolloutState()
        for canary, coin in zip(arm_row, coin_row, strict=True):
            mean = canary_mean if canary else 0.5
            reward = float(coin < mean)
            current, _ = observe(current, "canary" if canary else "production", reward)
            verdict = decide(current, config).verdict
            if verdict != "extend":
                promoted += verdict == "promote"
                break
    tolerance = 3 * math.sqrt(config.alpha * (1 - config.alpha) / rollouts)
    assert promoted / rollouts <= config.alpha + tolerance
