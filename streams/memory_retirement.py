"""Per-entry reward statistics and the retirement rule, free of Kafka: an entry whose use
lowers the reward of the tasks it matches is retired, with the figures.

Why a holdout. An entry is shown to the tasks most like it, so comparing its reward with the
agent's other tasks compares task families: a live run retired three good entries of a hard
template and kept a user's wrong edit. Agents therefore hold each entry back from a hashed
share of the tasks it matches (``holdout`` in ``configs/memory.yaml``; the event names those
in ``memory_held_back``), and an entry is judged only against the tasks it matched but was
kept from: the same kind of task, assigned at random, so the difference is the entry's.

The reward stream sends a :class:`MemoryUse` for every ScoredTrace it publishes (each
revision), on the same internal topic as the candidates and keyed by agent: the entries the
task was shown and those held back from it, the trace's reward and the reward of its previous
revision. :func:`record_use` folds it into the agent's :class:`~streams.memory.MemoryState`:

* each entry the memory still holds gets one use (shown) or one held-back task, with the
  trace's reward added to that arm's sum;
* a re-scored trace (``previous_reward`` set: human feedback, a replay) replaces its earlier
  reward: the sums move by the difference and no count changes, so each trace counts once, at
  its latest reward. A revision after the first whose previous reward is unknown (a state
  kept before this was) is ignored rather than counted twice;
* a reward or previous reward that is not a finite number in [0, 1] is ignored; an entry
  named both shown and held back counts as shown.

Retirement (:func:`retirement_of`), checked for the entries a trace named, after it is
counted: the two arms (shown, held back) go through the always-valid sequential test of
canary rollouts (:mod:`streams.rollout_stats`, a confidence sequence per arm), and an entry is
retired when the test says "rollback": shown worse than held back by more than
``retire_margin``, with at least ``retire_min_uses`` tasks on each arm. An entry that does not
lower the reward is retired with probability at most ``retire_alpha``, however often it is
checked. The price of that guarantee is traffic: the test assumes the worst variance, so an
entry that drops its tasks from 0.8 to 0.2 needs a few dozen tasks per arm. With a holdout of
0 nothing is held back and nothing is retired (``atlas memory forget`` still is).

The retired entry leaves the state (its output is remembered in ``MemoryState.retired`` so the
same answer is not taught again for the input) and is published again with
``retired_reason`` and the figures, which agents treat as removed. Known approximations: an
entry replaced by a different output starts its statistics afresh, and a later re-score of a
trace that named the earlier output moves the new output's sums by that trace's difference
(clamped to [0, count]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Id, ScoredTrace
from streams.memory import EntryFacts, MemoryCandidate, MemoryState
from streams.memory_config import MemoryConfig
from streams.rollout_stats import ArmStats, RolloutState, RolloutTestConfig, decide, unusable


class MemoryUse(BaseModel):
    """One scored trace's use of the memory, as the reward stream sends it (JSON, keyed by
    agent): ids and numbers only, never texts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["use"] = "use"
    agent_id: Id
    trace_id: Id
    revision: int
    used: list[Id] = Field(default_factory=list)
    held_back: list[Id] = Field(default_factory=list)
    reward: float
    previous_reward: float | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


def use_of(trace: ScoredTrace, previous_reward: float | None) -> MemoryUse:
    """The use message of a scored trace whose previous revision had ``previous_reward``."""
    return MemoryUse(
        agent_id=trace.agent_id,
        trace_id=trace.trace_id,
        revision=trace.revision,
        used=list(dict.fromkeys(trace.interaction.memory_entries)),
        held_back=list(dict.fromkeys(trace.interaction.memory_held_back)),
        reward=trace.reward,
        previous_reward=previous_reward,
    )


def memory_message(value: bytes) -> MemoryCandidate | MemoryUse:
    """A message of the internal memory topic: a use (``"kind": "use"``) or a candidate (no
    kind: candidates sent before uses existed read as before). ValueError if it is neither."""
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a memory message: {exc}") from None
    if isinstance(data, dict) and data.get("kind") == "use":
        return MemoryUse.model_validate(data)
    return MemoryCandidate.model_validate(data)


