"""The statistics of a canary rollout, free of Kafka: an always-valid sequential comparison of
the canary arm's mean reward with the production arm's, and the decision it supports.

Method. Each arm gets a confidence sequence (CS) for its mean reward from Robbins' two-sided
normal mixture (Howard, Ramdas, McAuliffe, Sekhon 2021, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 49(2); the normal-mixture boundary). A
reward in [0, 1] is 1/2-sub-Gaussian, so for ``n`` rewards of mean ``mu`` with sum ``S_n``,
``v = n / 4`` and a mixing parameter ``rho > 0``,

    M_n = sqrt(rho / (v + rho)) * exp((S_n - n mu)^2 / (2 (v + rho)))

is the mixture over ``lambda ~ N(0, 1/rho)`` of the supermartingales
``exp(lambda (S_n - n mu) - lambda^2 v / 2)``, so by Ville's inequality, with ``a = alpha / 2``,

    P(exists n >= 1: |S_n / n - mu| >= r(n)) <= a,
    r(n) = sqrt(2 (v + rho) log(sqrt((v + rho) / rho) / a)) / n.

The arm's CS is ``[mean - r(n), mean + r(n)]`` clipped to [0, 1]. Both arms' CSs hold together
at every ``n`` with probability at least ``1 - alpha`` (a union bound), so
``[lo_canary - hi_production, hi_canary - lo_production]`` covers the true difference
``delta = mu_canary - mu_production`` at every look, whenever the looks happen, however the
arm sizes differ. Samples are unpaired (a hash split routes traffic), and nothing needs the
canary share. The guarantee needs only rewards in [0, 1] with a constant mean per arm given the
past (not Gaussian, not identically distributed); under drift that hits both arms, each CS
covers its arm's average mean over its own samples, which a hash split makes the same period.
Why this one: it holds for any bounded reward and at every peek, is a closed form, and its
state is a count and a sum per arm, which merge by addition. Its price: it assumes the worst
variance of a [0, 1] reward (1/4), so it needs more traffic than a variance-adaptive (empirical
Bernstein or betting) CS when rewards are dense and concentrated.

Tuning. ``rho`` sets where the boundary is tightest: it minimises ``r`` at ``n =
tuned_samples``, where ``rho = (tuned_samples / 4) / x`` and ``x`` solves
``x = 2 log(1/a) + log(1 + x)`` (setting the derivative of ``r`` in ``rho`` to zero). The CS is
valid for every ``rho``; the tuning only moves traffic spent between small and large effects.

Decision (:func:`decide`), with ``m = margin`` (non-inferiority margin, default 0):

* ``extend`` while an arm has fewer than ``min_samples`` rewards;
* ``promote`` when the CS's lower bound on ``delta`` is above ``-m``: P(promote) <= alpha
  whenever ``delta <= -m`` (with ``m = 0``: wrong promotions of a worse canary <= alpha);
* ``rollback`` when its upper bound is below ``-m``: P(rollback) <= alpha whenever
  ``delta >= -m``; and P(either decision is wrong) <= alpha together;
* ``abort`` once both arms have ``max_samples`` rewards without either: the maximum duration in
  traffic terms. The controller is meant to treat it as a rollback (the canary was not shown
  not to be worse) and owns the wall-clock limit, since this module reads no clock;
* ``extend`` otherwise.

Non-degradation (:func:`degradation`): on the canary's tasks that also carry production's
shadow answer, the share where the canary's un-taught answer scores at least production's and
the share of production's right answers it keeps, each with an always-valid upper bound: a
share shown under its minimum rolls the canary back, a share under it holds a promotion.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cache
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arm = Literal["canary", "production"]
Verdict = Literal["promote", "rollback", "extend", "abort"]


class RolloutTestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Error level: P(promoting a canary worse by more than margin) <= alpha, and"
        " the same for rolling back one that is not; alpha / 2 goes to each arm's CS.",
    )
    margin: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Non-inferiority margin in mean reward: promote once the canary is shown"
        " better than production minus this, roll back once shown worse than that.",
    )
    min_samples: int = Field(
        30, ge=1, description="No decision before each arm has this many rewards."
    )
    max_samples: int = Field(
        4000,
        ge=1,
        description="Give up (abort) once each arm has this many rewards without a decision:"
        " the maximum duration in traffic terms (with a 10% canary, the canary's count).",
    )
    tuned_samples: int = Field(
        1000,
        ge=1,
        description="Rewards per arm at which the mixture's boundary is tightest (sets rho);"
        " any value keeps the guarantee.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_samples > self.max_samples:
            raise ValueError("min_samples must not exceed max_samples")
        return self

    @property
    def rho(self) -> float:
        """The normal mixture's parameter, tightest at ``tuned_samples`` (module docstring)."""
        return _rho(self.alpha, self.tuned_samples)


