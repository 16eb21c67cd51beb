"""The reward processor's state machine, without Kafka (the stream e2e test covers Kafka)."""

from __future__ import annotations

import random

from rim.judges import FormatJudge, ReferenceMatchJudge
from rim.reward import Rim
from schemas.models import FeedbackEvent, InteractionEvent
from streams.processor import (
    AFTER_REVISION,
    RESCORE,
    Outcome,
    RewardProcessor,
    TraceState,
    stored_clock,
)
from tests.factories import interaction

RIM = Rim([ReferenceMatchJudge(), FormatJudge()])


def score(
    processor: RewardProcessor, event: InteractionEvent, state: TraceState | None = None
) -> Outcome:
    """What the stream does: judge when asked to, then apply to the current state."""
    judgement = processor.judge([event])[0] if processor.wants_judging(event, state) else None
    return processor.on_interaction(event, state, judgement)


def test_interaction_then_feedback_gives_revisions_1_and_2() -> None:
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(1))
    first = score(processor, event)
    assert first.scored and first.scored.revision == 1 and first.scored.human_score is None
    approve = FeedbackEvent(trace_id=event.trace_id, kind="approve")
    judges = first.scored.judge_scores
    second = processor.on_feedback(approve, first.state)
    assert second.scored and second.scored.revision == 2 and second.scored.human_score == 1.0
    assert second.scored.judge_scores == judges  # judges not run again
    # Replayed feedback or interaction (a restart on state that got ahead of its outputs):
    # the current revision is sent again, unchanged, never a new revision.
    again = processor.on_feedback(approve, second.state).scored
    assert again and (again.revision, again.human_score, again.feedback_count) == (2, 1.0, 1)
    replayed = score(processor, event, second.state).scored
    assert replayed and replayed.revision == 2 and replayed.reward == second.scored.reward


def test_replayed_feedback_still_waiting_for_its_interaction_sends_nothing() -> None:
    processor = RewardProcessor(RIM)
    approve = FeedbackEvent(trace_id="t-waiting", kind="approve")
    first = processor.on_feedback(approve, None)
    assert first.scored is None and processor.on_feedback(approve, first.state).scored is None


def test_feedback_merged_while_the_judges_ran_is_kept() -> None:
    """The race behind the lost fast feedback: judging starts from one state, feedback changes
    the state meanwhile, and the judgement is applied to the state as it is afterwards."""
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(9))
    assert processor.wants_judging(event, None)
    judgement = processor.judge([event])[0]  # slow, in a thread, in the stream
    waiting = processor.on_feedback(
        FeedbackEvent(trace_id=event.trace_id, kind="reject"), None, source=(3, 41)
    )
    scored = processor.on_interaction(event, waiting.state, judgement)
    assert scored.scored and (scored.scored.feedback_count, scored.scored.human_score) == (1, 0.0)


def test_feedback_before_its_interaction_waits_then_merges() -> None:
    processor = RewardProcessor(RIM, max_pending_feedback=2)
    event = interaction(random.Random(2))
    waiting = processor.on_feedback(FeedbackEvent(trace_id=event.trace_id, kind="reject"), None)
    assert waiting.scored is None and waiting.state.pending
    scored = score(processor, event, waiting.state)
    assert scored.scored and (scored.scored.revision, scored.scored.feedback_count) == (1, 1)
    assert scored.scored.human_score == 0.0


def test_pending_feedback_is_bounded_and_expires_with_its_own_sources() -> None:
    processor = RewardProcessor(RIM, max_pending_feedback=2, pending_ttl_s=10)
    state = None
    events = [FeedbackEvent(trace_id="t", kind="approve") for _ in range(3)]
    for offset, event in enumerate(events[:2]):
        state = processor.on_feedback(event, state, source=(4, 100 + offset)).state
    overflow = processor.on_feedback(events[2], state)
    assert overflow.rejected and "interaction never arrived" in overflow.rejected
    assert stored_clock(state.to_bytes()) == (True, round(state.first_seen, 3))
    assert not processor.expired(state.pending, state.clock, now=state.first_seen + 5)
    assert processor.expired(state.pending, state.clock, now=state.first_seen + 11)
    assert [(f.event_id, p, o) for f, p, o in processor.orphans(state)] == [
        (events[0].event_id, 4, 100),
        (events[1].event_id, 4, 101),
    ]


def test_a_scored_trace_expires_after_the_feedback_window() -> None:
    processor = RewardProcessor(RIM, feedback_window_s=60)
    state = score(processor, interaction(random.Random(5))).state
    assert not processor.expired(*stored_clock(state.to_bytes()), now=state.updated_at + 59)
    assert processor.expired(*stored_clock(state.to_bytes()), now=state.updated_at + 61)
    assert TraceState.from_bytes(state.to_bytes()) == state
    legacy = state.model_dump_json().encode()  # written before the header existed
    assert stored_clock(legacy) is None and TraceState.from_bytes(legacy) == state
    assert processor.orphans(state) == []


def test_duplicates_are_idempotent_and_conflicts_rejected() -> None:
    processor = RewardProcessor(RIM)
    rng = random.Random(3)
    event = interaction(rng)
    first = score(processor, event)
    assert first.scored is not None
    assert not processor.wants_judging(event, first.state)
    again = score(processor, event, first.state)  # idempotent: the same revision again
    assert again.rejected is None and again.scored and again.scored.revision == 1
    impostor = event.model_copy(update={"event_id": "other"})
    conflict = score(processor, impostor, first.state)
    assert conflict.scored is None and "already has interaction" in (conflict.rejected or "")


def test_rescore_from_replay_is_the_next_revision() -> None:
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(4))
    replayed = event.model_copy(
        update={"metadata": {**event.metadata, RESCORE: "r1", AFTER_REVISION: "5"}}
    )
    outcome = score(processor, replayed)
    assert outcome.scored and outcome.scored.revision == 6
    assert RESCORE not in outcome.scored.interaction.metadata


def test_a_bad_replay_marker_is_rejected_with_a_reason() -> None:
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(6))
    bad = event.model_copy(
        update={"metadata": {**event.metadata, RESCORE: "r1", AFTER_REVISION: "soon"}}
    )
    outcome = score(processor, bad)
    assert outcome.scored is None
    assert outcome.rejected == "metadata atlas.after_revision='soon' is not a revision number"
