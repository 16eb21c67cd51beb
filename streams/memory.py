"""The memory processor's logic, free of Kafka: an agent's memory state and one candidate in,
the new state and the entries and tombstones to publish on ``atlas.memory.v1`` out.

A candidate is a scored trace that carries a human verdict (its latest approve, reject or
edit). Per input (``entry_id``: agent, role and the input normalised, so the same task asked
again names the same entry):

* an **edit** makes an entry whose output is the user's text, replacing whatever the input
  had (a later edit supersedes an earlier one, and an approval);
* an **approval** makes an entry from the agent's answer only if the trace's reward is at
  least ``min_reward``, the input has no edit (a careless approval is never taught over a
  user's correction), no other entry already teaches the same output (as the demonstration
  proposer: one answer is not taught for everything), and it does not lower the reward of an
  approval it replaces; an approved trace whose reward later falls below the threshold
  withdraws the entry it made;
* a **reject** of the same input tombstones its entry, whatever made it.

Bounded: at most ``max_entries`` per agent/role. Past it the least useful entry is evicted
with a tombstone; least useful = an approval before any edit (edits are what users taught),
among approvals the lowest reward, then (and among edits) the oldest. A newcomer that would
itself be the one evicted is not published at all.

Never raises on bad input: an empty or oversized input or output, no retrieval terms, or a
reward that is not a finite number in [0, 1] makes nothing, with the reason.

Retrieval terms: the distinct lower-cased word tokens (``\\w+``) of the input, in order of
first appearance, at most ``max_terms`` of at most 40 characters: enough for BM25-style
lexical matching on the agent's side and for ClickHouse's ``hasAny``; an agent that wants
character n-grams or embeddings computes them from ``input``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.models import FeedbackEvent, Id, MemoryEntry, MemorySource, ScoredTrace, utcnow
from schemas.terms import normalised, terms_of
from streams.memory_config import MemoryConfig

Verdict = Literal["approve", "reject", "edit"]
VERDICTS: frozenset[str] = frozenset({"approve", "reject", "edit"})


def entry_id_of(agent_id: str, role: str, text: str) -> str:
    """Stable id of the entry for ``text``: the same input (up to case and spacing) asked of the
    same agent and role always names the same entry, so a later one replaces it."""
    digest = hashlib.sha256(f"{agent_id}\x00{role}\x00{normalised(text)}".encode())
    return digest.hexdigest()[:32]


def output_digest(text: str) -> str:
    return hashlib.sha256(normalised(text).encode()).hexdigest()[:16]


class MemoryCandidate(BaseModel):
    """What the memory processor needs of a scored trace, as the reward stream sends it on
    the internal candidates topic (keyed by agent, JSON): the trace's texts, reward and its
    latest human verdict."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    agent_id: Id
    trace_id: Id
    revision: int
    input: str
    answer: str
    reward: float
    verdict: Verdict
    edited_text: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> MemoryCandidate:
        """ValueError (pydantic's included) if ``value`` is not a candidate."""
        return cls.model_validate_json(value)


def candidate_of(trace: ScoredTrace, feedback: Sequence[FeedbackEvent]) -> MemoryCandidate | None:
    """The candidate a scored trace makes with the feedback merged into it (in arrival
    order), or None when no human approved, rejected or edited it: the latest such verdict
    counts (a reject after an edit withdraws the edit)."""
    latest = next((f for f in reversed(feedback) if f.kind in VERDICTS), None)
    if latest is None:
        return None
    return MemoryCandidate(
        agent_id=trace.agent_id,
        trace_id=trace.trace_id,
        revision=trace.revision,
        input=trace.interaction.task_input,
        answer=trace.interaction.final_answer,
        reward=trace.reward,
        verdict=latest.kind,  # type: ignore[arg-type]  # narrowed by VERDICTS
        edited_text=latest.edited_text,
    )


# Baselines of earlier retirement rules (the traces that used no entry, then all the agent's
# traces): both compared an entry with other tasks, so they are dropped, not misread.
LEGACY_BASELINE = ("unused_count", "unused_reward_sum", "traces", "traces_reward_sum")
LEGACY_ENTRY_BASELINE = ("traces_before", "reward_before")


def _without(data: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in keys}
    return data


class EntryFacts(BaseModel):
    """What the state keeps of a published entry: enough to decide, not its texts (a state of
    ``max_entries`` stays far below a Kafka message's size)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    source: MemorySource
    reward: float
    output: str  # output_digest of the entry's output
    trace_id: str
    created_at: float
    # Its use (streams/memory_retirement.py): scored traces that were shown it, and those it
    # matched but the holdout kept it from, each with their reward sum.
    uses: int = Field(0, ge=0)
    reward_sum: float = Field(0.0, ge=0)
    held_back: int = Field(0, ge=0)
    held_back_sum: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _drop_the_old_baseline(cls, data: Any) -> Any:
        return _without(data, LEGACY_ENTRY_BASELINE)


class MemoryState(BaseModel):
    """One agent's memory for the configured role, as its changelog-backed table keeps it:
    its entries with their use and the outputs of retired entries (entry id -> output
    digest, at most ``max_entries``, oldest dropped first), which are not taught again for the
    same input."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    entries: dict[str, EntryFacts] = Field(default_factory=dict)
    retired: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _drop_the_old_baseline(cls, data: Any) -> Any:
        """States kept by an earlier rule hold its baseline; it is dropped, not misread."""
        return _without(data, LEGACY_BASELINE)


