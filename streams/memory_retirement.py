"""Per-entry reward statistics and the retirement rule, free of Kafka: an entry whose use
correlates with lower reward is retired, with the figures.

The reward stream sends a :class:`MemoryUse` for every ScoredTrace it publishes (each
revision), on the same internal topic as the candidates and keyed by agent: the entry ids the
agent used for the task, the trace's reward and the reward of the trace's previous revision.
:func:`record_use` folds it into the agent's :class:`~streams.memory.MemoryState`:

* every trace adds one to the agent's trace count and its reward to the agent's sum; a trace
  that used entries also adds one use and its reward to each of them the memory still holds;
* a re-scored trace (``previous_reward`` set: human feedback, a replay) replaces its earlier
  reward: the sums move by the difference and no count changes, so each trace counts once, at
  its latest reward. A revision after the first whose previous reward is unknown (a state
  kept before this was) is ignored rather than counted twice;
* a reward or previous reward that is not a finite number in [0, 1] is ignored.

Retirement (:func:`retirement_of`), checked for the entries a trace used, after its use is
counted: "not used" are the agent's traces since the entry was made that did not use it (the
agent's count and sum now, less those when the entry was made, less its uses); the entry has
at least ``retire_min_uses`` uses and as many traces not using it, and its mean reward when
used is below the not-used mean by more than ``retire_margin``. Those traces include ones
that were shown other entries: with memory on for every task, an entry is judged against the
other entries of the same period, not against a no-memory baseline that stopped growing when
memory was turned on (which a live run showed let a user's wrong edit stay). The retired
entry leaves the state (its output is remembered in ``MemoryState.retired`` so the same
answer is not taught again for the input) and is published again with ``retired_reason`` and
the figures, which agents treat as removed.

Known approximations: an entry replaced by a different output starts its statistics afresh,
and a later re-score of a trace that used the earlier output moves the new output's sum by
that trace's difference (clamped to [0, uses]); statistics are checked when an entry is used,
not when only the baseline moves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Id, ScoredTrace
from streams.memory import EntryFacts, MemoryCandidate, MemoryState
from streams.memory_config import MemoryConfig


class MemoryUse(BaseModel):
    """One scored trace's use of the memory, as the reward stream sends it (JSON, keyed by
    agent): ids and numbers only, never texts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["use"] = "use"
    agent_id: Id
    trace_id: Id
    revision: int
    used: list[Id] = Field(default_factory=list)
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
    not_used: int
    reward_when_not_used: float
    margin: float

    @property
    def reason(self) -> str:
        return (
            f"mean reward when used {self.reward_when_used:.3f} over {self.uses} traces is"
            f" below {self.reward_when_not_used:.3f} over the {self.not_used} traces since it"
            f" was made that did not use it, by more than {self.margin:g}"
        )


def _valid(reward: float | None) -> bool:
    return reward is not None and math.isfinite(reward) and 0.0 <= reward <= 1.0


def _clamped(total: float, count: int) -> float:
    return min(max(total, 0.0), float(count))


def retirement_of(
    entry_id: str, facts: EntryFacts, state: MemoryState, config: MemoryConfig
) -> Retirement | None:
    """The retirement of an entry with these statistics, or None while it may stay."""
    needed = config.retire_min_uses
    not_used = state.traces - facts.traces_before - facts.uses
    if facts.uses < needed or not_used < needed:
        return None
    used_mean = facts.reward_sum / facts.uses
    not_used_sum = state.traces_reward_sum - facts.reward_before - facts.reward_sum
    unused_mean = _clamped(not_used_sum, not_used) / not_used
    if unused_mean - used_mean <= config.retire_margin:
        return None
    return Retirement(entry_id, facts.uses, used_mean, not_used, unused_mean, config.retire_margin)


def record_use(
    state: MemoryState, use: MemoryUse, config: MemoryConfig
) -> tuple[MemoryState, list[Retirement], str]:
    """The state with ``use`` counted, the entries it retires and why (for logs); ``state``
    is not changed, and an ignored use returns it as it is."""
    if not _valid(use.reward) or (
        use.previous_reward is not None and not _valid(use.previous_reward)
    ):
        return state, [], f"reward {use.reward!r} (previous {use.previous_reward!r}) ignored"
    replacing = use.previous_reward is not None
    if not replacing and use.revision > 1:
        return state, [], f"revision {use.revision} without its previous reward: ignored"
    delta = use.reward - (use.previous_reward or 0.0)
    used = list(dict.fromkeys(use.used))
    entries = dict(state.entries)
    count, total = state.traces, state.traces_reward_sum
    if replacing:
        total = _clamped(total + delta, count)
    else:
        count, total = count + 1, total + use.reward
    for entry_id in used:
        facts = entries.get(entry_id)
        if facts is None or (replacing and facts.uses == 0):
            continue  # not held any more, or its count started after this trace's use
        uses = facts.uses if replacing else facts.uses + 1
        reward_sum = _clamped(facts.reward_sum + (delta if replacing else use.reward), uses)
        entries[entry_id] = facts.model_copy(update={"uses": uses, "reward_sum": reward_sum})
    new = state.model_copy(update={"entries": entries, "traces": count, "traces_reward_sum": total})
    retirements = [
        retired
        for entry_id in used
        if entry_id in entries
        and (retired := retirement_of(entry_id, entries[entry_id], new, config)) is not None
    ]
    if not retirements:
        return new, [], f"{len(used)} entries used" if used else "no entry used"
    retired = dict(new.retired)
    for retirement in retirements:
        retired.pop(retirement.entry_id, None)
        retired[retirement.entry_id] = entries.pop(retirement.entry_id).output
    while len(retired) > config.max_entries:
        del retired[next(iter(retired))]
    new = new.model_copy(update={"entries": entries, "retired": retired})
    return new, retirements, f"{len(retirements)} of {len(used)} used entries retired"
