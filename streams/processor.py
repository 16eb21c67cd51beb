"""The reward processor's logic, free of Faust: per-trace state in, ScoredTraces out.

An interaction yields revision 1 (judges run once, batched); each feedback event yields the
next revision with the human signal merged into the stored judge scores (judges are not run
again). Feedback that arrives before its interaction waits in the state, bounded in count and
age. Replays are idempotent: an event already applied (same event_id) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from rim.reward import Reward, Rim
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore, ScoredTrace, utcnow

RESCORE = "atlas.rescore"  # metadata key of an interaction re-sent by `atlas replay`
AFTER_REVISION = "atlas.after_revision"


class TraceState(BaseModel):
    """What the changelog-backed table keeps per trace_id."""

    interaction: InteractionEvent | None = None
    judge_scores: list[JudgeScore] = Field(default_factory=list)
    baseline_reward: float | None = None
    feedback: list[FeedbackEvent] = Field(default_factory=list)
    revision: int = 0
    first_seen: float = Field(default_factory=time.time)

    @property
    def pending(self) -> bool:
        return self.interaction is None and bool(self.feedback)


@dataclass
class Outcome:
    trace_id: str
    state: TraceState
    scored: ScoredTrace | None = None
    rejected: str | None = None  # why the input is dead-lettered instead


class RewardProcessor:
    def __init__(self, rim: Rim, max_pending_feedback: int = 50, pending_ttl_s: float = 3600.0):
        self.rim = rim
        self.max_pending_feedback = max_pending_feedback
        self.pending_ttl_s = pending_ttl_s

    def _scored(self, state: TraceState, reward: Reward) -> ScoredTrace:
        assert state.interaction is not None
        return ScoredTrace(
            trace_id=state.interaction.trace_id,
            agent_id=state.interaction.agent_id,
            revision=state.revision,
            scored_at=utcnow(),
            interaction=state.interaction,
            reward=reward.score,
            judge_scores=reward.judge_scores,
            rationale=reward.rationale,
            uncertainty=reward.uncertainty,
            escalated=reward.escalated,
            human_score=reward.human_score,
            feedback_count=len(state.feedback),
            baseline_reward=state.baseline_reward,
            errors=reward.errors,
        )

    def on_interactions(
        self, batch: Sequence[tuple[InteractionEvent, TraceState | None]]
    ) -> list[Outcome]:
        """One outcome per input, in order; every new interaction is scored in one RIM call.
        A trace seen twice in the batch (a replay) is scored once."""
        states: dict[str, TraceState] = {}
        outcomes: list[Outcome | None] = [None] * len(batch)
        fresh: list[int] = []
        for i, (event, stored) in enumerate(batch):
            if not event.trace_id.strip():
                outcomes[i] = Outcome(
                    event.trace_id, TraceState(), rejected="interaction without a trace_id"
                )
                continue
            state = states.setdefault(event.trace_id, stored or TraceState())
            if RESCORE in event.metadata:
                # `atlas replay`: score the stored trace again with today's judges, as the
                # next revision after both the table's and the store's latest.
                floor = int(event.metadata.get(AFTER_REVISION, "0") or 0)
                state.revision = max(state.revision, floor)
                state.interaction = event.model_copy(
                    update={
                        "metadata": {
                            k: v
                            for k, v in event.metadata.items()
                            if k not in (RESCORE, AFTER_REVISION)
                        }
                    }
                )
                fresh.append(i)
                continue
            if state.interaction is not None:
                duplicate = state.interaction.event_id == event.event_id
                reason = (
                    None
                    if duplicate
                    else (
                        f"trace {event.trace_id} already has interaction "
                        f"{state.interaction.event_id}"
                    )
                )
                outcomes[i] = Outcome(event.trace_id, state, rejected=reason)
                continue
            state.interaction = event
            fresh.append(i)
        if fresh:
            events = [states[batch[i][0].trace_id].interaction for i in fresh]
            judged = self.rim.judge_many(events)
            baselines = self.rim.baseline_rewards(events)
            for i, event, scores, baseline in zip(fresh, events, judged, baselines, strict=True):
                assert event is not None
                state = states[event.trace_id]
                state.judge_scores, state.baseline_reward = scores, baseline
                state.revision += 1
                reward = self.rim.combine(event, scores, state.feedback)
                outcomes[i] = Outcome(event.trace_id, state, self._scored(state, reward))
        return [o for o in outcomes if o is not None]

    def on_feedback(self, event: FeedbackEvent, state: TraceState | None) -> Outcome:
        state = state or TraceState()
        if any(f.event_id == event.event_id for f in state.feedback):
            return Outcome(event.trace_id, state)  # a replay: already applied
        if state.interaction is None:
            if len(state.feedback) >= self.max_pending_feedback:
                return Outcome(
                    event.trace_id,
                    state,
                    rejected=(
                        f"more than {self.max_pending_feedback} feedback events are waiting for "
                        f"trace {event.trace_id}, whose interaction never arrived"
                    ),
                )
            state.feedback.append(event)
            return Outcome(event.trace_id, state)
        state.feedback.append(event)
        state.revision += 1
        reward = self.rim.combine(state.interaction, state.judge_scores, state.feedback)
        return Outcome(event.trace_id, state, self._scored(state, reward))

    def expired(self, state: TraceState, now: float | None = None) -> bool:
        """Feedback that waited longer than the TTL for an interaction that never came."""
        return state.pending and (now or time.time()) - state.first_seen > self.pending_ttl_s
