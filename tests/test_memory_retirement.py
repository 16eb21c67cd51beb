"""Per-entry reward statistics and retirement (streams/memory_retirement.py), without Kafka: a
re-score replaces its earlier reward, an entry is compared with the similar tasks the runtime's
holdout kept it from and retired only on a confident drop, bad rewards are ignored, the stream
publishes the retired entry with its texts and figures, agents drop it, the store and contract
(MemoryEntry v2) keep the figures."""

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
from runtime.memory import MemoryIndex, MemorySubscriber, recall
from schemas.catalog import standalone
from schemas.codec import SCHEMA_DIR, AvroCodec, SchemaCatalog
from schemas.models import FeedbackEvent, MemoryEntry, MemoryPolicy
from schemas.topics import MEMORY
from store.writer import MEMORY_COLUMNS, batches_for
from streams.engine import Batch
from streams.memory import EntryFacts, MemoryCandidate, MemoryProcessor, MemoryState, entry_id_of
from streams.memory_config import MemoryConfig
from streams.memory_retirement import (
    MemoryUse,
    Retirement,
    memory_message,
    record_use,
    retirement_of,
    retirement_test,
    use_of,
)
from streams.memory_stream import memory_stream
from streams.processor import RewardProcessor
from tests.factories import interaction
from tests.fakes import Msg

AGENT = "agent-r"
V1_FINGERPRINT = "6b51fd48a67c14f4"  # MemoryEntry before retirement (CRC-64-AVRO, spec order)
CONFIG = MemoryConfig(retire_min_uses=3, retire_alpha=0.1, retire_tuned_uses=10)
TEST = retirement_test(CONFIG)


def facts(
    uses: int = 0, reward_sum: float = 0.0, held: int = 0, held_sum: float = 0.0
) -> EntryFacts:
    return EntryFacts(
        source="edit", reward=0.9, output="d", trace_id="t", created_at=0.0, uses=uses,
        reward_sum=reward_sum, held_back=held, held_back_sum=held_sum,
    )  # fmt: skip


def use(
    used: list[str], reward: float, trace: str = "t-1", revision: int = 1,
    previous: float | None = None, held: list[str] | None = None,
) -> MemoryUse:  # fmt: skip
    return MemoryUse.model_construct(  # construct: hostile numbers get through, as bytes might
        kind="use", agent_id=AGENT, trace_id=trace, revision=revision, used=used,
        held_back=held or [], reward=reward, previous_reward=previous,
    )  # fmt: skip


def arms(state: MemoryState, entry_id: str) -> tuple[int, float, int, float]:
    f = state.entries[entry_id]
    return f.uses, round(f.reward_sum, 9), f.held_back, round(f.held_back_sum, 9)


def test_shown_and_held_back_tasks_are_counted_and_a_rescore_replaces_its_reward() -> None:
    state = MemoryState(entries={"e1": facts(), "e2": facts()})
    state, retired, _ = record_use(state, use(["e1", "e1", "gone"], 0.5, held=["e2"]), CONFIG)
    state, _, _ = record_use(state, use([], 0.8, "t-2", held=["e1", "gone"]), CONFIG)
    assert retired == [] and "gone" not in state.entries
    assert arms(state, "e1") == (1, 0.5, 1, 0.8) and arms(state, "e2") == (0, 0.0, 1, 0.5)
    # human feedback re-scores both traces: the sums move, no count changes
    state, _, _ = record_use(state, use(["e1"], 0.1, revision=2, previous=0.5, held=["e2"]), CONFIG)
    state, _, _ = record_use(
        state, use([], 0.6, "t-2", revision=2, previous=0.8, held=["e1"]), CONFIG
    )
    assert arms(state, "e1") == (1, 0.1, 1, 0.6) and arms(state, "e2") == (0, 0.0, 1, 0.1)
    # a later revision whose previous reward is unknown is not counted twice
    same, _, reason = record_use(state, use(["e1"], 0.9, revision=3), CONFIG)
    assert same is state and "ignored" in reason
    # a re-score of an arm with no task yet (its count began after that trace) moves nothing
    state, _, _ = record_use(state, use(["e2"], 0.9, "t-3", revision=2, previous=0.1), CONFIG)
    assert arms(state, "e2") == (0, 0.0, 1, 0.1)
    # an entry named shown and held back (a hostile event) counts once, as shown
    state, _, _ = record_use(state, use(["e2"], 1.0, "t-4", held=["e2"]), CONFIG)
    assert arms(state, "e2") == (1, 1.0, 1, 0.1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.5])
