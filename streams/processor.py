"""The reward processor's logic, free of Kafka: per-trace state in, ScoredTraces out.

An interaction yields revision 1 (judges run once, batched); each feedback event yields the
next revision with the human signal merged into the stored judge scores (judges are not run
again). Feedback that arrives before its interaction waits in the state, bounded in count and
age. Replays are idempotent: an event already applied (same event_id) changes nothing.

Judging is slow and batched, so it is split from the state change: ``judge`` needs no state,
and ``on_interaction`` applies a judgement to the state as it is *after* judging (feedback of
the same batch may have been merged meanwhile).

A trace's state lives for ``feedback_window_s`` after its last change, then expires (feedback
later than that waits as if the interaction had never come, and is dead-lettered).

Redaction (``runtime/redaction.py``): with a ``redactor``, judges and the human-signal merge see
the raw text (in memory, and in the trace's state, which the next feedback is merged into), and
every ScoredTrace an outcome carries is redacted under its agent's policy: what leaves the
processor holds placeholders, never the PII.

RIM versions (``streams/rim_versions.py``): each revision is scored with the RIM version its
agent follows at that moment (a replay may pin one), and the ScoredTrace records it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from rim.calibration import RimVersion
from rim.reward import Reward, Rim
from runtime.redaction import Redactor
from runtime.redaction_events import redact_feedback, redact_scored_trace
from schemas.models import FeedbackEvent, InteractionEvent, JudgeScore, ScoredTrace, utcnow
from streams.rim_versions import ConfiguredRim, RimVersionSource

RESCORE = "atlas.rescore"  # metadata key of an interaction re-sent by `atlas replay`
AFTER_REVISION = "atlas.after_revision"
RIM_VERSION = "atlas.rim_version"  # a replay pinned to one RIM version (`--rim-version`)
REPLAY_MARKERS = (RESCORE, AFTER_REVISION, RIM_VERSION)
DAY_S = 86_400.0


class TraceState(BaseModel):
    """What the changelog-backed table keeps per trace_id."""

    model_config = ConfigDict(allow_inf_nan=False)

    interaction: InteractionEvent | None = None
    judge_scores: list[JudgeScore] = Field(default_factory=list)
    baseline_reward: float | None = None
    production_reward: float | None = None  # of the shadow answer, on a canary task
    feedback: list[FeedbackEvent] = Field(default_factory=list)
    revision: int = 0
    first_seen: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    # Where each waiting feedback event came from (event_id -> partition, offset), so an
    # orphan is dead-lettered under its own source coordinates.
    sources: dict[str, tuple[int, int]] = Field(default_factory=dict)
    # The reward of the last ScoredTrace sent for the trace (None before the first, and in
    # states stored before it was kept), so a re-score replaces it in per-entry statistics.
    last_reward: float | None = None

    @property
    def pending(self) -> bool:
        return self.interaction is None and bool(self.feedback)

    @property
    def clock(self) -> float:
        """When the state's expiry window started: first seen while pending, else last change."""
        return self.first_seen if self.pending else self.updated_at

    def to_bytes(self) -> bytes:
        """The table's value: a one-line header (pending flag, clock) then the JSON, so the
        expiry scan reads a few bytes per state instead of parsing it."""
        return b"%d %.3f\n" % (self.pending, self.clock) + self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> TraceState:
        return cls.model_validate_json(value[value.find(b"\n") + 1 :])


def stored_clock(value: bytes) -> tuple[bool, float] | None:
    """(pending, clock) from a stored state's header; None if the header is unreadable."""
    try:
        pending, clock = value[: value.index(b"\n")].split()
        return pending == b"1", float(clock)
    except ValueError:
        return None


@dataclass
class Judgement:
    """What the judges said about one interaction; computed without touching any state."""

    judge_scores: list[JudgeScore]
    baseline_reward: float | None
    production_reward: float | None = None


@dataclass
class Outcome:
    trace_id: str
    state: TraceState
    scored: ScoredTrace | None = None
    rejected: str | None = None  # why the input is dead-lettered instead
    # The reward the trace's previous ScoredTrace had (None: ``scored`` is its first, or the
    # state predates ``last_reward``); the memory replaces it instead of counting it twice.
    previous_reward: float | None = None


