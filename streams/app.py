"""The reward stream: topology declared once, small processors, on the exactly-once engine
(``streams/engine.py``).

interactions ─┐                                    ┌─> atlas.rewards.v1 (ScoredTrace, key trace_id)
              ├─> table trace_id -> TraceState ────┼─> atlas.deadletter.v1 (original + reason)
feedback ─────┘   (atlas-rewards-traces-changelog) ├─> atlas-rewards-policy-observations
                                                   │     └─> retrain policy -> atlas.triggers.v1
                                                   ├─> atlas-rewards-memory-candidates
                                                   │     (candidates and every trace's use)
                                                   │     └─> memory -> atlas.memory.v1
                                                   ├─> atlas-rewards-rollout-observations
                                                   │     (tasks in a canary rollout)
                                                   │     └─> `atlas worker rollouts`
                                                   │         -> atlas.rollouts.v1, prompts
                                                   └─> atlas-rewards-alert-observations
                                                         (rewards, verdicts, dead-letter tallies)
                                                         └─> alerts -> atlas.alerts.v1

Interactions and feedback are both keyed by trace_id and co-partitioned, so one worker owns a
trace's state; several workers in the consumer group share the partitions.

Guarantees:
* Every event gets one outcome, committed with its offset in one transaction: a scored trace,
  nothing (a replay), or a dead letter with its original bytes and a reason. An exception
  while handling one event (undecodable, invalid, a state that does not load, a judge or a
  bug) dead-letters that event and the batch goes on. A schema-registry outage is waited out
  (the batch is retried), never dead-lettered.
* A trace's state is read, changed and written by one event at a time, in partition order;
  judging a batch happens before any state is read for it.
* State expires: feedback waiting for an interaction after ``pending_ttl_s`` (dead-lettered,
  one letter per feedback event under its own source offset), a scored trace
  ``feedback_window_s`` after its last change; both leave a tombstone on the changelog.
* PII (with the processor's ``redactor``): every ScoredTrace, memory candidate and dead letter
  this stream sends is redacted under its agent's policy; the judges saw the raw text in
  memory. The trace changelog keeps the raw text the next feedback is merged with (it is the
  processor's own state, readable by the rewards role only, and expires with the trace).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from runtime.redaction_events import redact_dead_letter
from schemas.codec import AvroCodec, DecodeError, RegistryUnavailable
from schemas.deadletter import dead_letter_for, make_dead_letter
from schemas.models import DeadLetter, FeedbackEvent, InteractionEvent
from schemas.topics import (
    ALERT_OBSERVATIONS,
    FEEDBACK,
    INTERACTIONS,
    MEMORY_CANDIDATES,
    POLICY_OBSERVATIONS,
    REWARDS,
    ROLLOUT_OBSERVATIONS,
)
from streams.alert_webhook import WebhookNotifier
from streams.alerts import ALL_AGENTS, AlertDetector, DeadLetterTally, TraceSeen
from streams.alerts import observation_bytes as alert_observation
from streams.alerts_stream import alerts_stream
from streams.engine import Batch, StreamEngine, Table, Timer
from streams.memory import MemoryProcessor, candidate_of
from streams.memory_retirement import use_of
from streams.memory_stream import memory_stream
from streams.policy_stream import policy_stream
from streams.processor import Judgement, Outcome, RewardProcessor, TraceState, stored_clock
from streams.retrain_policy import Observation, RetrainPolicy, RetrainPolicyConfig
from streams.rollout import observation_of

log = logging.getLogger(__name__)
PROCESSOR_NAME = "rewards"
TRACES_CHANGELOG = "atlas-rewards-traces-changelog"
EXPIRY_BATCH = 5000  # tombstones per transaction; the rest in the next pass, right after


@dataclass
class StreamStats:
    scored: int = 0
    dead_letters: int = 0
    expired: int = 0
    by_error: dict[str, int] = field(default_factory=dict)

    def count_dead(self, error_type: str) -> None:
        self.dead_letters += 1
        self.by_error[error_type] = self.by_error.get(error_type, 0) + 1


def create_stream(
    kafka_config: dict[str, str],
    processor: RewardProcessor,
    codec: AvroCodec | None = None,
    policy: RetrainPolicy | None = None,
    memory: MemoryProcessor | None = None,
    alerts: AlertDetector | None = None,
    alert_webhook: WebhookNotifier | None = None,
    retrain_on_alert: RetrainPolicyConfig | None = None,
    group_id: str = "atlas-rewards",
    batch_size: int = 500,
    linger_s: float = 0.05,
) -> StreamEngine:
    codec = codec or AvroCodec()
    traces = Table(TRACES_CHANGELOG, (INTERACTIONS, FEEDBACK))
    stats = StreamStats()

    def state_of(partition: int, key: bytes) -> TraceState | None:
        stored = traces.get(partition, key)
        if not stored:
            return None
        try:
            return TraceState.from_bytes(stored)
        except ValueError as exc:
            raise DecodeError(
                f"the stored state of trace {key[:80]!r} cannot be read: {exc}"
            ) from None

    def redacted(letter: DeadLetter) -> DeadLetter:
        if processor.redactor is None:
            return letter
        return redact_dead_letter(processor.redactor, letter, codec)[0]

    def dead_letter(batch: Batch, message: Message, reason: str, error_type: str) -> None:
        letter = dead_letter_for(message, reason, error_type, PROCESSOR_NAME, codec.limits)
        letter = redacted(letter)
        stats.count_dead(error_type)
        log.warning(
            "dead letter #%d %s[%d]@%d: %s",
            stats.dead_letters,
            message.topic(),
            message.partition(),
            message.offset(),
            letter.reason[:300],
        )
        batch.send_dead_letter(message.topic(), error_type, codec.encode(letter))

    def decode(message: Message, event_type: type) -> Any:
        decoded = codec.decode(message.value() or b"", event_type)
        key = message.key()
        if key is not None and key != decoded.trace_id.encode():
            raise DecodeError(
                f"message key {key[:64]!r} differs from its trace_id {decoded.trace_id!r}"
            )
        return decoded

    def apply(
        batch: Batch, message: Message, outcome: Outcome, source: InteractionEvent | None = None
    ) -> None:
        """Write the outcome's state and send what it says. Everything that can fail
        (encoding) happens before the state is written. ``source``: the interaction
        ``message`` holds, whose bytes the ScoredTrace reuses where it holds it unchanged."""
        key = outcome.trace_id.encode()
        sends = []
        if outcome.scored is not None:
            trace = outcome.scored
            body = codec.current_body(message.value() or b"", InteractionEvent) if source else None
            sends.append((REWARDS, key, codec.encode_reusing(trace, "interaction", source, body)))
            if policy is not None:
                seen = Observation(trace.agent_id, trace.revision, trace.reward)
                sends.append((POLICY_OBSERVATIONS, trace.agent_id.encode(), seen.to_bytes()))
            rollout = observation_of(trace, outcome.previous_reward)
            if rollout is not None:  # a task in a canary rollout: its arm's reward
                sends.append((ROLLOUT_OBSERVATIONS, trace.agent_id.encode(), rollout.to_bytes()))
            if memory is not None:
                # Every revision's use (ids and rewards, for the per-entry statistics), then,
                # if the trace has a human verdict, the candidate it makes.
                use = use_of(trace, outcome.previous_reward)
                sends.append((MEMORY_CANDIDATES, trace.agent_id.encode(), use.to_bytes()))
                feedback = processor.published_feedback(outcome.state.feedback)
                candidate = candidate_of(trace, feedback)
                if candidate is not None:
                    sends.append((MEMORY_CANDIDATES, trace.agent_id.encode(), candidate.to_bytes()))
            if alerts is not None:
                judges = processor.judge_score(trace)
                watched = TraceSeen(
                    trace.agent_id,
                    trace.trace_id,
                    trace.revision,
                    trace.reward,
                    judges,
                    trace.human_score,
                )
                sends.append(
                    (ALERT_OBSERVATIONS, trace.agent_id.encode(), alert_observation(watched))
                )
        batch.put(traces, message.partition(), key, outcome.state.to_bytes())
        for topic, output_key, value in sends:
            batch.send(topic, output_key, value)
        stats.scored += outcome.scored is not None
        if outcome.rejected:
            dead_letter(batch, message, outcome.rejected, "InvalidEvent")

    def handle(batch: Batch, message: Message, step: Callable[[], None]) -> None:
        """Run one event's step; any failure but a registry outage dead-letters the event."""
        try:
            step()
        except RegistryUnavailable:
            raise
        except DecodeError as exc:
            dead_letter(batch, message, str(exc), "DecodeError")
        except Exception as exc:
            log.exception(
                "%s[%d]@%d failed", message.topic(), message.partition(), message.offset()
            )
            dead_letter(batch, message, f"{type(exc).__name__}: {exc}", "ProcessingError")

    def judge_batch(events: list[InteractionEvent]) -> list[Judgement | Exception]:
        """One batched judging call; if the batch raises, each event alone, so one poison
        event cannot take its batch with it."""
        if not events:
            return []
        try:
            return list(processor.judge(events))
        except Exception:
            log.exception("judging a batch of %d failed; judging one by one", len(events))
        results: list[Judgement | Exception] = []
        for single in events:
            try:
                results.extend(processor.judge([single]))
            except Exception as exc:
                results.append(exc)
        return results

    def tally(batch: Batch, events: int, dead_before: int) -> None:
        """The dead-letter tally of one handler call (or expiry pass), for the alerts."""
        dead = stats.dead_letters - dead_before
        if alerts is not None and (events or dead):
            value = alert_observation(DeadLetterTally(events, dead))
            batch.send(ALERT_OBSERVATIONS, ALL_AGENTS.encode(), value)

    def score(messages: Sequence[Message], batch: Batch) -> None:
        """Score interaction events, judged in one batch, applied in partition order."""
        dead_before = stats.dead_letters
        decoded: list[InteractionEvent | Exception] = []
        to_judge: dict[str, InteractionEvent] = {}
        for message in messages:
            item: InteractionEvent | Exception
            try:  # one entry per event, whatever fails: they are zipped back together below
                item = decode(message, InteractionEvent)
                state = state_of(message.partition(), item.trace_id.encode())
                if processor.wants_judging(item, state):
                    to_judge[item.event_id] = item
            except RegistryUnavailable:
                raise
            except Exception as exc:
                item = exc
            decoded.append(item)
        judged = dict(zip(to_judge, judge_batch(list(to_judge.values())), strict=True))

        def scored(message: Message, item: InteractionEvent | Exception) -> None:
            if isinstance(item, Exception):
                raise item
            judgement = judged.get(item.event_id)
            if isinstance(judgement, Exception):
                raise judgement
            state = state_of(message.partition(), item.trace_id.encode())
            apply(batch, message, processor.on_interaction(item, state, judgement), item)

        for message, item in zip(messages, decoded, strict=True):
            handle(batch, message, lambda m=message, i=item: scored(m, i))
        tally(batch, len(messages), dead_before)

    def merge(messages: Sequence[Message], batch: Batch) -> None:
        """Merge feedback events into their traces' states, one at a time, in order."""

        def merged(message: Message) -> None:
            event = decode(message, FeedbackEvent)
            source = (message.partition(), message.offset())
            state = state_of(message.partition(), event.trace_id.encode())
            apply(batch, message, processor.on_feedback(event, state, source))

        dead_before = stats.dead_letters
        for message in messages:
            handle(batch, message, lambda m=message: merged(m))
        tally(batch, len(messages), dead_before)

    def expire(batch: Batch) -> bool:
        """Tombstone expired states and dead-letter orphan feedback, at most EXPIRY_BATCH per
        transaction; True if more are waiting."""
        now, expired, dead_before = time.time(), 0, stats.dead_letters
        held = len(traces)
        for partition, data in list(traces.partitions.items()):
            for key, value in list(data.items()):
                clock = stored_clock(value)
                if clock is not None and not processor.expired(*clock, now=now):
                    continue
                if expired == EXPIRY_BATCH:  # counted now: the next transaction goes on
                    stats.expired += expired
                    tally(batch, 0, dead_before)
                    return True
                expired += 1
                orphans(batch, partition, key)
                batch.put(traces, partition, key, None)
        stats.expired += expired
        tally(batch, 0, dead_before)
        log.info(
            "trace states: %d held, %d expired now; since start: %d scored, %d expired,"
            " dead letters %s, PII redacted in scored traces %s",
            held - expired,
            expired,
            stats.scored,
            stats.expired,
            stats.by_error or "none",
            processor.redacted or "none",
        )
        return False

    def orphans(batch: Batch, partition: int, key: bytes) -> None:
        try:
            state = state_of(partition, key)
        except DecodeError as exc:
            log.error("dropping an unreadable state: %s", exc)
            return
        for orphan, source_partition, offset in processor.orphans(state) if state else []:
            letter = make_dead_letter(
                source_topic=FEEDBACK,
                source_partition=source_partition,
                source_offset=offset,
                key=key,
                original=codec.encode(orphan),
                reason=(
                    f"feedback {orphan.event_id} waited more than {processor.pending_ttl_s:.0f}s"
                    f" for the interaction of trace {orphan.trace_id}, which never came (or"
                    f" was scored more than the {processor.feedback_window_s:.0f}s feedback"
                    " window ago)"
                ),
                error_type="OrphanFeedback",
                processor=PROCESSOR_NAME,
                limits=codec.limits,
            )
            stats.count_dead("OrphanFeedback")
            batch.send_dead_letter(FEEDBACK, letter.error_type, codec.encode(redacted(letter)))

    handlers = {INTERACTIONS: score, FEEDBACK: merge}
    tables = [traces]
    if policy is not None:
        states, observe = policy_stream(policy, codec)
        handlers[POLICY_OBSERVATIONS] = observe
        tables.append(states)
    if memory is not None:
        memories, remember = memory_stream(memory, codec)
        handlers[MEMORY_CANDIDATES] = remember
        tables.append(memories)
    if alerts is not None:
        alert_states, watch = alerts_stream(alerts, codec, alert_webhook, retrain_on_alert)
        handlers[ALERT_OBSERVATIONS] = watch
        tables.append(alert_states)
    # Often enough that nothing outlives its window by more than a quarter of it.
    expiry_interval_s = min(
        60.0, max(1.0, min(processor.pending_ttl_s, processor.feedback_window_s) / 4)
    )
    return StreamEngine(
        kafka_config,
        group_id,
        handlers,
        tables,
        [Timer(expiry_interval_s, expire, due=time.monotonic() + expiry_interval_s)],
        batch_size=batch_size,
        linger_s=linger_s,
        retry_on=(RegistryUnavailable,),
        worker=PROCESSOR_NAME,
    )
