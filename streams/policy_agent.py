"""The automatic retrain policy as a Faust agent: per-agent state in a changelog-backed table,
triggers to atlas.triggers.v1.

The reward stream sends each scored trace's :class:`Observation` (agent, revision, reward) to
an internal topic keyed by agent, as one of the trace's outputs (delivered before its source
event is acknowledged); the policy reads that topic, co-partitioned with its table. It used to
read the scored traces back from atlas.rewards.v1 and regroup them through a repartition
topic, decoding each whole trace twice: that cost more than scoring them.

An observation that cannot be read (only the rewards role may write the topic) or that the
policy fails on is dead-lettered here, and the stream goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import faust

from schemas.codec import AvroCodec, RegistryUnavailable
from schemas.deadletter import dead_letter_for
from schemas.models import ScoredTrace
from schemas.topics import DEADLETTER, POLICY_OBSERVATIONS, TRIGGERS
from streams.delivery import Deliveries, Send, patiently
from streams.retrain_policy import AgentRewardState, Observation, RetrainPolicy

log = logging.getLogger(__name__)
PROCESSOR_NAME = "retrain-policy"


def watch_agents(
    app: faust.App,
    policy: RetrainPolicy,
    partitions: int,
    codec: AvroCodec,
    deliveries: Deliveries,
) -> Callable[[ScoredTrace], Send]:
    """Declare the policy's agent; returns what sends a scored trace's observation to it."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    observations = app.topic(POLICY_OBSERVATIONS, partitions=partitions, internal=True, **raw)
    triggers = app.topic(TRIGGERS, **raw)
    deadletter = app.topic(DEADLETTER, **raw)
    states = app.Table(
        "agent_rewards", default=None, partitions=partitions, key_type=bytes, value_type=bytes
    )

    async def send(topic: faust.TopicT, key: bytes, value: bytes) -> Any:
        return await topic.send(key=key, value=value, force=True)

    def observed(trace: ScoredTrace) -> Send:
        seen = Observation(trace.agent_id, trace.revision, trace.reward)
        return functools.partial(send, observations, seen.agent_id.encode(), seen.to_bytes())

    def observe(event: Any) -> list[Send]:
        """The agent's state moved on by one observation, and what that sends. Everything
        that can need the registry happens before the state is written, so a retry after a
        registry outage does not count the trace twice."""
        try:
            seen = Observation.from_message(event.key or b"", event.value or b"")
            stored = states.get(event.key)
            state = AgentRewardState.model_validate_json(stored) if stored else AgentRewardState()
            state, trigger = policy.observe(state, seen)
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
            topic = message.topic.encode()
            return [functools.partial(send, deadletter, topic, codec.encode(letter))]
        if trigger is None or published is None:
            return []
        log.warning(
            "retrain trigger %s for %s: %s", trigger.trigger_id, trigger.agent_id, trigger.reason
        )
        return [functools.partial(send, triggers, trigger.agent_id.encode(), published)]

    @app.agent(observations)
    async def watch_rewards(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await deliveries.hold(event, await patiently(functools.partial(observe, event)))

    return observed