def test_a_reward_that_is_not_a_number_in_0_1_is_ignored(bad: float) -> None:
    state = MemoryState(entries={"e1": facts()})
    for ignored in (
        use(["e1"], bad), use([], bad, held=["e1"]), use(["e1"], 0.5, revision=2, previous=bad),
    ):  # fmt: skip
        new, retired, reason = record_use(state, ignored, CONFIG)
        assert new is state and retired == [] and "ignored" in reason


def test_retirement_needs_both_arms_and_a_confident_drop() -> None:
    assert retirement_of("e", facts(2, 0.0, 40, 36.0), TEST) is None  # too few shown
    assert retirement_of("e", facts(40, 0.0, 2, 2.0), TEST) is None  # too few held back
    assert retirement_of("e", facts(5, 0.5, 5, 4.5), TEST) is None  # 0.1 vs 0.9: too few yet
    assert retirement_of("e", facts(200, 120.0, 50, 31.0), TEST) is None  # 0.60 vs 0.62: noise
    assert retirement_of("e", facts(40, 36.0, 40, 4.0), TEST) is None  # better when shown
    retired = retirement_of("e", facts(20, 2.0, 20, 18.0), TEST)  # 0.1 vs 0.9
    assert retired is not None and (retired.uses, retired.held_back) == (20, 20)
    assert (retired.reward_when_used, retired.reward_when_held_back) == (0.1, pytest.approx(0.9))
    assert (
        "0.100 over the 20 tasks shown it is below 0.900 over the 20 similar tasks"
        in (retired.reason)
        and "at alpha 0.1" in retired.reason
    )


def test_a_good_entry_of_a_hard_template_stays_and_a_wrong_edit_goes() -> None:
    """The live run's case. Memory on for every task: an entry of a hard template (its tasks
    score 0.3 without it, 0.45 with it) beside easy tasks scoring 0.9, and a user's wrong edit
    on an easy template (0.9 without it, 0.1 with it). Compared with the agent's other traces
    the good entry looked harmful; compared with its own held-back tasks only the edit is."""
    rng = random.Random(4)
    state = MemoryState(entries={"hard": facts(), "wrong": facts()})
    retired: list[str] = []
    for i in range(400):
        entry, shown_p, held_p = rng.choice([("hard", 0.45, 0.3), ("wrong", 0.1, 0.9)])
        if entry in [r for r in retired]:
            continue
        held = rng.random() < 0.2
        p_good = held_p if held else shown_p
        reward = 1.0 if rng.random() < p_good else 0.0
        named = ([], [entry]) if held else ([entry], [])
        state, out, _ = record_use(state, use(named[0], reward, f"t-{i}", held=named[1]), CONFIG)
        retired += [r.entry_id for r in out]
        state, _, _ = record_use(state, use([], 0.9, f"easy-{i}"), CONFIG)  # other traces
    assert retired == ["wrong"] and "hard" in state.entries


def test_an_entry_that_does_not_lower_the_reward_is_rarely_retired() -> None:
    """The guarantee, checked at every use: 200 harmless entries (the same reward shown or
    held back), 300 matching tasks each with a 20% holdout; at most alpha retire."""
    rng = random.Random(11)
    retired = 0
    for _ in range(200):
        p = rng.uniform(0.2, 0.9)
        shown = held = 0
        shown_sum = held_sum = 0.0
        for _ in range(300):
            reward = float(rng.random() < p)
            if rng.random() < 0.2:
                held, held_sum = held + 1, held_sum + reward
            else:
                shown, shown_sum = shown + 1, shown_sum + reward
            if min(shown, held) >= TEST.min_samples and retirement_of(
                "e", facts(shown, shown_sum, held, held_sum), TEST
            ):
                retired += 1
                break
    assert retired / 200 <= CONFIG.retire_alpha


