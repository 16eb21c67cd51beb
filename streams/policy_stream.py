"""The automatic retrain policy as a stream: per-agent state in a changelog-backed table,
triggers to atlas.triggers.v1.

The reward stream sends each scored trace's :class:`Observation` (agent, revision, reward) to
an internal topic keyed by agent, in the same transaction as the trace; the policy reads that
topic, co-partitioned with its table. It used to read the scored traces back from
atlas.rewards.v1 and regroup them through a repartition topic, decoding each whole trace
twice: that cost more than scoring them.

An observation that cannot be read (only the rewards role may write the topic) or that the
policy fails on is dead-lettered here, and the stream goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from confluent_kafka import Message

from schemas.codec import AvroCodec
from schemas.topics import POLICY_OBSERVATIONS, TRIGGERS
from streams.engine import Batch, Handler, Table
from streams.handlers import BatchStates, each_or_dead_letter
from streams.retrain_policy import AgentRewardState, Observation, RetrainPolicy

log = logging.getLogger(__name__)
PROCESSOR_NAME = "retrain-policy"
AGENTS_CHANGELOG = "atlas-rewards-agent_rewards-changelog"


def policy_stream(policy: RetrainPolicy, codec: AvroCodec) -> tuple[Table, Handler]:
    """The policy's table and the handler of its observations."""
    states = Table(AGENTS_CHANGELOG, (POLICY_OBSERVATIONS,))

    def load(stored: bytes | None) -> AgentRewardState:
        return AgentRewardState.model_validate_json(stored) if stored else AgentRewardState()

    def observe_one(pending: BatchStates[AgentRewardState], message: Message, batch: Batch) -> None:
        """The agent's state moved on by one observation, and the trigger that sends.
        Everything that can fail (reading, encoding) happens before the state changes."""
        key, partition = message.key() or b"", message.partition()
        seen = Observation.from_message(key, message.value() or b"")
        state, trigger = policy.observe(pending.get(partition, key), seen)
        published = None if trigger is None else codec.encode(trigger)
        pending.set(partition, key, state)
        if trigger is not None and published is not None:
            log.warning(
                "retrain trigger %s for %s: %s",
                trigger.trigger_id,
                trigger.agent_id,
                trigger.reason,
            )
            batch.send(TRIGGERS, trigger.agent_id.encode(), published)

    def observe(messages: Sequence[Message], batch: Batch) -> None:
        """Each observation against its agent's state; each state written once per batch."""
        pending = BatchStates(states, load, lambda state: state.model_dump_json().encode())
        one = functools.partial(observe_one, pending)
        each_or_dead_letter(one, codec, PROCESSOR_NAME)(messages, batch)
        pending.write(batch)

    return states, observe
