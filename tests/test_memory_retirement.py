"""Per-entry reward statistics and retirement (streams/memory_retirement.py), without Kafka: a
re-score replaces its earlier reward, the rule fires only past the minimum uses and the
margin, bad rewards are ignored, the stream publishes the retired entry with its texts and
figures, agents drop it, the store and contract (MemoryEntry v2) keep the figures."""

from __future__ import annotations

import io
import json
import logging
import math
import random

import fastavro
import pytest

from rim.judges import FormatJudge, ReferenceMatchJudge
from rim.reward import Rim
from runtime.memory import MemorySubscriber
from schemas.catalog import standalone
from schemas.codec import SCHEMA_DIR, AvroCodec, SchemaCatalog
from schemas.models import FeedbackEvent, MemoryEntry
from schemas.topics import MEMORY
from store.writer import MEMORY_COLUMNS, batches_for
from streams.engine import Batch
from streams.memory import EntryFacts, MemoryCandidate, MemoryProcessor, MemoryState, entry_id_of
from streams.memory_config import MemoryConfig
from streams.memory_retirement import (
    MemoryUse,
    memory_message,
    record_use,
    retirement_of,
    use_of,
)
from streams.memory_stream import memory_stream
from streams.processor import RewardProcessor
from tests.factories import interaction
from tests.test_memory import Msg

AGENT = "agent-r"
V1_FINGERPRINT = "6b51fd48a67c14f4"  # MemoryEntry before retirement (CRC-64-AVRO, spec order)
CONFIG = MemoryConfig(retire_min_uses=3, retire_margin=0.1)


def facts(uses: int = 0, reward_sum: float = 0.0) -> EntryFacts:
    return EntryFacts(
        source="edit", reward=0.9, output="d", trace_id="t", created_at=0.0, uses=uses,
        reward_sum=reward_sum,
    )  # fmt: skip


def use(
    used: list[str], reward: float, trace: str = "t-1", revision: int = 1,
    previous: float | None = None,
) -> MemoryUse:  # fmt: skip
    return MemoryUse.model_construct(  # construct: hostile numbers get through, as bytes might
        kind="use", agent_id=AGENT, trace_id=trace, revision=revision, used=used,
        reward=reward, previous_reward=previous,
    )  # fmt: skip


def test_uses_and_the_agents_traces_are_counted_and_a_rescore_replaces_its_reward() -> None:
    state = MemoryState(entries={"e1": facts(), "e2": facts()})
    state, retired, _ = record_use(state, use(["e1", "e1", "gone"], 0.5), CONFIG)
    state, _, _ = record_use(state, use([], 0.8, "t-2"), CONFIG)
    assert retired == [] and (state.entries["e1"].uses, state.entries["e1"].reward_sum) == (1, 0.5)
    assert state.entries["e2"].uses == 0 and "gone" not in state.entries
    assert (state.traces, state.traces_reward_sum) == (2, pytest.approx(1.3))
    # human feedback re-scores both traces: the sums move, no count changes
    state, _, _ = record_use(state, use(["e1"], 0.1, revision=2, previous=0.5), CONFIG)
    state, _, _ = record_use(state, use([], 0.6, "t-2", revision=2, previous=0.8), CONFIG)
    assert (state.entries["e1"].uses, state.entries["e1"].reward_sum) == (1, pytest.approx(0.1))
    assert (state.traces, state.traces_reward_sum) == (2, pytest.approx(0.7))
    # a later revision whose previous reward is unknown is not counted twice
    same, _, reason = record_use(state, use(["e1"], 0.9, revision=3), CONFIG)
    assert same is state and "ignored" in reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.5])
def test_a_reward_that_is_not_a_number_in_0_1_is_ignored(bad: float) -> None:
    state = MemoryState(entries={"e1": facts()})
    for ignored in (use(["e1"], bad), use([], bad), use(["e1"], 0.5, revision=2, previous=bad)):
        new, retired, reason = record_use(state, ignored, CONFIG)
        assert new is state and retired == [] and "ignored" in reason