def rescore_floor(event: InteractionEvent) -> int | None:
    """The revision a replayed interaction must follow, or None if it is not a replay.
    ValueError if the replay marker is not a revision number."""
    if RESCORE not in event.metadata:
        return None
    raw = event.metadata.get(AFTER_REVISION, "0") or "0"
    try:
        floor = int(raw)
    except ValueError:
        raise ValueError(
            f"metadata {AFTER_REVISION}={raw[:40]!r} is not a revision number"
        ) from None
    if not 0 <= floor < 2**31:
        raise ValueError(f"metadata {AFTER_REVISION}={floor} is out of range")
    return floor


def scored_trace(
    interaction: InteractionEvent,
    reward: Reward,
    revision: int,
    feedback_count: int,
    baseline_reward: float | None = None,
    rim_version: int = 0,
    production_reward: float | None = None,
) -> ScoredTrace:
    """The ScoredTrace of ``interaction``'s ``revision``, scored now with ``reward`` by RIM
    version ``rim_version``."""
    return ScoredTrace(
        trace_id=interaction.trace_id,
        agent_id=interaction.agent_id,
        revision=revision,
        scored_at=utcnow(),
        interaction=interaction,
        reward=reward.score,
        judge_scores=reward.judge_scores,
        rationale=reward.rationale,
        uncertainty=reward.uncertainty,
        escalated=reward.escalated,
        human_score=reward.human_score,
        feedback_count=feedback_count,
        baseline_reward=baseline_reward,
        errors=reward.errors,
        rim_version=rim_version,
        production_reward=production_reward,
    )


