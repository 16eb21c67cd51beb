"""The reward processor as a Faust app: topology declared once, small async processors.

interactions ─┐                         ┌─> atlas.rewards.v1   (ScoredTrace, key trace_id)
              ├─> table trace_id -> TraceState (changelog-backed)
feedback ─────┘                         └─> atlas.deadletter.v1 (original bytes + reason)

Interactions and feedback are both keyed by trace_id and co-partitioned, so one worker owns a
trace's state; several workers in the consumer group share the partitions. RIM runs in a thread
so slow judges never starve the consumer's heartbeats. Undecodable or invalid input goes to the
dead-letter topic and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from schemas.codec import AvroCodec, DecodeError
from schemas.models import DeadLetter, FeedbackEvent, InteractionEvent, ScoredTrace
from schemas.topics import DEADLETTER, FEEDBACK, INTERACTIONS, REWARDS, TRIGGERS
from streams.processor import Outcome, RewardProcessor, TraceState
from streams.retrain_policy import AgentRewardState, RetrainPolicy

log = logging.getLogger(__name__)
PROCESSOR_NAME = "rewards"


def create_app(
    bootstrap: str,
    processor: RewardProcessor,
    partitions: int,
    app_id: str = "atlas-rewards",
    data_dir: str | None = None,
    batch_size: int = 64,
    batch_seconds: float = 0.5,
    codec: AvroCodec | None = None,
    policy: RetrainPolicy | None = None,
) -> faust.App:
    codec = codec or AvroCodec()
    app = faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        store="memory://",
        datadir=data_dir,
        topic_partitions=partitions,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        # A worker killed without leaving the group holds its partitions this long.
        broker_session_timeout=20.0,
        broker_heartbeat_interval=3.0,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    interactions = app.topic(INTERACTIONS, **raw)
    feedback = app.topic(FEEDBACK, **raw)
    rewards = app.topic(REWARDS, **raw)
    deadletter = app.topic(DEADLETTER, **raw)
    traces = app.Table(
        "traces", default=None, partitions=partitions, key_type=bytes, value_type=bytes
    )
    dead_letters = {"count": 0}

    async def publish(topic: faust.TopicT, key: bytes, value: bytes) -> None:
        # force=True: Faust would otherwise attach the message to the "current event", which
        # inside take_events() is some other event of the batch, possibly on another partition;
        # a worker killed between the two partitions' commits then loses the message. Sent now,
        # it sits in the producer, which Faust flushes before every offset commit.
        await topic.send(key=key, value=value, force=True)

    def state_of(key: bytes) -> TraceState | None:
        stored = traces.data.get(key)
        return TraceState.model_validate_json(stored) if stored else None

    def put(event: Any, key: bytes, state: TraceState) -> None:
        # The changelog entry must land in the partition of the event that changed the key
        # (not the batch's last event), so a rebalance restores it on the right worker.
        value = state.model_dump_json().encode()
        traces.data[key] = value
        traces.send_changelog(event.message.partition, key, value)

    async def dead_letter(event: Any, reason: str, error_type: str) -> None:
        message = event.message
        letter = DeadLetter(
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            key=message.key,
            original=message.value or b"",
            reason=reason,
            error_type=error_type,
            processor=PROCESSOR_NAME,
        )
        dead_letters["count"] += 1
        log.warning(
            "dead letter #%d %s[%d]@%d: %s",
            dead_letters["count"],
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        await publish(deadletter, message.topic.encode(), codec.encode(letter))

    def decode(event: Any, event_type: type) -> Any:
        decoded = codec.decode(event.value or b"", event_type)
        if event.key is not None and event.key != decoded.trace_id.encode():
            raise DecodeError(
                f"message key {event.key[:64]!r} differs from its trace_id {decoded.trace_id!r}"
            )
        return decoded

    async def emit(outcome: Outcome, event: Any) -> None:
        put(event, outcome.trace_id.encode(), outcome.state)
        if outcome.scored is not None:
            await publish(rewards, outcome.trace_id.encode(), codec.encode(outcome.scored))
        if outcome.rejected:
            await dead_letter(event, outcome.rejected, "InvalidEvent")

    @app.agent(interactions)
    async def score_interactions(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(batch_size, within=batch_seconds):
            batch, sources = [], []
            for event in events:
                try:
                    decoded = decode(event, InteractionEvent)
                except DecodeError as exc:
                    await dead_letter(event, str(exc), "DecodeError")
                    continue
                batch.append((decoded, state_of(decoded.trace_id.encode())))
                sources.append(event)
            if not batch:
                continue
            outcomes = await loop.run_in_executor(None, processor.on_interactions, batch)
            for source, outcome in zip(sources, outcomes, strict=True):
                await emit(outcome, source)

    @app.agent(feedback)
    async def merge_feedback(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                decoded = decode(event, FeedbackEvent)
            except DecodeError as exc:
                await dead_letter(event, str(exc), "DecodeError")
                continue
            outcome = processor.on_feedback(decoded, state_of(decoded.trace_id.encode()))
            await emit(outcome, event)

    @app.timer(interval=60.0)
    async def expire_pending_feedback() -> None:
        for key, stored in list(traces.data.items()):
            state = TraceState.model_validate_json(stored)
            if processor.expired(state):
                log.warning(
                    "dropping %d feedback event(s) for trace %s: no interaction after %.0fs",
                    len(state.feedback),
                    key.decode(),
                    processor.pending_ttl_s,
                )
                letter = DeadLetter(
                    source_topic=FEEDBACK,
                    source_partition=-1,
                    source_offset=-1,
                    key=key,
                    original=b"".join(codec.encode(f) for f in state.feedback[:1]),
                    reason=f"{len(state.feedback)} feedback event(s) waited more than "
                    f"{processor.pending_ttl_s:.0f}s for an interaction that never came",
                    error_type="OrphanFeedback",
                    processor=PROCESSOR_NAME,
                )
                await publish(deadletter, FEEDBACK.encode(), codec.encode(letter))
                traces.data.pop(key, None)

    if policy is not None:
        watch_agents(app, policy, rewards, partitions, codec, publish)
    return app


def watch_agents(
    app: faust.App,
    policy: RetrainPolicy,
    rewards: faust.TopicT,
    partitions: int,
    codec: AvroCodec,
    publish: Any,
) -> None:
    """The automatic retrain policy: scored traces regrouped by agent (a repartition topic),
    per-agent state in a changelog-backed table, triggers to atlas.triggers.v1."""
    triggers = app.topic(TRIGGERS, key_serializer="raw", value_serializer="raw")
    states = app.Table(
        "agent_rewards", default=None, partitions=partitions, key_type=bytes, value_type=bytes
    )
    unreadable = b"\x00unreadable"

    def agent_of(value: bytes) -> bytes:
        try:
            return codec.decode(value, ScoredTrace).agent_id.encode()
        except DecodeError:
            return unreadable  # the sink dead-letters it; the policy just skips it

    @app.agent(rewards)
    async def watch_rewards(stream: faust.StreamT) -> None:
        async for event in stream.group_by(agent_of, name="by-agent").events():
            if event.key == unreadable:
                continue
            scored = codec.decode(event.value, ScoredTrace)
            stored = states.get(event.key)
            state = AgentRewardState.model_validate_json(stored) if stored else AgentRewardState()
            state, trigger = policy.observe(state, scored)
            states[event.key] = state.model_dump_json().encode()
            if trigger is not None:
                log.warning(
                    "retrain trigger %s for %s: %s",
                    trigger.trigger_id,
                    trigger.agent_id,
                    trigger.reason,
                )
                await publish(triggers, trigger.agent_id.encode(), codec.encode(trigger))