@cache
def _rho(alpha: float, tuned_samples: int) -> float:
    # Cached on the values, not on the model: model_copy(update=...) would carry a stale copy.
    log_inv = math.log(2 / alpha)
    x = 2 * log_inv
    for _ in range(60):  # a contraction (slope 1 / (1 + x) < 1/3): converges in a few steps
        x = 2 * log_inv + math.log1p(x)
    return tuned_samples / 4 / x


class ArmStats(BaseModel):
    """One arm's rewards so far: all the test needs. Merges by addition (partitions, replays
    split in two); ``total <= count`` holds exactly in floating point for rewards in [0, 1]."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    count: int = Field(0, ge=0)
    total: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.total > self.count:
            raise ValueError(f"total {self.total} exceeds count {self.count}")
        return self

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def merged(self, other: ArmStats) -> ArmStats:
        return ArmStats(count=self.count + other.count, total=self.total + other.total)

    def counted(self, reward: float, previous: float | None) -> ArmStats:
        """These stats with a scored trace's revision: a first one (``previous`` None) adds
        one reward; a later one replaces its ``previous`` reward (the total moves by the
        difference, kept within [0, count]; no count changes), so each trace counts once, at
        its latest reward. Unchanged for a re-score on an arm with no reward yet (its first
        revision came before this arm was counted). Callers pass rewards that
        :func:`unusable` accepted."""
        if previous is None:
            return ArmStats(count=self.count + 1, total=min(self.total + reward, self.count + 1))
        if self.count == 0:
            return self
        total = min(max(self.total + reward - previous, 0.0), float(self.count))
        return ArmStats(count=self.count, total=total)


def unusable(reward: float | None, previous: float | None, revision: int) -> str | None:
    """Why a scored trace's revision cannot be counted (for logs), or None: a reward or
    previous reward that is not a finite number in [0, 1], or a revision after the first
    without its previous reward (a state kept before that was: counting it would count the
    trace twice)."""
    if not _in_unit(reward) or (previous is not None and not _in_unit(previous)):
        return f"reward {reward!r} (previous {previous!r}) ignored"
    if previous is None and revision > 1:
        return f"revision {revision} without its previous reward: ignored"
    return None


def _in_unit(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and 0.0 <= value <= 1.0


class RolloutState(BaseModel):
    """Both arms of one rollout; JSON through pydantic, for the controller's changelog."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    canary: ArmStats = Field(default_factory=ArmStats)
    production: ArmStats = Field(default_factory=ArmStats)


@dataclass(frozen=True)
class Decision:
    """A verdict with the figures behind it; ``lower``/``upper`` bound canary minus production."""

    verdict: Verdict
    reason: str
    canary_count: int
    production_count: int
    canary_mean: float | None
    production_mean: float | None
    lower: float
    upper: float


def radius(count: int, config: RolloutTestConfig) -> float:
    """Half-width ``r(n)`` of one arm's CS after ``count`` rewards (inf with none)."""
    if count <= 0:
        return math.inf
    v = count / 4
    rho = config.rho
    boundary = math.sqrt(2 * (v + rho) * math.log(math.sqrt((v + rho) / rho) / (config.alpha / 2)))
    return boundary / count


def arm_bounds(stats: ArmStats, config: RolloutTestConfig) -> tuple[float, float]:
    """The arm's CS for its mean reward, within [0, 1]."""
    if not stats.count:
        return 0.0, 1.0
    mean, half = stats.total / stats.count, radius(stats.count, config)
    return max(0.0, mean - half), min(1.0, mean + half)


def observe(state: RolloutState, arm: str, reward: object) -> tuple[RolloutState, str | None]:
    """The state with ``reward`` added to ``arm``, and None; or ``state`` unchanged and why the
    reward was refused: an unknown arm, a non-number (str, bool and None included), NaN, inf
    or a value outside [0, 1]. Never raises."""
    if arm not in ("canary", "production"):
        return state, f"unknown arm {arm!r}"
    if not isinstance(reward, numbers.Real) or isinstance(reward, bool):
        return state, f"reward {reward!r} is not a number"
    value = float(reward)
    if not _in_unit(value):
        return state, f"reward {value!r} is not a finite number in [0, 1]"
    stats: ArmStats = getattr(state, arm)
    updated = ArmStats(count=stats.count + 1, total=stats.total + value)
    return state.model_copy(update={arm: updated}), None


