"""The reward processor as a Faust app: topology declared once, small async processors.

interactions ─┐                         ┌─> atlas.rewards.v1   (ScoredTrace, key trace_id)
              ├─> table trace_id -> TraceState (changelog-backed)
feedback ─────┘                         └─> atlas.deadletter.v1 (original bytes + reason)

Interactions and feedback are both keyed by trace_id and co-partitioned, so one worker owns a
trace's state; several workers in the consumer group share the partitions. RIM runs in a thread
so slow judges never starve the consumer's heartbeats.

Guarantees:
* Every event gets an outcome: a scored trace, nothing (a replay), or a dead letter with its
  original bytes and a reason. An exception while handling one event (undecodable, invalid,
  a state that does not load, a judge or a bug) dead-letters that event and the stream goes on.
* An event's offset is committed only after its outputs are on Kafka (``streams/delivery.py``).
* No offset of a source partition goes unprocessed when Faust skips it, neither inside a
  partition nor at its end (``streams/contiguity.py``; a sweep every ``tail_check_s`` picks up a
  tail that stayed undelivered for ``tail_quiet_s``).
* A trace's state is read, changed and written with no ``await`` in between, so the two agents
  never overwrite each other's change (judging happens before the read).
* State expires: feedback waiting for an interaction after ``pending_ttl_s`` (dead-lettered,
  one letter per feedback event under its own source offset), a scored trace
  ``feedback_window_s`` after its last change; both leave a tombstone on the changelog.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from schemas.codec import AvroCodec, DecodeError, RegistryUnavailable
from schemas.deadletter import dead_letter_for, make_dead_letter
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import DEADLETTER, FEEDBACK, INTERACTIONS, REWARDS
from streams.contiguity import ContiguityGuard, KafkaPartitionReader, PartitionReader
from streams.delivery import Deliveries, Send, as_current_event, patiently
from streams.policy_agent import watch_agents
from streams.processor import Judgement, Outcome, RewardProcessor, TraceState, stored_clock
from streams.retrain_policy import RetrainPolicy

log = logging.getLogger(__name__)
PROCESSOR_NAME = "rewards"
EXPIRY_SCAN_CHUNK = 2000


@dataclass
class StreamStats:
    scored: int = 0
    dead_letters: int = 0
    expired: int = 0
    by_error: dict[str, int] = field(default_factory=dict)

    def count_dead(self, error_type: str) -> None:
        self.dead_letters += 1
        self.by_error[error_type] = self.by_error.get(error_type, 0) + 1


def faust_credentials(kafka_config: dict[str, str]) -> faust.SASLCredentials | None:
    """The aiokafka side of a librdkafka configuration: the same SASL user, mechanism and CA,
    so both client families are built from one settings object."""
    if "sasl.username" not in kafka_config:
        return None
    ca = kafka_config.get("ssl.ca.location")
    tls = kafka_config.get("security.protocol", "").upper().endswith("SSL")
    return faust.SASLCredentials(
        username=kafka_config["sasl.username"],
        password=kafka_config.get("sasl.password", ""),
        mechanism=kafka_config.get("sasl.mechanism", "PLAIN"),
        ssl_context=ssl.create_default_context(cafile=ca) if tls else None,
    )


def create_app(
    kafka_config: dict[str, str],
    processor: RewardProcessor,
    partitions: int,
    app_id: str = "atlas-rewards",
    data_dir: str | None = None,
    batch_size: int = 64,
    linger_s: float = 0.05,
    codec: AvroCodec | None = None,
    policy: RetrainPolicy | None = None,
    store: str = "memory://",
    reader: PartitionReader | None = None,
    tail_check_s: float = 2.0,
    tail_quiet_s: float = 10.0,
) -> faust.App:
    codec = codec or AvroCodec()
    guard = ContiguityGuard(reader or KafkaPartitionReader(kafka_config, app_id))
    bootstrap = kafka_config["bootstrap.servers"]
    app = faust.App(
        app_id,
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        broker_credentials=faust_credentials(kafka_config),
        store=store,
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
    stats = StreamStats()
    deliveries = Deliveries()
    # what tells the retrain policy about each scored trace (none: no policy in this worker)
    observed = None if policy is None else watch_agents(app, policy, partitions, codec, deliveries)

    def send_to(topic: faust.TopicT, key: bytes, value: bytes) -> Send:
        # force=True: sent now, not attached to Faust's "current event" (inside take_events,
        # some other event of the batch, possibly of another partition).
        async def send() -> asyncio.Future[Any]:
            return await topic.send(key=key, value=value, force=True)

        return send

    def changelog_of(key: bytes, partition: int) -> Send:
        # A retry sends the key's value as it is then, never an older state over a newer one.
        async def send() -> asyncio.Future[Any]:
            return traces.send_changelog(partition, key, traces.data.get(key))

        return send

    def state_of(key: bytes) -> TraceState | None:
        stored = traces.data.get(key)
        if not stored:
            return None
        try:
            return TraceState.from_bytes(stored)
        except ValueError as exc:
            raise DecodeError(
                f"the stored state of trace {key[:80]!r} cannot be read: {exc}"
            ) from None

    def put(event: Any, key: bytes, state: TraceState) -> Send:
        # The changelog entry lands in the partition of the event that changed the key.
        state.partition = event.message.partition
        with as_current_event(event):
            traces.data[key] = state.to_bytes()
        return changelog_of(key, event.message.partition)

    def dead_letter(event: Any, reason: str, error_type: str) -> Send:
        message = event.message
        letter = dead_letter_for(message, reason, error_type, PROCESSOR_NAME, codec.limits)
        stats.count_dead(error_type)
        log.warning(
            "dead letter #%d %s[%d]@%d: %s",
            stats.dead_letters,
            message.topic,
            message.partition,
            message.offset,
            letter.reason[:300],
        )
        return send_to(deadletter, message.topic.encode(), codec.encode(letter))

    def decode(event: Any, event_type: type) -> Any:
        decoded = codec.decode(event.value or b"", event_type)
        if event.key is not None and event.key != decoded.trace_id.encode():
            raise DecodeError(
                f"message key {event.key[:64]!r} differs from its trace_id {decoded.trace_id!r}"
            )
        return decoded

    def outputs(outcome: Outcome, event: Any) -> list[Send]:
        """Write the outcome's state and name what must be delivered for it. Everything that
        can fail (encoding) happens before the state is written."""
        key = outcome.trace_id.encode()
        scored = None if outcome.scored is None else codec.encode(outcome.scored)
        sends = [put(event, key, outcome.state)]
        if scored is not None and outcome.scored is not None:
            stats.scored += 1
            sends.append(send_to(rewards, key, scored))
            if observed is not None:
                sends.append(observed(outcome.scored))
        if outcome.rejected:
            sends.append(dead_letter(event, outcome.rejected, "InvalidEvent"))
        return sends

    def failed(event: Any, exc: Exception) -> list[Send]:
        if isinstance(exc, DecodeError):
            return [dead_letter(event, str(exc), "DecodeError")]
        message = event.message
        log.exception("%s[%d]@%d failed", message.topic, message.partition, message.offset)
        return [dead_letter(event, f"{type(exc).__name__}: {exc}", "ProcessingError")]

    async def judge_batch(events: list[InteractionEvent]) -> list[Judgement | Exception]:
        """One batched judging call; if the batch raises, each event alone, so one poison
        event cannot take its batch with it."""
        loop = asyncio.get_running_loop()
        try:
            return list(await loop.run_in_executor(None, processor.judge, events))
        except Exception:
            log.exception("judging a batch of %d failed; judging one by one", len(events))
        results: list[Judgement | Exception] = []
        for single in events:
            try:
                [judged] = await loop.run_in_executor(None, processor.judge, [single])
                results.append(judged)
            except Exception as exc:
                results.append(exc)
        return results

    async def with_missed(event: Any) -> list[Any]:
        """``event``, preceded by any event of its partition the consumer skipped (nothing if
        a sweep already processed it: it is only acknowledged, in order); retried while Kafka
        cannot be read: nothing after a gap is acknowledged before the gap."""
        delay = 0.5
        while True:
            try:
                arrival = await guard.missed(event.message)
                break
            except Exception as exc:
                log.error("cannot read past a gap yet (%r); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        if arrival.repeat:
            await deliveries.hold(event, [])
            return []
        return [*arrival.missed, event]

    async def score(events: list[Any]) -> None:
        """Score interaction events, judged in one batch, outcomes held in partition order."""
        decoded: list[InteractionEvent | Exception] = []
        to_judge: dict[str, InteractionEvent] = {}
        for event in events:
            item: InteractionEvent | Exception
            try:  # one entry per event, whatever fails: they are zipped back together below
                item = await patiently(functools.partial(decode, event, InteractionEvent))
                if processor.wants_judging(item, state_of(item.trace_id.encode())):
                    to_judge[item.event_id] = item
            except Exception as exc:
                item = exc
            decoded.append(item)
        judged = dict(zip(to_judge, await judge_batch(list(to_judge.values())), strict=True))
        for event, item in zip(events, decoded, strict=True):  # held in partition order
            await hold_outcome(event, functools.partial(scored, event, item, judged))

    def scored(
        event: Any, item: InteractionEvent | Exception, judged: dict[str, Any]
    ) -> list[Send]:
        if isinstance(item, Exception):
            raise item
        judgement = judged.get(item.event_id)
        if isinstance(judgement, Exception):
            raise judgement
        # No await from here to put(): the state read is the state written over.
        state = state_of(item.trace_id.encode())
        return outputs(processor.on_interaction(item, state, judgement), event)

    async def merge(events: list[Any]) -> None:
        """Merge feedback events into their traces' states, one at a time, in order."""
        for event in events:
            await hold_outcome(event, functools.partial(merged, event))

    def merged(event: Any) -> list[Send]:
        decoded = decode(event, FeedbackEvent)
        source = (event.message.partition, event.message.offset)
        state = state_of(decoded.trace_id.encode())
        return outputs(processor.on_feedback(decoded, state, source), event)

    async def hold_outcome(event: Any, step: Callable[[], list[Send]]) -> None:
        """Hold ``event`` until what ``step()`` sends is delivered. A registry outage is waited
        out and ``step`` run again (``patiently``); any other failure is the event's own and
        dead-letters it."""

        def outcome() -> list[Send]:
            try:
                return step()
            except RegistryUnavailable:
                raise
            except Exception as exc:
                return failed(event, exc)

        await deliveries.hold(event, await patiently(outcome))

    handlers = {INTERACTIONS: score, FEEDBACK: merge}
    # One lock per source topic: a sweep and its topic's agent never process at the same time.
    processing = {INTERACTIONS: asyncio.Lock(), FEEDBACK: asyncio.Lock()}

    @app.agent(interactions)
    async def score_interactions(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(batch_size, within=linger_s):
            async with processing[INTERACTIONS]:
                await score([item for event in batch for item in await with_missed(event)])

    @app.agent(feedback)
    async def merge_feedback(stream: faust.StreamT) -> None:
        async for received in stream.events():
            async with processing[FEEDBACK]:
                await merge(await with_missed(received))

    def steady(generation: int) -> bool:
        """Our assignment is settled and Faust delivers: what we sweep is ours to process."""
        return (
            app.consumer_generation_id == generation
            and not (app.rebalancing or app.in_recovery)
            and app.consumer.flow_active
        )

    @app.timer(interval=tail_check_s)
    async def sweep_tails() -> None:
        """Process the messages Faust fetched past but never delivered at the end of a
        partition, where no later message reveals the gap (``streams/contiguity.py``)."""
        generation = app.consumer_generation_id
        if not steady(generation):
            return
        assigned = app.consumer.assignment()
        ours = [(tp.topic, tp.partition) for tp in assigned if tp.topic in handlers]
        try:
            for stall in await guard.stalled(ours, generation, quiet_s=tail_quiet_s):
                topic = stall.tp[0]
                async with processing[topic]:
                    if steady(generation):
                        await handlers[topic](await guard.sweep(stall, limit=batch_size))
        except Exception as exc:  # Kafka away: the next pass looks again
            log.warning("looking for undelivered partition tails failed (%r)", exc)

    # Often enough that nothing outlives its window by more than a quarter of it.
    expiry_interval_s = min(
        60.0, max(1.0, min(processor.pending_ttl_s, processor.feedback_window_s) / 4)
    )

    @app.timer(interval=expiry_interval_s)
    async def expire_states() -> None:
        """Drop expired states with a tombstone on the changelog; dead-letter orphan feedback.
        Scans in chunks so the agents keep running in between."""
        now, held, expired = time.time(), 0, []
        for key, value in list(traces.data.items()):
            held += 1
            clock = stored_clock(value) if value else None
            if clock is None or processor.expired(*clock, now=now):
                expired.append(key)
            if held % EXPIRY_SCAN_CHUNK == 0:
                await asyncio.sleep(0)  # let the agents run between chunks
        tombstones: list[asyncio.Future[Any]] = []
        for key in expired:
            try:
                tombstones += await expire(key)
                if len(tombstones) >= EXPIRY_SCAN_CHUNK:  # bounded: never floods the producer
                    await asyncio.gather(*tombstones)
                    tombstones = []
            except Exception:  # e.g. Kafka away: the state stays, the next pass retries
                log.exception("expiring a trace state failed; retried on the next pass")
                return
        log.info(
            "trace states: %d held, %d expired now; since start: %d scored, %d expired,"
            " %d recovered past the consumer (%d of them delivered later too), dead letters %s",
            held - len(expired),
            len(expired),
            stats.scored,
            stats.expired,
            guard.recovered,
            guard.repeats,
            stats.by_error or "none",
        )

    async def expire(key: bytes) -> list[asyncio.Future[Any]]:
        """Drop one expired state; returns its tombstone's pending delivery."""
        try:
            state = state_of(key)
        except DecodeError as exc:
            log.error("dropping an unreadable state: %s", exc)
            state = None
        if state is not None and not processor.expired(state.pending, state.clock):
            return []  # changed since the scan
        for orphan, partition, offset in processor.orphans(state) if state else []:
            letter = make_dead_letter(
                source_topic=FEEDBACK,
                source_partition=partition,
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
            await (await send_to(deadletter, FEEDBACK.encode(), codec.encode(letter))())
        stats.expired += 1
        partition = state.partition if state is not None else -1
        traces.data.pop(key, None)
        # The tombstone: a restore will not bring it back.
        return [await changelog_of(key, partition)()] if partition >= 0 else []

    return app