def test_retirement_compares_with_the_traces_since_the_entry_that_did_not_use_it() -> None:
    # 2 traces before the entry (reward 0.2 each, not its period), then 3 that did not use it
    # (mean 0.8, whether or not they used other entries) and its own uses
    def state(uses: int, reward_sum: float, others: int = 3) -> MemoryState:
        return MemoryState(
            traces=2 + others + uses, traces_reward_sum=0.4 + 0.8 * others + reward_sum
        )

    def entry(uses: int, reward_sum: float) -> EntryFacts:
        return facts(uses, reward_sum).model_copy(update={"traces_before": 2, "reward_before": 0.4})

    assert retirement_of("e", entry(2, 0.0), state(2, 0.0), CONFIG) is None  # too few uses
    assert (
        retirement_of("e", entry(3, 0.0), state(3, 0.0, others=2), CONFIG) is None
    )  # too few others
    assert retirement_of("e", entry(3, 2.1), state(3, 2.1), CONFIG) is None  # 0.7: within margin
    retired = retirement_of("e", entry(3, 1.5), state(3, 1.5), CONFIG)  # 0.5 vs 0.8
    assert retired is not None and (retired.uses, retired.not_used) == (3, 3)
    assert (retired.reward_when_used, retired.reward_when_not_used) == (0.5, pytest.approx(0.8))
    assert (
        "0.500 over 3 traces is below 0.800 over the 3 traces since it was made" in retired.reason
    )


def test_a_bad_entry_among_good_ones_is_retired_though_every_trace_used_memory() -> None:
    """The live run's case: memory on for every task, k entries each; the no-memory baseline
    never grows, yet the entry whose traces score lower than its period's others retires."""
    memory = MemoryProcessor(CONFIG)
    state = MemoryState()
    for i in range(4):  # before memory: low reward, used nothing
        state, _, _ = record_use(state, use([], 0.3, f"before-{i}"), CONFIG)
    for entry_id, text in (("good", "What is 2+2?"), ("bad", "What is 3+3?")):
        candidate = MemoryCandidate(
            agent_id=AGENT, trace_id=f"t-{entry_id}", revision=1, input=text, answer="x",
            reward=0.5, verdict="edit", edited_text=text,
        )  # fmt: skip
        decision = memory.decide(state, candidate)
        state = decision.state
    good, bad = (
        entry_id_of(AGENT, "student", "What is 2+2?"),
        entry_id_of(AGENT, "student", "What is 3+3?"),
    )
    retired = []
    for i in range(4):
        state, out, _ = record_use(state, use([good], 0.9, f"g-{i}"), CONFIG)
        retired += out
        state, out, _ = record_use(state, use([good, bad], 0.2, f"b-{i}"), CONFIG)
        retired += out
    assert [r.entry_id for r in retired] == [bad]
    assert retired[0].reward_when_used == pytest.approx(0.2)
    assert retired[0].reward_when_not_used == pytest.approx(0.9)


def test_a_state_kept_before_counts_all_traces_afresh() -> None:
    old = {"entries": {}, "unused_count": 7, "unused_reward_sum": 3.5, "retired": {}}
    state = MemoryState.model_validate(old)
    assert (state.traces, state.traces_reward_sum) == (0, 0.0)
    with pytest.raises(ValueError):
        MemoryState.model_validate({**old, "surprise": 1})


def test_a_retired_entry_leaves_the_state_and_its_output_is_not_taught_again() -> None:
    memory = MemoryProcessor(CONFIG)
    edit = MemoryCandidate(
        agent_id=AGENT, trace_id="t-0", revision=2, input="Is 9 prime?", answer="yes",
        reward=0.2, verdict="edit", edited_text="no",
    )  # fmt: skip
    state = memory.decide(MemoryState(), edit).state
    entry_id = entry_id_of(AGENT, "student", "Is 9 prime?")
    for i in range(3):
        state, retired, _ = record_use(state, use([], 0.9, f"u-{i}"), CONFIG)
    for i in range(3):
        state, retired, _ = record_use(state, use([entry_id], 0.3, f"x-{i}"), CONFIG)
    assert [r.entry_id for r in retired] == [entry_id] and entry_id not in state.entries
    assert state.retired == {entry_id: state.retired[entry_id]}
    again = memory.decide(state, edit)
    assert again.entry is None and "retired" in again.reason
    other = memory.decide(state, edit.model_copy(update={"edited_text": "No: 9 = 3 x 3."}))
    assert other.entry is not None  # a different answer for the input is taught


def test_the_reward_processor_carries_the_previous_reward_of_a_rescored_trace() -> None:
    processor = RewardProcessor(Rim([ReferenceMatchJudge(), FormatJudge()]))
    event = interaction(random.Random(3))
    first = processor.on_interaction(event, None, processor.judge([event])[0])
    assert first.scored and first.previous_reward is None
    reject = FeedbackEvent(trace_id=event.trace_id, kind="reject")
    second = processor.on_feedback(reject, first.state)
    assert second.scored and second.previous_reward == first.scored.reward
    replayed = processor.on_feedback(reject, second.state)  # sent again: replaces itself
    assert replayed.scored and replayed.previous_reward == second.scored.reward
    message = use_of(second.scored, second.previous_reward)
    assert memory_message(message.to_bytes()) == message
    assert json.loads(message.to_bytes()).keys() == {
        "kind", "agent_id", "trace_id", "revision", "used", "reward", "previous_reward",
    }  # fmt: skip


