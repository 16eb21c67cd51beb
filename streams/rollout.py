"""The canary rollout controller's logic, free of Kafka: each agent's rollouts, their arms'
rewards, and the decision the sequential test supports, taken once.

The reward stream sends a :class:`RolloutObservation` for every ScoredTrace revision of a task
that took part in a rollout (``InteractionEvent.rollouts``), keyed by agent, on
``atlas-rewards-rollout-observations``; :func:`observe` folds it into the agent's
:class:`RolloutBook`:

* a first revision adds one reward to its arm (canary or production) of each rollout it names;
  a later revision replaces its earlier reward (the sum moves by the difference, no count
  changes), so each task counts once, at its latest reward, as in the memory's statistics;
  a revision after the first without its previous reward, or a reward that is not a finite
  number in [0, 1], is ignored;
* after each observation the rollout's arms go through :func:`streams.rollout_stats.decide`
  (an always-valid confidence sequence per arm: P(promoting a canary worse than production by
  more than the margin) <= alpha, at every look), and the wall clock bounds it too: a rollout
  still undecided ``max_duration_s`` after its first task is aborted, saying so when its
  canary arm saw nothing for that long (the clock is the traces' scoring time: a rollout
  that gets no scored task at all is only looked at again when one comes);
* a canary task whose trace also scored production's shadow answer (``production_reward``,
  with its own un-taught answer's ``baseline_reward``) is counted once more, as a pair, into
  the rollout's non-degradation check (:func:`streams.rollout_stats.degradation`): a canary
  shown to lose what production answers is rolled back even when the mean rewards cannot
  tell the arms apart, and a promotion waits while either share is under its minimum;
* a decision is final: the rollout is moved to ``decided`` (the last ``DECIDED_KEPT`` per
  agent), and a later observation of it (a late re-score, a replay after ``kill -9``) is
  ignored, so nothing is decided twice.

What a decision does (publish the canary as production, remove the label) is the stream's
(``streams/rollout_stream.py``); here it is a :class:`~schemas.rollouts.RolloutStatus` with the
figures. ``running`` statuses are emitted every ``report_every`` observations, for the chart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Id, RolloutArm, RolloutKind, ScoredTrace
from schemas.rollouts import RolloutStateName, RolloutStatus
from streams.rollout_config import RolloutConfig
from streams.rollout_stats import (
    ArmStats,
    Decision,
    Degradation,
    PairStats,
    RolloutState,
    decide,
    degradation,
    unusable,
)

DECIDED_KEPT = 100  # decided rollouts remembered per agent, so none is decided twice
VERDICT_STATE: dict[str, RolloutStateName] = {
    "promote": "promoted",
    "rollback": "rolled_back",
    "abort": "aborted",
}


class RolloutObservation(BaseModel):
    """One scored trace's part in rollouts, as the reward stream sends it (JSON, keyed by
    agent): ids, versions and rewards only, never texts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["rollout"] = "rollout"
    agent_id: Id
    trace_id: Id
    revision: int
    arms: list[RolloutArm]
    reward: float
    previous_reward: float | None = None
    at: float  # the trace's scoring time, seconds since the epoch
    baseline_reward: float | None = None  # the task's un-taught answer's score
    production_reward: float | None = None  # production's shadow answer's, on a canary task

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> RolloutObservation:
        try:
            return cls.model_validate(json.loads(value))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a rollout observation: {exc}") from None


def observation_of(trace: ScoredTrace, previous_reward: float | None) -> RolloutObservation | None:
    """The observation of a scored trace whose previous revision had ``previous_reward``;
    None when the task took part in no rollout."""
    if not trace.interaction.rollouts:
        return None
    return RolloutObservation(
        agent_id=trace.agent_id,
        trace_id=trace.trace_id,
        revision=trace.revision,
        arms=trace.interaction.rollouts,
        reward=trace.reward,
        previous_reward=previous_reward,
        at=trace.scored_at.timestamp(),
        baseline_reward=trace.baseline_reward,
        production_reward=trace.production_reward,
    )


class Rollout(BaseModel):
    """One running rollout: which versions, since when, its arms."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    role: str
    canary_version: int
    production_version: int
    kind: RolloutKind = "prompt"
    started_at: float
    last_canary_at: float | None = None  # the latest canary task's time; None: none yet
    observations: int = 0
    arms: RolloutState = Field(default_factory=RolloutState)
    pairs: PairStats = Field(default_factory=PairStats)


class RolloutBook(BaseModel):
    """An agent's rollouts, as the controller's changelog-backed table keeps them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    running: dict[str, Rollout] = Field(default_factory=dict)
    decided: dict[str, RolloutStateName] = Field(default_factory=dict)  # oldest first


def status_of(
    agent_id: str, rollout_id: str, rollout: Rollout, decision: Decision, paired: Degradation,
    state: RolloutStateName, reason: str, alpha: float, at: float,
) -> RolloutStatus:  # fmt: skip
    arms, pairs = rollout.arms, rollout.pairs
    return RolloutStatus(
        agent_id=agent_id,
        role=rollout.role,
        rollout_id=rollout_id,
        canary_version=rollout.canary_version,
        production_version=rollout.production_version,
        state=state,
        started_at=datetime.fromtimestamp(rollout.started_at, UTC),
        updated_at=datetime.fromtimestamp(at, UTC),
        canary_count=arms.canary.count,
        canary_mean=arms.canary.mean,
        production_count=arms.production.count,
        production_mean=arms.production.mean,
        lower=max(decision.lower, -1.0),
        upper=min(decision.upper, 1.0),
        alpha=alpha,
        reason=reason,
        kind=rollout.kind,
        paired_count=pairs.count,
        non_degradation=paired.non_degradation,
        non_degradation_upper=paired.non_degradation_upper,
        right_count=pairs.right,
        retention=paired.retention,
        retention_upper=paired.retention_upper,
    )