def usefulness(facts: EntryFacts) -> tuple[bool, float, float]:
    """Sort key, least useful first: approvals before edits, lower reward, older."""
    edit = facts.source == "edit"
    return (edit, 0.0 if edit else facts.reward, facts.created_at)


@dataclass
class MemoryDecision:
    """The agent's new state, the entry to publish (new or replacing its key's) and the entry
    ids to tombstone; ``reason`` says why, for logs and tests."""

    state: MemoryState
    entry: MemoryEntry | None = None
    tombstones: list[str] = field(default_factory=list)
    reason: str = ""


class MemoryProcessor:
    def __init__(self, config: MemoryConfig):
        self.config = config

    def refusal(self, candidate: MemoryCandidate, output: str) -> str | None:
        """Why the candidate cannot make an entry with ``output`` (None: it can)."""
        config = self.config
        text = candidate.input.strip()
        if not math.isfinite(candidate.reward) or not 0.0 <= candidate.reward <= 1.0:
            return f"reward {candidate.reward!r} is not a number in [0, 1]"
        if not text or not output:
            return "empty input or output"
        if len(text) > config.max_input_chars or len(output) > config.max_output_chars:
            return "input or output longer than the configured maximum"
        if not terms_of(text, 1):
            return "the input has no word to retrieve it by"
        return None

    def decide(
        self, state: MemoryState, candidate: MemoryCandidate, now: float | None = None
    ) -> MemoryDecision:
        """The decision for one candidate; ``state`` is not changed (the decision's is new)."""
        now = time.time() if now is None else now
        entry_id = entry_id_of(candidate.agent_id, self.config.role, candidate.input)
        existing = state.entries.get(entry_id)
        if candidate.verdict == "reject":
            if existing is None:
                return MemoryDecision(state, reason="rejected; nothing remembered for the input")
            return self._without(state, entry_id, "a reject supersedes the entry")
        if candidate.verdict == "edit":
            source: MemorySource = "edit"
            output = (candidate.edited_text or "").strip()
        else:
            source, output = "approval", candidate.answer.strip()
        refused = self.refusal(candidate, output)
        if refused is not None:
            return MemoryDecision(state, reason=refused)
        if source == "approval":
            why_not = self._approval_refusal(state, candidate, entry_id, output)
            if why_not is not None:
                withdrawn = (
                    existing is not None
                    and existing.source == "approval"
                    and existing.trace_id == candidate.trace_id
                    and candidate.reward < self.config.min_reward
                )
                if withdrawn:
                    return self._without(state, entry_id, f"{why_not}; the entry is withdrawn")
                return MemoryDecision(state, reason=why_not)
        digest = output_digest(output)
        if existing is not None and (existing.source, existing.output) == (source, digest):
            return MemoryDecision(state, reason="the same entry is already remembered")
        if state.retired.get(entry_id) == digest:
            return MemoryDecision(state, reason="the same output was retired for the input")
        # the use of the same output carries over; a new output starts afresh, from now
        kept = existing if existing is not None and existing.output == digest else None
        facts = EntryFacts(
            source=source,
            reward=candidate.reward,
            output=digest,
            trace_id=candidate.trace_id,
            created_at=now,
            uses=kept.uses if kept else 0,
            reward_sum=kept.reward_sum if kept else 0.0,
            held_back=kept.held_back if kept else 0,
            held_back_sum=kept.held_back_sum if kept else 0.0,
        )
        entries = {**state.entries, entry_id: facts}
        tombstones = []
        while len(entries) > self.config.max_entries:
            victim = min(entries, key=lambda key: usefulness(entries[key]))
            if victim == entry_id:
                return MemoryDecision(state, reason="less useful than every entry of a full memory")
            del entries[victim]
            tombstones.append(victim)
        entry = MemoryEntry(
            agent_id=candidate.agent_id,
            role=self.config.role,
            entry_id=entry_id,
            input=candidate.input.strip(),
            output=output,
            source=source,
            source_trace_id=candidate.trace_id,
            reward=candidate.reward,
            terms=terms_of(candidate.input, self.config.max_terms),
            created_at=utcnow(),
        )
        reason = f"{source} {'replaces' if existing else 'makes'} the entry"
        new_state = state.model_copy(update={"entries": entries})
        return MemoryDecision(new_state, entry, tombstones, reason)

    def _approval_refusal(
        self, state: MemoryState, candidate: MemoryCandidate, entry_id: str, output: str
    ) -> str | None:
        existing = state.entries.get(entry_id)
        if candidate.reward < self.config.min_reward:
            return f"approved with reward {candidate.reward:.3f} < {self.config.min_reward}"
        if existing is not None and existing.source == "edit":
            return "a user's edit of the input is not replaced by an approval"
        if existing is not None and existing.reward > candidate.reward:
            return "the input's approved entry has a higher reward"
        digest = output_digest(output)
        if any(f.output == digest for k, f in state.entries.items() if k != entry_id):
            return "another entry already teaches the same output"
        return None

    def _without(self, state: MemoryState, entry_id: str, reason: str) -> MemoryDecision:
        entries = {k: v for k, v in state.entries.items() if k != entry_id}
        new_state = state.model_copy(update={"entries": entries})
        return MemoryDecision(new_state, tombstones=[entry_id], reason=reason)
