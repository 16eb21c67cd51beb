"""The memory processor as a stream: per-agent memory state in a changelog-backed table,
entries and tombstones to the compacted atlas.memory.v1.

Wired like the retrain policy (``streams/policy_stream.py``): the reward stream sends each
scored trace that carries a human verdict as a :class:`MemoryCandidate` to an internal topic
keyed by agent, in the same transaction as the trace; this handler reads that topic,
co-partitioned with its table, so one worker owns an agent's memory and sees its candidates in
order. The candidate carries the verdict and the user's edit, which a ScoredTrace does not
(they live in the reward processor's per-trace state), so reading atlas.rewards.v1 back would
not do.

Guarantees: a candidate's entry, its tombstones and the agent's new state are committed with
the candidate's offset in one transaction (the engine's), so an entry is published once and a
replay after a crash publishes nothing twice. A candidate that cannot be read or that the
processor fails on is dead-lettered here and the stream goes on.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from schemas.codec import AvroCodec
from schemas.models import memory_key
from schemas.topics import MEMORY, MEMORY_CANDIDATES
from streams.engine import Batch, Handler, Table
from streams.handlers import each_or_dead_letter
from streams.memory import MemoryCandidate, MemoryProcessor, MemoryState

log = logging.getLogger(__name__)
PROCESSOR_NAME = "memory"
MEMORY_CHANGELOG = "atlas-rewards-agent_memory-changelog"


def memory_stream(processor: MemoryProcessor, codec: AvroCodec) -> tuple[Table, Handler]:
    """The memory's table (agent -> MemoryState) and the handler of its candidates."""
    states = Table(MEMORY_CHANGELOG, (MEMORY_CANDIDATES,))
    role = processor.config.role

    def remember_one(message: Message, batch: Batch) -> None:
        """One candidate decided against its agent's state. Everything that can fail (reading,
        deciding, encoding) happens before the state is written or anything sent."""
        key, partition = message.key() or b"", message.partition()
        candidate = MemoryCandidate.from_bytes(message.value() or b"")
        if key != candidate.agent_id.encode():
            raise ValueError(f"key {key[:80]!r} differs from the agent {candidate.agent_id!r}")
        stored = states.get(partition, key)
        state = MemoryState.model_validate_json(stored) if stored else MemoryState()
        decision = processor.decide(state, candidate)
        sends: list[tuple[bytes, bytes | None]] = []
        if decision.entry is not None:
            sends.append((decision.entry.key.encode(), codec.encode(decision.entry)))
        for entry_id in decision.tombstones:
            sends.append((memory_key(candidate.agent_id, role, entry_id).encode(), None))
        if decision.state is not state:
            batch.put(states, partition, key, decision.state.model_dump_json().encode())
        for output_key, value in sends:
            batch.send(MEMORY, output_key, value)
        log.debug(
            "memory of %s, trace %s rev %d: %s (%d entries)",
            candidate.agent_id,
            candidate.trace_id,
            candidate.revision,
            decision.reason,
            len(decision.state.entries),
        )

    return states, each_or_dead_letter(remember_one, codec, PROCESSOR_NAME)
