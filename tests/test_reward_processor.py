"""The reward processor's state machine, without Kafka (the stream e2e test covers Kafka)."""

from __future__ import annotations

import random

from rim.judges import FormatJudge, ReferenceMatchJudge
from rim.reward import Rim
from schemas.models import FeedbackEvent
from streams.processor import AFTER_REVISION, RESCORE, RewardProcessor
from tests.factories import interaction

RIM = Rim([ReferenceMatchJudge(), FormatJudge()])


def test_interaction_then_feedback_gives_revisions_1_and_2() -> None:
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(1))
    [first] = processor.on_interactions([(event, None)])
    assert first.scored and first.scored.revision == 1 and first.scored.human_score is None
    approve = FeedbackEvent(trace_id=event.trace_id, kind="approve")
    second = processor.on_feedback(approve, first.state)
    assert second.scored and second.scored.revision == 2 and second.scored.human_score == 1.0
    assert second.scored.judge_scores == first.scored.judge_scores  # judges not run again
    assert processor.on_feedback(approve, second.state).scored is None  # replayed feedback


def test_feedback_before_its_interaction_waits_then_merges() -> None:
    processor = RewardProcessor(RIM, max_pending_feedback=2)
    event = interaction(random.Random(2))
    waiting = processor.on_feedback(FeedbackEvent(trace_id=event.trace_id, kind="reject"), None)
    assert waiting.scored is None and waiting.state.pending
    [scored] = processor.on_interactions([(event, waiting.state)])
    assert scored.scored and (scored.scored.revision, scored.scored.feedback_count) == (1, 1)
    assert scored.scored.human_score == 0.0


def test_pending_feedback_is_bounded_and_expires() -> None:
    processor = RewardProcessor(RIM, max_pending_feedback=2, pending_ttl_s=10)
    state = None
    for _ in range(2):
        state = processor.on_feedback(FeedbackEvent(trace_id="t", kind="approve"), state).state
    overflow = processor.on_feedback(FeedbackEvent(trace_id="t", kind="approve"), state)
    assert overflow.rejected and "interaction never arrived" in overflow.rejected
    assert not processor.expired(state, now=state.first_seen + 5)
    assert processor.expired(state, now=state.first_seen + 11)


def test_duplicates_are_idempotent_and_conflicts_rejected() -> None:
    processor = RewardProcessor(RIM)
    rng = random.Random(3)
    event = interaction(rng)
    outcomes = processor.on_interactions([(event, None), (event, None)])
    assert [o.scored is not None for o in outcomes] == [True, False]
    assert outcomes[1].rejected is None
    impostor = event.model_copy(update={"event_id": "other"})
    [conflict] = processor.on_interactions([(impostor, outcomes[0].state)])
    assert conflict.scored is None and "already has interaction" in conflict.rejected
    blank = event.model_copy(update={"trace_id": " "})
    assert (
        processor.on_interactions([(blank, None)])[0].rejected == "interaction without a trace_id"
    )


def test_rescore_from_replay_is_the_next_revision() -> None:
    processor = RewardProcessor(RIM)
    event = interaction(random.Random(4))
    replayed = event.model_copy(
        update={"metadata": {**event.metadata, RESCORE: "r1", AFTER_REVISION: "5"}}
    )
    [outcome] = processor.on_interactions([(replayed, None)])
    assert outcome.scored and outcome.scored.revision == 6
    assert RESCORE not in outcome.scored.interaction.metadata
