"""The automatic retrain policy as a Faust agent: scored traces regrouped by agent (a
repartition topic), per-agent state in a changelog-backed table, triggers to atlas.triggers.v1.

A scored trace that cannot be decoded is the sink's to dead-letter (it owns the rewards topic);
one that the policy fails on is dead-lettered here, and the stream goes on.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import faust

from schemas.codec import AvroCodec, DecodeError, RegistryUnavailable
from schemas.deadletter import dead_letter_for
from schemas.models import ScoredTrace
from schemas.topics import DEADLETTER, TRIGGERS
from streams.delivery import Deliveries, Send, patiently
from streams.retrain_policy import AgentRewardState, RetrainPolicy

log = logging.getLogger(__name__)
PROCESSOR_NAME = "retrain-policy"
UNREADABLE = b"\x00unreadable"


def watch_agents(
    app: faust.App,
    policy: RetrainPolicy,
    rewards: faust.TopicT,
    partitions: int,
    codec: AvroCodec,
    deliveries: Deliveries,
) -> None:
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    triggers = app.topic(TRIGGERS, **raw)
    deadletter = app.topic(DEADLETTER, **raw)
    states = app.Table(
        "agent_rewards", default=None, partitions=partitions, key_type=bytes, value_type=bytes
    )

    def agent_of(value: bytes) -> bytes:
        try:
            return codec.decode(value, ScoredTrace).agent_id.encode()
        except DecodeError:
            return UNREADABLE
        except RegistryUnavailable as exc:
            # A key function cannot wait; the trace is stored all the same (the sink reads
            # it), only the policy's count misses it.
            log.error("retrain policy skips a scored trace: %s", exc)
            return UNREADABLE

    async def send(topic: faust.TopicT, key: bytes, value: bytes) -> Any:
        return await topic.send(key=key, value=value, force=True)

    def observe(event: Any) -> list[Send]:
        """The agent's state moved on by one scored trace, and what that sends. Everything
        that can need the registry happens before the state is written, so a retry after a
        registry outage does not count the trace twice."""
        try:
            scored = codec.decode(event.value, ScoredTrace)
            stored = states.get(event.key)
            state = AgentRewardState.model_validate_json(stored) if stored else AgentRewardState()
            state, trigger = policy.observe(state, scored)
            published = None if trigger is None else codec.encode(trigger)
            states[event.key] = state.model_dump_json().encode()
        except RegistryUnavailable:
            raise
        except Exception as exc:
            message = event.message
            log.exception("retrain policy failed on %s@%d", message.topic, message.offset)
            reason = f"{type(exc).__name__}: {exc}"
            letter = dead_letter_for(
                message, reason, "ProcessingError", PROCESSOR_NAME, codec.limits
            )
            return [
                functools.partial(send, deadletter, message.topic.encode(), codec.encode(letter))
            ]
        if trigger is None or published is None:
            return []
        log.warning(
            "retrain trigger %s for %s: %s", trigger.trigger_id, trigger.agent_id, trigger.reason
        )
        return [functools.partial(send, triggers, trigger.agent_id.encode(), published)]

    @app.agent(rewards)
    async def watch_rewards(stream: faust.StreamT) -> None:
        async for event in stream.group_by(agent_of, name="by-agent").events():
            if event.key == UNREADABLE:
                await deliveries.hold(event, [])  # in order with the events held before it
                continue
            await deliveries.hold(event, await patiently(functools.partial(observe, event)))