def observe(
    book: RolloutBook, seen: RolloutObservation, config: RolloutConfig
) -> tuple[RolloutBook, list[RolloutStatus], str]:
    """The book with ``seen`` counted, the statuses to publish (decisions, and ``running``
    reports every ``config.report_every`` observations) and why (for logs); ``book`` is not
    changed, and an ignored observation returns it as it is."""
    refused = unusable(seen.reward, seen.previous_reward, seen.revision)
    if refused is not None:
        return book, [], refused
    running, decided = dict(book.running), dict(book.decided)
    statuses: list[RolloutStatus] = []
    test = config.test
    for arm in seen.arms:
        if arm.rollout_id in decided:
            continue  # decided once, never again
        rollout = running.get(arm.rollout_id) or Rollout(
            role=arm.role,
            canary_version=arm.canary_version,
            production_version=arm.production_version,
            kind=arm.kind,
            started_at=seen.at,
        )
        stats: ArmStats = getattr(rollout.arms, arm.arm)
        arms = rollout.arms.model_copy(
            update={arm.arm: stats.counted(seen.reward, seen.previous_reward)}
        )
        rollout = rollout.model_copy(
            update={
                "arms": arms,
                "pairs": _paired(rollout.pairs, arm, seen, config),
                "observations": rollout.observations + 1,
                "last_canary_at": seen.at if arm.arm == "canary" else rollout.last_canary_at,
            }
        )
        decision = decide(arms, test)
        paired = degradation(rollout.pairs, config.non_degradation, test)
        state, reason = _verdict(decision, paired)
        if state == "running" and seen.at - rollout.started_at > config.max_duration_s:
            quiet = seen.at - (rollout.last_canary_at or rollout.started_at)
            why = (
                f"the canary arm got no traffic for {quiet:.0f} s"
                if quiet > config.max_duration_s
                else f"no decision in {config.max_duration_s:g} s"
            )
            state, reason = "aborted", f"{why}: {reason}"
        if state != "running":
            running.pop(arm.rollout_id, None)
            decided[arm.rollout_id] = state
            statuses.append(
                status_of(seen.agent_id, arm.rollout_id, rollout, decision, paired, state,
                          reason, test.alpha, seen.at)
            )  # fmt: skip
            continue
        running[arm.rollout_id] = rollout
        if rollout.observations % config.report_every == 0:
            statuses.append(
                status_of(seen.agent_id, arm.rollout_id, rollout, decision, paired, "running",
                          reason, test.alpha, seen.at)
            )  # fmt: skip
    while len(decided) > DECIDED_KEPT:
        del decided[next(iter(decided))]
    new = book.model_copy(update={"running": running, "decided": decided})
    done = [s for s in statuses if s.state != "running"]
    return new, statuses, f"{len(seen.arms)} arms counted, {len(done)} decided"


def _paired(
    pairs: PairStats, arm: RolloutArm, seen: RolloutObservation, config: RolloutConfig
) -> PairStats:
    """``pairs`` with ``seen`` counted when it is the first revision of a student canary task
    that scored production's shadow answer too (later revisions change no answer)."""
    if arm.arm != "canary" or arm.role != "student" or seen.previous_reward is not None:
        return pairs
    canary, production = seen.baseline_reward, seen.production_reward
    if canary is None or production is None or unusable(canary, production, 1) is not None:
        return pairs
    return pairs.counted(canary, production, config.non_degradation)


def _verdict(decision: Decision, paired: Degradation) -> tuple[RolloutStateName, str]:
    """The rollout's state and why: the sequential test's verdict, unless the paired tasks
    show the canary degrading (rolled back, whatever the means say) or hold its promotion."""
    state: RolloutStateName = VERDICT_STATE.get(decision.verdict, "running")
    if paired.rollback is not None and state != "rolled_back":
        return "rolled_back", f"{paired.rollback}; {decision.reason}"
    if state == "promoted" and paired.hold is not None:
        return "running", f"{paired.hold}; {decision.reason}"
    return state, decision.reason


def ended_by_operator(
    book: RolloutBook, agent_id: str, arm: RolloutArm, at: float, config: RolloutConfig
) -> tuple[RolloutBook, RolloutStatus]:
    """The book with a rollout the operator ended (its canary label removed) closed as
    aborted, so later observations of it are ignored, and its status with the figures so far."""
    rollout = book.running.get(arm.rollout_id) or Rollout(
        role=arm.role,
        canary_version=arm.canary_version,
        production_version=arm.production_version,
        kind=arm.kind,
        started_at=at,
    )
    running = {k: v for k, v in book.running.items() if k != arm.rollout_id}
    decided = {**book.decided, arm.rollout_id: "aborted"}
    why = "ended by an operator (the canary label was removed) before a decision"
    decision = decide(rollout.arms, config.test)
    paired = degradation(rollout.pairs, config.non_degradation, config.test)
    status = status_of(
        agent_id, arm.rollout_id, rollout, decision, paired, "aborted",
        f"{why}: {decision.reason}", config.test.alpha, at,
    )  # fmt: skip
    return book.model_copy(update={"running": running, "decided": decided}), status
