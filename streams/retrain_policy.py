"""When to retrain an agent automatically, from its stream of scored traces.

Two causes fire a RetrainTrigger: the agent's rolling mean reward falls ``drop_margin`` below
its reference level, or ``every_n_traces`` new traces were scored since its last trigger.
Debounced: a trigger resets the reference and the count, and no second trigger for the same
agent fires within ``cooldown_s`` whatever the cause, so one cause gives one trigger.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import JobKind, RetrainTrigger


class RetrainPolicyConfig(BaseModel):
    enabled: bool = Field(True, description="Off: the reward worker never triggers on its own.")
    kind: JobKind = Field("gepa", description="Which job an automatic trigger asks for.")
    window: int = Field(50, ge=2, description="Rewards in the rolling mean.")
    drop_margin: float = Field(
        0.1, gt=0, le=1, description="Trigger when the rolling mean falls this far below reference."
    )
    every_n_traces: int = Field(
        500, ge=0, description="Trigger after this many newly scored traces (0: never)."
    )
    cooldown_s: float = Field(600.0, ge=0, description="No second trigger within this time.")
    data_window_hours: float = Field(24.0, gt=0, description="The trigger's data window.")


class AgentRewardState(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    recent: list[float] = Field(default_factory=list)
    reference: float | None = None
    new_traces: int = 0
    last_trigger_at: datetime | None = None


class Scored(Protocol):
    """What the policy reads of a scored trace (a ScoredTrace has it)."""

    @property
    def agent_id(self) -> str: ...
    @property
    def revision(self) -> int: ...
    @property
    def reward(self) -> float: ...


class Observation(NamedTuple):
    """The part of a scored trace the policy needs, as the reward stream sends it to the
    policy (keyed by agent, value ``[revision, reward]`` in JSON): a dozen bytes instead of the
    whole trace read back and decoded."""

    agent_id: str
    revision: int
    reward: float

    def to_bytes(self) -> bytes:
        return json.dumps([self.revision, self.reward]).encode()

    @classmethod
    def from_message(cls, key: bytes, value: bytes) -> Observation:
        """ValueError if the message is not an observation."""
        try:
            revision, reward = json.loads(value)
            observed = cls(key.decode(), int(revision), float(reward))
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a policy observation: {value[:80]!r}") from exc
        if not observed.agent_id or observed.revision < 1 or not math.isfinite(observed.reward):
            raise ValueError(f"not a policy observation: {key[:80]!r} {value[:80]!r}")
        return observed


class RetrainPolicy:
    def __init__(self, config: RetrainPolicyConfig):
        self.config = config

    def observe(
        self, state: AgentRewardState, scored: Scored, now: datetime | None = None
    ) -> tuple[AgentRewardState, RetrainTrigger | None]:
        """The agent's new state after ``scored``, and the trigger it fires, if any. Every
        revision moves the rolling mean (feedback can lower a reward); only first revisions
        count as new traces."""
        config = self.config
        now = now or datetime.now(UTC)
        recent = [*state.recent, scored.reward][-config.window :]
        new_traces = state.new_traces + (scored.revision == 1)
        state = state.model_copy(update={"recent": recent, "new_traces": new_traces})
        if len(recent) < config.window:
            return state, None
        mean = sum(recent) / len(recent)
        if state.reference is None:
            return state.model_copy(update={"reference": mean}), None
        reason = None
        if mean < state.reference - config.drop_margin:
            reason = (
                f"rolling reward {mean:.3f} over the last {len(recent)} fell below the reference"
                f" {state.reference:.3f} by more than {config.drop_margin:.2f}"
            )
        elif config.every_n_traces and new_traces >= config.every_n_traces:
            reason = f"{new_traces} new scored traces since the last trigger"
        cooling = (
            state.last_trigger_at is not None
            and (now - state.last_trigger_at).total_seconds() < config.cooldown_s
        )
        if reason is None or cooling or not config.enabled:
            return state, None
        trigger = RetrainTrigger(
            kind=config.kind,
            agent_id=scored.agent_id,
            reason=reason,
            requested_by="policy",
            window_start=now - timedelta(hours=config.data_window_hours),
            window_end=now,
        )
        reset = state.model_copy(
            update={"reference": mean, "new_traces": 0, "last_trigger_at": now}
        )
        return reset, trigger