def test_the_stream_publishes_a_retirement_with_texts_and_figures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codec = AvroCodec()
    table, handle = memory_stream(MemoryProcessor(CONFIG), codec)
    table.partitions[0] = {}
    edit = MemoryCandidate(
        agent_id=AGENT, trace_id="t-0", revision=2, input="Is 9 prime?", answer="yes",
        reward=0.2, verdict="edit", edited_text="no",
    )  # fmt: skip
    entry_id = entry_id_of(AGENT, "student", "Is 9 prime?")
    uses = [use([], 0.9, f"u-{i}") for i in range(3)] + [
        use([entry_id], 0.2, f"x-{i}") for i in range(3)
    ]
    messages = [Msg(m.to_bytes(), AGENT.encode(), i) for i, m in enumerate([edit, *uses])]
    batch = Batch()
    with caplog.at_level(logging.WARNING, logger="streams.memory_stream"):
        handle(messages, batch)  # type: ignore[arg-type]
    sent = [o for o in batch.outputs if o.topic == MEMORY]
    assert len(sent) == 2 and sent[0].key == sent[1].key
    retired = codec.decode(sent[1].value or b"", MemoryEntry)
    assert (retired.input, retired.output, retired.uses) == ("Is 9 prime?", "no", 3)
    assert retired.reward_when_used == pytest.approx(0.2)
    assert retired.reward_when_not_used == pytest.approx(0.9)
    assert retired.retired_reason and "by more than 0.1" in retired.retired_reason
    assert f"entry {entry_id} retired" in caplog.text
    state = MemoryState.model_validate_json(table.get(0, AGENT.encode()) or b"")
    assert state.entries == {} and entry_id in state.retired
    [rows] = batches_for([retired])
    row = dict(zip(MEMORY_COLUMNS, rows.rows[0], strict=True))
    assert (row["retired_reason"], row["uses"], row["deleted"]) == (retired.retired_reason, 3, 0)


def test_an_agent_drops_a_retired_entry_from_its_index() -> None:
    codec = AvroCodec()
    subscriber = MemorySubscriber({}, AGENT, "student", codec)
    entry = MemoryEntry(
        agent_id=AGENT, role="student", entry_id="e1", input="Is 9 prime?", output="no",
        source="edit", source_trace_id="t", reward=0.2, terms=["is", "9", "prime"],
    )  # fmt: skip
    subscriber._apply(entry.key.encode(), codec.encode(entry))
    assert "e1" in subscriber.index
    retired = entry.model_copy(update={"retired_reason": "worse", "uses": 20})
    subscriber._apply(entry.key.encode(), codec.encode(retired))
    assert "e1" not in subscriber.index and subscriber.search("Is 9 prime?", 3) == []


def test_a_v1_memory_entry_decodes_with_the_v2_defaults() -> None:
    v1 = json.loads((SCHEMA_DIR / "history" / "io.atlas_stream.MemoryEntry.v1.avsc").read_text())
    assert [f["name"] for f in v1["fields"]] == list(MemoryEntry.model_fields)[:10]
    current = standalone("io.atlas_stream.MemoryEntry")
    assert current["fields"][:10] == v1["fields"]
    assert bytes.fromhex(V1_FINGERPRINT) in SchemaCatalog.load().writers
    entry = MemoryEntry(
        agent_id=AGENT, role="student", entry_id="e1", input="q", output="a",
        source="approval", source_trace_id="t", reward=0.9,
    )  # fmt: skip
    assert AvroCodec().encode(entry)[2:10].hex() != V1_FINGERPRINT  # written as v2 today
    body = io.BytesIO()  # the v1 writer, as the stream wrote entries before
    names = {f["name"] for f in v1["fields"]}
    fastavro.schemaless_writer(
        body, v1, {k: v for k, v in entry.model_dump().items() if k in names}
    )
    message = b"\xc3\x01" + bytes.fromhex(V1_FINGERPRINT) + body.getvalue()
    decoded = AvroCodec().decode(message, MemoryEntry)
    assert decoded.retired_reason is None and decoded.uses == 0
    assert decoded.reward_when_used is None and decoded.reward_when_not_used is None
    assert decoded.model_dump(exclude={"created_at"}) == entry.model_dump(exclude={"created_at"})