def test_a_state_kept_by_an_earlier_rule_drops_its_baselines() -> None:
    old_entry = {**facts(3, 1.5).model_dump(), "traces_before": 4, "reward_before": 2.0}
    old = {"entries": {"e": old_entry}, "unused_count": 7, "unused_reward_sum": 3.5,
           "traces": 9, "traces_reward_sum": 4.0, "retired": {}}  # fmt: skip
    state = MemoryState.model_validate(old)
    assert arms(state, "e") == (3, 1.5, 0, 0.0)
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
    retired: list[Retirement] = []
    for i in range(20):
        for one in (use([], 1.0, f"u-{i}", held=[entry_id]), use([entry_id], 0.0, f"x-{i}")):
            if not retired:
                state, retired, _ = record_use(state, one, CONFIG)
    assert [r.entry_id for r in retired] == [entry_id] and entry_id not in state.entries
    assert state.retired == {entry_id: state.retired[entry_id]}
    again = memory.decide(state, edit)
    assert again.entry is None and "retired" in again.reason
    other = memory.decide(state, edit.model_copy(update={"edited_text": "No: 9 = 3 x 3."}))
    assert other.entry is not None  # a different answer for the input is taught


def test_the_runtime_holds_each_entry_back_from_a_hashed_share_of_its_tasks() -> None:
    index = MemoryIndex()
    for n in range(3):
        index.put(MemoryEntry(
            agent_id=AGENT, role="student", entry_id=f"e{n}", input=f"What is {n} plus 2?",
            output=str(n + 2), source="edit", source_trace_id="t", reward=1.0,
            terms=["what", "is", str(n), "plus", "2"],
        ))  # fmt: skip
    policy = MemoryPolicy(enabled=True, k=3)
    none = recall(index, policy, "What is 1 plus 2?", "trace-1", 0.0)
    assert len(none.entries) == 3 and none.held_back == ()
    recalls = [recall(index, policy, "What is 1 plus 2?", f"trace-{i}", 0.25) for i in range(2000)]
    held = sum(len(r.held_back) for r in recalls)
    assert 0.22 < held / 6000 < 0.28  # each entry, independently, about the share
    for r in recalls[:50]:
        assert set(r.ids).isdisjoint(r.held_back) and len(r.ids) + len(r.held_back) == 3
        # a replay of the same trace decides the same
        assert recall(index, policy, "What is 1 plus 2?", "trace-7", 0.25) == recalls[7]


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
        "kind", "agent_id", "trace_id", "revision", "used", "held_back", "reward",
        "previous_reward",
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
    uses = [use([], 1.0, f"u-{i}", held=[entry_id]) for i in range(12)] + [
        use([entry_id], 0.0, f"x-{i}") for i in range(12)
    ]
    messages = [Msg(m.to_bytes(), AGENT.encode(), i) for i, m in enumerate([edit, *uses])]
    batch = Batch()
    with caplog.at_level(logging.WARNING, logger="streams.memory_stream"):
        handle(messages, batch)  # type: ignore[arg-type]
    sent = [o for o in batch.outputs if o.topic == MEMORY]
    assert len(sent) == 2 and sent[0].key == sent[1].key
    retired = codec.decode(sent[1].value or b"", MemoryEntry)
    assert (retired.input, retired.output) == ("Is 9 prime?", "no") and 3 <= retired.uses <= 12
    assert retired.reward_when_used == 0.0 and retired.reward_when_not_used == 1.0
    assert retired.retired_reason and "similar tasks it was held back from" in (
        retired.retired_reason
    )
    assert f"entry {entry_id} retired" in caplog.text
    state = MemoryState.model_validate_json(table.get(0, AGENT.encode()) or b"")
    assert state.entries == {} and entry_id in state.retired
    [rows] = batches_for([retired])
    row = dict(zip(MEMORY_COLUMNS, rows.rows[0], strict=True))
    assert (row["retired_reason"], row["uses"], row["deleted"]) == (
        retired.retired_reason,
        retired.uses,
        0,
    )


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