def decide(state: RolloutState, config: RolloutTestConfig) -> Decision:
    """The verdict the rewards so far support, at any look (module docstring for the rule and
    its guarantee). Never raises on a valid state."""
    canary, production = state.canary, state.production
    c_lo, c_hi = arm_bounds(canary, config)
    p_lo, p_hi = arm_bounds(production, config)
    lower, upper = c_lo - p_hi, c_hi - p_lo
    fewest = min(canary.count, production.count)
    figures = (
        f"canary {_fmt(canary.mean)} over {canary.count}, production"
        f" {_fmt(production.mean)} over {production.count}, difference in"
        f" [{lower:+.3f}, {upper:+.3f}] at alpha {config.alpha:g}"
    )
    verdict: Verdict
    if fewest < config.min_samples:
        verdict, why = "extend", f"fewer than {config.min_samples} rewards on an arm"
    elif lower > -config.margin:
        verdict, why = "promote", f"canary not worse by more than {config.margin:g}"
    elif upper < -config.margin:
        verdict, why = "rollback", f"canary worse by more than {config.margin:g}"
    elif fewest >= config.max_samples:
        verdict, why = "abort", f"{config.max_samples} rewards per arm without a decision"
    else:
        verdict, why = "extend", "no confident difference yet"
    return Decision(
        verdict,
        f"{why}: {figures}",
        canary.count,
        production.count,
        canary.mean,
        production.mean,
        lower,
        upper,
    )


def _fmt(mean: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f}"


class NonDegradationConfig(BaseModel):
    """Non-degradation on live traffic: on the canary's tasks, the canary student's un-taught
    answer against production's shadow answer to the same task (``production_answer``), both
    scored by the programmatic judges, as the held-out gate compares them
    (``trainer/evaluation.py``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_non_degradation: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of paired tasks where the canary's answer must score at least"
        " production's: rolled back once the share's always-valid upper bound is below it;"
        " promotion waits while the share itself is below it.",
    )
    min_retention: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of the paired tasks production answers right that the canary must"
        " still answer right (the same rule).",
    )
    success_reward: float = Field(
        0.5, ge=0, le=1, description="An answer scoring at least this is right."
    )
    min_pairs: int = Field(
        20, ge=1, description="No rollback on either share before it has this many tasks."
    )
    tolerance: float = Field(
        1e-6, ge=0, description="Score differences below this count as a tie, not a loss."
    )


class PairStats(BaseModel):
    """A rollout's paired tasks (canary arm, both un-taught answers scored): counts only."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    count: int = Field(0, ge=0)
    kept: int = Field(0, ge=0)  # the canary scored at least production's answer
    right: int = Field(0, ge=0)  # production's answer was right
    retained: int = Field(0, ge=0)  # ... and the canary's too

    def counted(self, canary: float, production: float, config: NonDegradationConfig) -> PairStats:
        """These counts with one task whose canary answer scored ``canary`` and production's
        ``production`` (finite numbers in [0, 1]: callers check with :func:`unusable`)."""
        right = production >= config.success_reward
        return PairStats(
            count=self.count + 1,
            kept=self.kept + (canary >= production - config.tolerance),
            right=self.right + right,
            retained=self.retained + (right and canary >= config.success_reward),
        )


@dataclass(frozen=True)
class Degradation:
    """What the paired tasks say: the shares with their upper bounds (None without tasks),
    and why the rollout must be rolled back, or why its promotion must wait (None: neither)."""

    non_degradation: float | None
    non_degradation_upper: float | None
    retention: float | None
    retention_upper: float | None
    rollback: str | None
    hold: str | None


def degradation(
    pairs: PairStats, config: NonDegradationConfig, test: RolloutTestConfig
) -> Degradation:
    """The non-degradation check. Each share has an always-valid upper bound from the same
    confidence sequence as an arm's mean (a share is the mean of 0/1 outcomes), so a canary
    whose true share meets the minimum is rolled back by it with probability at most
    alpha / 2 per share, at every look; holding a promotion only removes promotions, so it
    keeps :func:`decide`'s bound on wrong promotions."""
    shares = []
    for hits, n, minimum, name in (
        (pairs.kept, pairs.count, config.min_non_degradation, "non-degradation"),
        (pairs.retained, pairs.right, config.min_retention, "retention of right answers"),
    ):
        share = hits / n if n else None
        upper = arm_bounds(ArmStats(count=n, total=float(hits)), test)[1] if n else None
        shares.append((share, upper, n, minimum, name))
    rollback = hold = None
    for share, upper, n, minimum, name in shares:
        if share is None or upper is None:
            continue
        figures = f"{name} {share:.3f} over {n} paired tasks (upper bound {upper:.3f})"
        if n >= config.min_pairs and upper < minimum and rollback is None:
            rollback = f"{figures} below the minimum {minimum:g}"
        elif share < minimum and hold is None:
            hold = f"promotion waits: {figures}, under the minimum {minimum:g}"
    (nd, nd_upper, *_), (ret, ret_upper, *_) = shares
    return Degradation(nd, nd_upper, ret, ret_upper, rollback, hold)
