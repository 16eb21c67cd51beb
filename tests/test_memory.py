"""The memory processor (streams/memory.py), its stream handler and its rows in the store's
writer, without Kafka: edits first, approvals only when rewarded, one answer not taught for
everything, rejects withdraw, the bound evicts the least useful with a tombstone, and hostile
input makes nothing and raises nothing."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from consumers.sink import ClickHouseSink
from schemas.codec import AvroCodec
from schemas.models import DeadLetter, FeedbackEvent, MemoryEntry, memory_key, split_memory_key
from schemas.topics import DEADLETTER, MEMORY, MEMORY_CANDIDATES
from store.writer import MEMORY_COLUMNS, MemoryRow, batches_for
from streams.engine import Batch
from streams.memory import (
    MemoryCandidate,
    MemoryProcessor,
    MemoryState,
    candidate_of,
    entry_id_of,
    terms_of,
)
from streams.memory_config import MemoryConfig
from streams.memory_stream import memory_stream
from tests.factories import interaction, scored
from tests.fakes import Msg

AGENT = "agent-m"


def candidate(
    verdict: str,
    text: str = "What is the capital of France?",
    answer: str = "Paris",
    reward: float = 0.9,
    edited: str | None = None,
    trace: str = "t-1",
) -> MemoryCandidate:
    return MemoryCandidate.model_construct(  # construct: hostile values get through, as bytes might
        agent_id=AGENT,
        trace_id=trace,
        revision=2,
        input=text,
        answer=answer,
        reward=reward,
        verdict=verdict,
        edited_text=edited,
    )


def processor(**settings: object) -> MemoryProcessor:
    return MemoryProcessor(MemoryConfig(**settings))  # type: ignore[arg-type]


def test_an_edit_makes_an_entry_with_the_users_text() -> None:
    decision = processor().decide(MemoryState(), candidate("edit", answer="Lyon", edited=" Paris "))
    entry = decision.entry
    assert entry is not None and decision.tombstones == []
    assert (entry.output, entry.source, entry.source_trace_id) == ("Paris", "edit", "t-1")
    assert entry.entry_id == entry_id_of(AGENT, "student", "what is  the CAPITAL of france?")
    assert entry.key == f"{AGENT}/student/{entry.entry_id}"
    assert entry.terms == ["what", "is", "the", "capital", "of", "france"]
    assert list(decision.state.entries) == [entry.entry_id]


@pytest.mark.parametrize(("reward", "remembered"), [(0.79, False), (0.8, True), (0.95, True)])
def test_an_approval_is_remembered_only_at_the_threshold(reward: float, remembered: bool) -> None:
    decision = processor(min_reward=0.8).decide(MemoryState(), candidate("approve", reward=reward))
    assert (decision.entry is not None) == remembered
    if decision.entry is not None:
        assert (decision.entry.source, decision.entry.output) == ("approval", "Paris")


def test_a_careless_approval_is_not_taught_over_an_edit() -> None:
    memory = processor()
    edited = memory.decide(MemoryState(), candidate("edit", answer="Lyon", edited="Paris"))
    approved = memory.decide(edited.state, candidate("approve", answer="Lyon", reward=1.0))
    assert approved.entry is None and approved.tombstones == []
    assert "edit" in approved.reason and approved.state is edited.state


def test_an_edit_replaces_an_approval_and_a_later_edit_replaces_it() -> None:
    memory = processor()
    first = memory.decide(MemoryState(), candidate("approve", answer="paris?", reward=0.9))
    second = memory.decide(first.state, candidate("edit", edited="Paris", trace="t-2"))
    third = memory.decide(second.state, candidate("edit", edited="Paris, France", trace="t-3"))
    assert first.entry and second.entry and third.entry
    assert first.entry.entry_id == second.entry.entry_id == third.entry.entry_id  # same key
    assert third.entry.output == "Paris, France" and len(third.state.entries) == 1
    replayed = memory.decide(third.state, candidate("edit", edited="Paris, France", trace="t-3"))
    assert replayed.entry is None and replayed.tombstones == []  # a replay publishes nothing


def test_approvals_teach_distinct_outputs() -> None:
    memory = processor()
    first = memory.decide(MemoryState(), candidate("approve", text="Is 7 prime?", answer="yes"))
    second = memory.decide(first.state, candidate("approve", text="Is 11 prime?", answer="Yes"))
    assert first.entry is not None and second.entry is None
    assert "same output" in second.reason
    edit = memory.decide(second.state, candidate("edit", text="Is 11 prime?", edited="yes"))
    assert edit.entry is not None  # a user's correction is taken even when the answer repeats


def test_a_later_reject_of_the_same_input_tombstones_the_entry() -> None:
    memory = processor()
    edited = memory.decide(MemoryState(), candidate("edit", edited="Paris"))
    assert edited.entry is not None
    rejected = memory.decide(
        edited.state, candidate("reject", text=" what is the capital of France? ")
    )
    assert rejected.entry is None and rejected.tombstones == [edited.entry.entry_id]
    assert rejected.state.entries == {}
    again = memory.decide(rejected.state, candidate("reject"))
    assert again.tombstones == [] and again.entry is None  # nothing left to withdraw


def test_an_approved_trace_whose_reward_falls_withdraws_its_entry() -> None:
    memory = processor(min_reward=0.8)
    approved = memory.decide(MemoryState(), candidate("approve", reward=0.9))
    rated_down = memory.decide(approved.state, candidate("approve", reward=0.5))
    assert approved.entry is not None
    assert rated_down.tombstones == [approved.entry.entry_id] and rated_down.entry is None


def test_the_bound_evicts_the_least_useful_with_a_tombstone() -> None:
    memory = processor(max_entries=3)
    state, ids = MemoryState(), {}
    plan = [
        ("edit", "q1", 0.1, 1.0),
        ("approve", "q2", 0.95, 2.0),
        ("approve", "q3", 0.85, 3.0),
    ]
    for verdict, text, reward, now in plan:
        decision = memory.decide(
            state, candidate(verdict, text=text, answer=text, edited=text, reward=reward), now=now
        )
        assert decision.entry is not None
        state, ids[text] = decision.state, decision.entry.entry_id
    # full: a new edit evicts the lowest-rewarded approval, never the edit
    full = memory.decide(state, candidate("edit", text="q4", edited="a4"), now=4.0)
    assert full.entry is not None and full.tombstones == [ids["q3"]]
    assert len(full.state.entries) == 3
    # an approval less useful than every entry is not published at all
    weak = memory.decide(full.state, candidate("approve", text="q5", answer="a5", reward=0.8))
    assert weak.entry is None and weak.tombstones == [] and weak.state is full.state
    # edits only: the oldest edit goes first
    edits_only = processor(max_entries=2)
    state = MemoryState()
    for now, text in enumerate(["e1", "e2", "e3"]):
        decision = edits_only.decide(
            state, candidate("edit", text=text, edited="x" + text), now=now
        )
        state = decision.state
    assert decision.tombstones == [entry_id_of(AGENT, "student", "e1")]


@pytest.mark.parametrize(
    ("verdict", "text", "edited", "reward"),
    [
        ("edit", "", "Paris", 0.5),
        ("edit", "   ", "Paris", 0.5),
        ("edit", "What is it?", "", 0.5),
        ("edit", "What is it?", None, 0.5),
        ("edit", "What is it?" * 1000, "Paris", 0.5),
        ("edit", "What is it?", "P" * 100_000, 0.5),
        ("edit", "?!?", "Paris", 0.5),
        ("approve", "What is it?", None, math.nan),
        ("approve", "What is it?", None, math.inf),
        ("edit", "What is it?", "Paris", -math.inf),
        ("approve", "What is it?", None, 7.0),
        ("reject", "", None, math.nan),
    ],
)
def test_hostile_candidates_make_nothing_and_raise_nothing(
    verdict: str, text: str, edited: str | None, reward: float
) -> None:
    decision = processor().decide(
        MemoryState(), candidate(verdict, text=text, edited=edited, reward=reward)
    )
    assert decision.entry is None and decision.tombstones == [] and decision.reason


def test_terms_are_distinct_lowercase_words_capped() -> None:
    assert terms_of("The cat saw THE dog; the end.", 10) == ["the", "cat", "saw", "dog", "end"]
    assert terms_of("a b c d", 2) == ["a", "b"]
    assert terms_of("x" * 500, 5) == ["x" * 40]


def test_a_candidate_is_the_latest_human_verdict_of_a_scored_trace() -> None:
    event = interaction(random.Random(3), agent_id=AGENT)
    trace = scored(event, random.Random(3), revision=3)

    def feedback(kind: str, text: str | None = None) -> FeedbackEvent:
        return FeedbackEvent(trace_id=event.trace_id, kind=kind, edited_text=text)  # type: ignore[arg-type]

    assert candidate_of(trace, []) is None
    assert candidate_of(trace, [feedback("rating")]) is None
    edit = candidate_of(trace, [feedback("edit", "41"), feedback("rating")])
    assert edit is not None and (edit.verdict, edit.edited_text) == ("edit", "41")
    assert (edit.input, edit.answer, edit.reward) == (
        event.task_input,
        event.final_answer,
        trace.reward,
    )
    withdrawn = candidate_of(trace, [feedback("edit", "41"), feedback("reject")])
    assert withdrawn is not None and withdrawn.verdict == "reject"
    assert MemoryCandidate.from_bytes(edit.to_bytes()) == edit


def test_the_stream_publishes_entries_and_tombstones_and_dead_letters_bad_candidates() -> None:
    codec = AvroCodec()
    table, handle = memory_stream(processor(), codec)
    table.partitions[0] = {}
    edit = MemoryCandidate(
        agent_id=AGENT, trace_id="t-9", revision=2, input="Is 9 prime?", answer="yes",
        reward=0.2, verdict="edit", edited_text="no",
    )  # fmt: skip
    reject = edit.model_copy(update={"verdict": "reject", "revision": 3})
    messages = [
        Msg(edit.to_bytes(), AGENT.encode(), 1),
        Msg(b"not json", AGENT.encode(), 2),
        Msg(edit.to_bytes(), b"someone-else", 3),
        Msg(reject.to_bytes(), AGENT.encode(), 4),
    ]
    batch = Batch()
    handle(messages, batch)  # type: ignore[arg-type]
    sent = [(o.topic, o.key, o.value) for o in batch.outputs if o.topic != table.changelog]
    entry_id = entry_id_of(AGENT, "student", "Is 9 prime?")
    key = memory_key(AGENT, "student", entry_id).encode()
    assert [(t, k) for t, k, _ in sent] == [
        (MEMORY, key),
        (DEADLETTER, MEMORY_CANDIDATES.encode()),
        (DEADLETTER, MEMORY_CANDIDATES.encode()),
        (MEMORY, key),
    ]
    entry = codec.decode(sent[0][2] or b"", MemoryEntry)
    assert (entry.output, entry.source) == ("no", "edit") and sent[3][2] is None  # tombstone
    letters = [codec.decode(v or b"", DeadLetter) for t, _, v in sent if t == DEADLETTER]
    assert [d.source_offset for d in letters] == [2, 3]
    assert MemoryState.model_validate_json(table.get(0, AGENT.encode()) or b"").entries == {}


def test_memory_rows_store_entries_and_tombstones_as_deleted_rows() -> None:
    entry = MemoryEntry(
        agent_id="a/b", role="student", entry_id="e1", input="q", output="a",
        source="approval", source_trace_id="t", reward=0.9, terms=["q"],
    )  # fmt: skip
    deleted_at = datetime(2026, 11, 27, tzinfo=UTC)
    assert split_memory_key(entry.key) == ("a/b", "student", "e1")
    tombstone = MemoryRow(*split_memory_key(entry.key), None, deleted_at)
    [table] = batches_for([entry, tombstone])
    assert table.table == "memory_entries" and table.columns == MEMORY_COLUMNS
    rows = [dict(zip(MEMORY_COLUMNS, row, strict=True)) for row in table.rows]
    assert [(r["entry_id"], r["deleted"]) for r in rows] == [("e1", 0), ("e1", 1)]
    assert rows[0]["version"] == entry.created_at and rows[1]["version"] == deleted_at
    with pytest.raises(ValueError, match="not a memory key"):
        split_memory_key("no-slashes")


@dataclass
class MemoryMsg(Msg):
    stamp_ms: int = 1_795_000_000_000

    def topic(self) -> str:
        return MEMORY

    def timestamp(self) -> tuple[int, int]:
        return (1, self.stamp_ms)  # TIMESTAMP_CREATE_TIME


def test_the_sink_reads_a_tombstone_as_a_deleted_row_never_as_a_bad_message() -> None:
    sink = SimpleNamespace(codec=AvroCodec())  # _memory_row needs only the codec
    entry = MemoryEntry(
        agent_id=AGENT, role="student", entry_id="e2", input="q", output="a",
        source="edit", source_trace_id="t", reward=0.1,
    )  # fmt: skip
    stored = ClickHouseSink._memory_row(sink, MemoryMsg(sink.codec.encode(entry), b"k"))  # type: ignore[arg-type]
    assert stored.entry == entry
    assert stored.version == datetime.fromtimestamp(1_795_000_000, UTC)
    gone = ClickHouseSink._memory_row(sink, MemoryMsg(None, entry.key.encode()))  # type: ignore[arg-type]
    assert (gone.agent_id, gone.role, gone.entry_id, gone.entry) == (AGENT, "student", "e2", None)
    with pytest.raises(ValueError, match="not a memory key"):  # the sink dead-letters it
        ClickHouseSink._memory_row(sink, MemoryMsg(None, b"garbage"))  # type: ignore[arg-type]
