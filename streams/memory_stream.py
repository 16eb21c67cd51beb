"""The memory processor as a stream: per-agent memory state in a changelog-backed table,
entries and tombstones to the compacted atlas.memory.v1.

Wired like the retrain policy (``streams/policy_stream.py``): the reward stream sends each
scored trace that carries a human verdict as a :class:`MemoryCandidate` to an internal topic
keyed by agent, in the same transaction as the trace; this handler reads that topic,
co-partitioned with its table, so one worker owns an agent's memory and sees its candidates in
order. The candidate carries the verdict and the user's edit, which a ScoredTrace does not
(they live in the reward processor's per-trace state), so reading atlas.rewards.v1 back would
not do.

The same topic carries a :class:`~streams.memory_retirement.MemoryUse` for every scored
trace (its used entry ids and reward, no texts): it updates the per-entry statistics in the
agent's state, and an entry the rule retires is published again with ``retired_reason`` and
the figures, logged at WARNING. To publish it with its texts, the table also keeps each
published entry under ``entry\x00<memory key>`` (same partition as its agent; removed with
the entry); an entry published before that was kept is retired with blank texts.

Guarantees: a candidate's entry, its tombstones and the agent's new state are committed with
the candidate's offset in one transaction (the engine's), so an entry is published once and a
replay after a crash publishes nothing twice. A candidate that cannot be read or that the
processor fails on is dead-lettered here and the stream goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from confluent_kafka import Message

from schemas.codec import AvroCodec
from schemas.models import MemoryEntry, memory_key, utcnow
from schemas.topics import MEMORY, MEMORY_CANDIDATES
from streams.engine import Batch, Handler, Table
from streams.handlers import BatchStates, each_or_dead_letter
from streams.memory import MemoryProcessor, MemoryState
from streams.memory_retirement import MemoryUse, Retirement, memory_message, record_use

log = logging.getLogger(__name__)
PROCESSOR_NAME = "memory"
MEMORY_CHANGELOG = "atlas-rewards-agent_memory-changelog"


def memory_stream(processor: MemoryProcessor, codec: AvroCodec) -> tuple[Table, Handler]:
    """The memory's table (agent -> MemoryState; ``entry\x00<memory key>`` -> the published
    entry, for its retirement) and the handler of its candidates and uses."""
    states = Table(MEMORY_CHANGELOG, (MEMORY_CANDIDATES,))
    role = processor.config.role

    def load(stored: bytes | None) -> MemoryState:
        return MemoryState.model_validate_json(stored) if stored else MemoryState()

    def text_key(agent_id: str, entry_id: str) -> bytes:
        return b"entry\x00" + memory_key(agent_id, role, entry_id).encode()

    def retired_entry(partition: int, agent_id: str, retirement: Retirement) -> MemoryEntry:
        stored = states.get(partition, text_key(agent_id, retirement.entry_id))
        if stored:
            entry = MemoryEntry.model_validate_json(stored)
        else:  # published before the table kept texts: the key and the figures only
            entry = MemoryEntry(
                agent_id=agent_id,
                role=role,
                entry_id=retirement.entry_id,
                input="",
                output="",
                source="approval",
                source_trace_id=retirement.entry_id,
                reward=0.0,
            )
        return entry.model_copy(
            update={
                "created_at": utcnow(),
                "retired_reason": retirement.reason,
                "uses": retirement.uses,
                "reward_when_used": retirement.reward_when_used,
                "reward_when_not_used": retirement.reward_when_held_back,
            }
        )

    def count_use(
        partition: int, state: MemoryState, use: MemoryUse
    ) -> tuple[MemoryState, list[MemoryEntry], str]:
        new, retirements, reason = record_use(state, use, processor.config)
        retired = [retired_entry(partition, use.agent_id, r) for r in retirements]
        return new, retired, reason

    def remember_one(pending: BatchStates[MemoryState], message: Message, batch: Batch) -> None:
        """One candidate decided (or one use counted) against its agent's state, as this batch
        left it (``pending``). Everything that can fail (reading, deciding, encoding) happens
        before anything is written or sent."""
        key, partition = message.key() or b"", message.partition()
        candidate = memory_message(message.value() or b"")
        if key != candidate.agent_id.encode():
            raise ValueError(f"key {key[:80]!r} differs from the agent {candidate.agent_id!r}")
        state = pending.get(partition, key)
        entries: list[MemoryEntry] = []
        removed: list[str] = []
        if isinstance(candidate, MemoryUse):
            new_state, entries, reason = count_use(partition, state, candidate)
            removed = [e.entry_id for e in entries]
        else:
            decision = processor.decide(state, candidate)
            new_state, reason, removed = decision.state, decision.reason, decision.tombstones
            entries = [] if decision.entry is None else [decision.entry]
        sends: list[tuple[bytes, bytes | None]] = []
        for entry in entries:
            sends.append((entry.key.encode(), codec.encode(entry)))
        for entry_id in [] if isinstance(candidate, MemoryUse) else removed:
            sends.append((memory_key(candidate.agent_id, role, entry_id).encode(), None))
        texts = [(text_key(candidate.agent_id, e), None) for e in removed]
        if not isinstance(candidate, MemoryUse):
            texts += [
                (text_key(e.agent_id, e.entry_id), e.model_dump_json().encode()) for e in entries
            ]
        if new_state is not state:
            pending.set(partition, key, new_state)
        for text, value in texts:
            batch.put(states, partition, text, value)
        for output_key, output in sends:
            batch.send(MEMORY, output_key, output)
        for entry in entries if isinstance(candidate, MemoryUse) else []:
            log.warning(
                "memory of %s/%s: entry %s retired: %s",
                entry.agent_id,
                role,
                entry.entry_id,
                entry.retired_reason,
            )
        log.debug(
            "memory of %s, trace %s rev %d: %s (%d entries)",
            candidate.agent_id,
            candidate.trace_id,
            candidate.revision,
            reason,
            len(new_state.entries),
        )

    def remember(messages: Sequence[Message], batch: Batch) -> None:
        """Each message against its agent's state; each state written once per batch: every
        scored trace sends a use, and a state of 200 entries is tens of KB of JSON to parse
        and write."""
        pending = BatchStates(states, load, lambda state: state.model_dump_json().encode())
        one = functools.partial(remember_one, pending)
        each_or_dead_letter(one, codec, PROCESSOR_NAME)(messages, batch)
        pending.write(batch)

    return states, remember