@dataclass(frozen=True)
class Retirement:
    """An entry the rule retired, with the figures that retired it."""

    entry_id: str
    uses: int
    reward_when_used: float
    held_back: int
    reward_when_held_back: float
    decision: str  # the test's verdict line, with the bounds on the difference

    @property
    def reason(self) -> str:
        return (
            f"mean reward {self.reward_when_used:.3f} over the {self.uses} tasks shown it is"
            f" below {self.reward_when_held_back:.3f} over the {self.held_back} similar tasks it"
            f" was held back from ({self.decision})"
        )


def retirement_test(config: MemoryConfig) -> RolloutTestConfig:
    """The sequential test's settings for entries: no maximum (an entry that is never shown
    worse stays)."""
    return RolloutTestConfig(
        alpha=config.retire_alpha,
        margin=config.retire_margin,
        min_samples=config.retire_min_uses,
        max_samples=2**62,
        tuned_samples=config.retire_tuned_uses,
    )


def retirement_of(entry_id: str, facts: EntryFacts, test: RolloutTestConfig) -> Retirement | None:
    """The retirement of an entry with these statistics, or None while it may stay."""
    if min(facts.uses, facts.held_back) < test.min_samples:
        return None  # the common case, decided without the test
    arms = RolloutState(
        canary=ArmStats(count=facts.uses, total=facts.reward_sum),
        production=ArmStats(count=facts.held_back, total=facts.held_back_sum),
    )
    decision = decide(arms, test)
    if decision.verdict != "rollback":
        return None
    return Retirement(
        entry_id,
        facts.uses,
        facts.reward_sum / facts.uses,
        facts.held_back,
        facts.held_back_sum / facts.held_back,
        f"shown minus held back in [{decision.lower:+.3f}, {decision.upper:+.3f}] at alpha"
        f" {test.alpha:g}: worse by more than {test.margin:g}",
    )


def _counted(facts: EntryFacts, shown: bool, reward: float, previous: float | None) -> EntryFacts:
    """``facts`` with a trace's revision counted on the shown or the held-back arm
    (:meth:`ArmStats.counted`: a first revision adds one, a re-score replaces its reward)."""
    if shown:
        arm = ArmStats(count=facts.uses, total=facts.reward_sum).counted(reward, previous)
        return facts.model_copy(update={"uses": arm.count, "reward_sum": arm.total})
    arm = ArmStats(count=facts.held_back, total=facts.held_back_sum).counted(reward, previous)
    return facts.model_copy(update={"held_back": arm.count, "held_back_sum": arm.total})


def record_use(
    state: MemoryState, use: MemoryUse, config: MemoryConfig
) -> tuple[MemoryState, list[Retirement], str]:
    """The state with ``use`` counted, the entries it retires and why (for logs); ``state``
    is not changed, and an ignored use returns it as it is."""
    refused = unusable(use.reward, use.previous_reward, use.revision)
    if refused is not None:
        return state, [], refused
    named = dict.fromkeys(use.used, True)  # entry id -> shown (True) or held back
    for entry_id in use.held_back:
        named.setdefault(entry_id, False)
    entries = dict(state.entries)
    for entry_id, shown in named.items():
        if entry_id in entries:
            entries[entry_id] = _counted(entries[entry_id], shown, use.reward, use.previous_reward)
    test = retirement_test(config)
    retirements = [
        retired
        for entry_id in named
        if entry_id in entries
        and (retired := retirement_of(entry_id, entries[entry_id], test)) is not None
    ]
    counted = f"{len(use.used)} shown, {len(use.held_back)} held back"
    if not retirements:
        return state.model_copy(update={"entries": entries}), [], counted
    retired = dict(state.retired)
    for retirement in retirements:
        retired.pop(retirement.entry_id, None)
        retired[retirement.entry_id] = entries.pop(retirement.entry_id).output
    while len(retired) > config.max_entries:
        del retired[next(iter(retired))]
    new = state.model_copy(update={"entries": entries, "retired": retired})
    return new, retirements, f"{counted}; {len(retirements)} retired"