class RewardProcessor:
    def __init__(
        self,
        rim: Rim,
        max_pending_feedback: int = 50,
        pending_ttl_s: float = 3600.0,
        feedback_window_s: float = 7 * DAY_S,
        redactor: Redactor | None = None,
        rim_versions: RimVersionSource | None = None,
    ):
        self.rim = rim
        self.rim_versions = rim_versions or ConfiguredRim()
        self.redactor = redactor
        self.redacted: dict[str, int] = {}  # per PII kind, over every ScoredTrace sent
        self.max_pending_feedback = max_pending_feedback
        self.pending_ttl_s = pending_ttl_s
        self.feedback_window_s = feedback_window_s

    def judge_score(self, trace: ScoredTrace) -> float | None:
        """The judges' part of ``trace``'s reward, under the RIM version that scored it (the
        agent's current one if this worker no longer knows it)."""
        used = self.rim_versions.version(trace.agent_id, trace.rim_version)
        used = used or self.rim_versions.current(trace.agent_id)
        return self.rim.judge_score(trace.judge_scores, used.calibration)

    def _outcome(
        self, trace_id: str, state: TraceState, pinned: RimVersion | None = None
    ) -> Outcome:
        """The outcome scoring the state with its agent's current RIM version (or ``pinned``);
        records the reward in the state and the one it replaces in the outcome."""
        assert state.interaction is not None
        used = pinned or self.rim_versions.current(state.interaction.agent_id)
        reward = self.rim.combine(
            state.interaction, state.judge_scores, state.feedback, used.calibration
        )
        scored = scored_trace(
            state.interaction,
            reward,
            state.revision,
            len(state.feedback),
            state.baseline_reward,
            used.version,
            state.production_reward,
        )
        if self.redactor is not None:
            scored, counts = redact_scored_trace(self.redactor, scored)
            for kind, n in counts.items():
                self.redacted[kind] = self.redacted.get(kind, 0) + n
        previous, state.last_reward = state.last_reward, scored.reward
        return Outcome(trace_id, state, scored, previous_reward=previous)

    def published_feedback(self, feedback: Sequence[FeedbackEvent]) -> list[FeedbackEvent]:
        """A state's feedback as it may leave the processor (redacted, with a redactor)."""
        if self.redactor is None:
            return list(feedback)
        return [redact_feedback(self.redactor, f)[0] for f in feedback]

    def _replayed(self, trace_id: str, state: TraceState) -> Outcome:
        """An event the state already holds (sent twice by its producer): the trace's current
        revision is sent again, which the store keeps as one row per (trace, revision)."""
        if state.interaction is None or state.revision < 1:
            return Outcome(trace_id, state)  # still waiting for its interaction: nothing to send
        return self._outcome(trace_id, state)

    def wants_judging(self, event: InteractionEvent, state: TraceState | None) -> bool:
        """False for an interaction its trace already has (a replay or a conflict)."""
        return RESCORE in event.metadata or state is None or state.interaction is None

    def judge(self, events: Sequence[InteractionEvent]) -> list[Judgement]:
        """Every judge over the batch at once (one batched model call per judge); no state.
        Replay markers are not shown to the judges."""
        events = [_without_replay_marker(e) for e in events]
        judged = self.rim.judge_many(events)
        baselines = self.rim.baseline_rewards(events)
        shadows = self.rim.baseline_rewards(events, "production_answer")
        return [Judgement(s, b, p) for s, b, p in zip(judged, baselines, shadows, strict=True)]

    def on_interaction(
        self, event: InteractionEvent, state: TraceState | None, judgement: Judgement | None
    ) -> Outcome:
        """Apply ``judgement`` (None when ``wants_judging`` said no) to the trace's current
        state (changed in place). A conflicting second interaction for a trace is rejected."""
        state = state or TraceState()
        try:
            floor = rescore_floor(event)
            pinned = self._pinned(event)
        except ValueError as exc:
            return Outcome(event.trace_id, state, rejected=str(exc))
        if floor is not None:
            # `atlas replay`: score the stored trace again with today's judges, as the next
            # revision after both the table's and the store's latest.
            state.revision = max(state.revision, floor)
            state.interaction = _without_replay_marker(event)
        elif state.interaction is not None:
            if state.interaction.event_id == event.event_id:
                return self._replayed(event.trace_id, state)
            return Outcome(
                event.trace_id,
                state,
                rejected=(
                    f"trace {event.trace_id} already has interaction {state.interaction.event_id}"
                ),
            )
        else:
            state.interaction = event
        if judgement is None:
            raise ValueError(f"interaction {event.event_id} was not judged")
        state.judge_scores = judgement.judge_scores
        state.baseline_reward = judgement.baseline_reward
        state.production_reward = judgement.production_reward
        state.revision += 1
        state.sources = {}
        state.updated_at = time.time()
        return self._outcome(event.trace_id, state, pinned)

    def _pinned(self, event: InteractionEvent) -> RimVersion | None:
        """The RIM version a replay asks for (None: the agent's current one); ValueError if it
        is not a version number or not one this worker knows."""
        raw = event.metadata.get(RIM_VERSION)
        if raw is None or RESCORE not in event.metadata:
            return None
        try:
            number = int(raw)
        except ValueError:
            raise ValueError(
                f"metadata {RIM_VERSION}={raw[:40]!r} is not a version number"
            ) from None
        known = self.rim_versions.version(event.agent_id, number) if 0 <= number < 2**31 else None
        if known is None:
            raise ValueError(
                f"rim v{number} of agent {event.agent_id[:80]} is not known to this reward"
                " worker (never published, or compacted away: publish it again first)"
            )
        return known

    def on_feedback(
        self,
        event: FeedbackEvent,
        state: TraceState | None,
        source: tuple[int, int] = (-1, -1),
    ) -> Outcome:
        """Merge one feedback event (from partition/offset ``source``) into the trace's state
        (changed in place)."""
        state = state or TraceState()
        if any(f.event_id == event.event_id for f in state.feedback):
            return self._replayed(event.trace_id, state)
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
            state.sources[event.event_id] = source
            state.updated_at = time.time()
            return Outcome(event.trace_id, state)
        state.feedback.append(event)
        state.revision += 1
        state.updated_at = time.time()
        return self._outcome(event.trace_id, state)

    def expired(self, pending: bool, clock: float, now: float | None = None) -> bool:
        """Feedback that waited longer than the TTL for an interaction that never came, or a
        scored trace unchanged for longer than the feedback window (see ``TraceState.clock``)."""
        now = time.time() if now is None else now
        return now - clock > (self.pending_ttl_s if pending else self.feedback_window_s)

    def orphans(self, state: TraceState) -> list[tuple[FeedbackEvent, int, int]]:
        """The waiting feedback of an expired pending state, with each event's source."""
        if not state.pending:
            return []
        return [(f, *state.sources.get(f.event_id, (-1, -1))) for f in state.feedback]


def _without_replay_marker(event: InteractionEvent) -> InteractionEvent:
    if RESCORE not in event.metadata:
        return event
    metadata = {k: v for k, v in event.metadata.items() if k not in REPLAY_MARKERS}
    return event.model_copy(update={"metadata": metadata})
