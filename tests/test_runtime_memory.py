"""The agent's side of the memory without Kafka: BM25 ranking, tombstones, other agents'
entries, hostile entries, and the runtime showing recalled entries after the prompt version's
demonstrations, within the token budget, naming them in the InteractionEvent."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.memory import MemoryIndex, MemoryPolicy, MemorySubscriber, OtherInputs, recall
from runtime.prompts import StaticPrompts
from runtime.tasks import Task
from schemas.codec import AvroCodec
from schemas.models import Demonstration, MemoryEntry, memory_key
from schemas.terms import rough_tokens, terms_of
from tests.fakes import ScriptedBackend

AGENT = "agent-m"


def entry(
    entry_id: str,
    text: str,
    output: str = "ok",
    agent_id: str = AGENT,
    role: str = "student",
    trace: str = "trace-0",
    terms: list[str] | None = None,
) -> MemoryEntry:
    return MemoryEntry(
        agent_id=agent_id,
        role=role,
        entry_id=entry_id,
        input=text,
        output=output,
        source="edit",
        source_trace_id=trace,
        reward=0.9,
        terms=terms_of(text, 64) if terms is None else terms,
    )


def index_of(*entries: MemoryEntry) -> MemoryIndex:
    index = MemoryIndex()
    for e in entries:
        index.put(e)
    return index


PARCEL = "Order 12345: ship a blue lamp to Lisbon by Friday."
APPLES = "Tom has 12 apples and gets 5 more. How many apples does Tom have now?"
MARBLES = "Ana has 30 marbles and gives away 4. How many marbles does Ana have left?"


def test_bm25_ranks_the_most_similar_entry_first_and_drops_non_matches() -> None:
    index = index_of(entry("p", PARCEL), entry("a", APPLES), entry("m", MARBLES))
    found = index.scored("Kate has 7 apples and gets 2 more. How many apples now?", 3)
    assert found[0][1].entry_id == "a"
    assert found[0][0] > found[-1][0] > 0
    assert "p" not in {e.entry_id for _, e in found}  # shares no word: score 0, not returned
    assert index.search("Order 99999: ship wool socks to Lisbon", 1)[0].entry_id == "p"
    assert index.search("zebra quantum", 3) == []
    assert index.search(APPLES, 0) == [] and index.search("", 3) == []


def test_rare_terms_weigh_more_than_common_ones() -> None:
    index = index_of(
        entry("x", "the cat sat on the mat"),
        entry("y", "the dog sat on the log"),
        entry("z", "the bird sat in the tree"),
    )
    assert index.search("the dog sat", 3)[0].entry_id == "y"
    assert index.search("mat", 3)[0].entry_id == "x"


def test_min_score_and_k_limit_what_search_returns() -> None:
    index = index_of(entry("a", APPLES), entry("m", MARBLES), entry("p", PARCEL))
    everything = index.scored("How many apples does Tom have", 5)
    assert len(index.search("How many apples does Tom have", 1)) == 1
    top = everything[0][0]
    assert [e.entry_id for e in index.search("How many apples does Tom have", 5, top)] == []
    above = index.search("How many apples does Tom have", 5, everything[-1][0])
    assert len(above) == len(everything) - 1


def test_a_put_replaces_and_a_remove_forgets() -> None:
    index = index_of(entry("a", APPLES, output="17"), entry("m", MARBLES))
    index.put(entry("a", APPLES, output="seventeen"))
    assert len(index) == 2 and index.search(APPLES, 1)[0].output == "seventeen"
    assert index.remove("a") and not index.remove("a")
    assert [e.entry_id for e in index.search(APPLES, 3)] == ["m"]  # "how many ... have"
    index.remove("m")
    assert len(index) == 0 and index.search(APPLES, 3) == []


def test_hostile_entries_do_not_break_search() -> None:
    huge = "lorem " * 200_000 + " ".join(f"w{i}" for i in range(5000))
    index = index_of(
        entry("empty", "", terms=[]),  # nothing to index by: held, never found
        entry("blank", "   ", terms=["", "  "]),
        entry("huge", huge, output="x" * 100_000, terms=[f"t{i}" for i in range(10_000)]),
        entry("upper", "ignored", terms=["APPLES", "Gets More"]),  # re-tokenised
        entry("a", APPLES),
    )
    assert len(index) == 5
    found = [e.entry_id for e in index.search(APPLES, 5)]
    assert found[0] == "a" and "upper" in found and "empty" not in found
    assert index.search(huge, 3) is not None  # a huge task is cut, not fatal
    policy = MemoryPolicy(enabled=True, k=5, token_budget=512)
    shown = recall(index, policy, "t1 t2 t3 apples")
    assert "huge" not in shown.ids and shown.tokens <= 512  # over budget: passed over


def test_recall_keeps_to_the_token_budget_and_evaluation_never_sees_the_tasks_own_entry() -> None:
    long = entry("long", APPLES + " apples" * 400, output="17")
    short = entry("short", APPLES, output="17", trace="trace-1")
    index = index_of(long, short)
    budget = rough_tokens(short.input, short.output)
    assert recall(index, MemoryPolicy(enabled=True, token_budget=budget), APPLES).ids == ["short"]
    assert recall(index, MemoryPolicy(enabled=True, token_budget=budget - 1), APPLES).ids == []
    # the same input asked again (a new trace) retrieves its corrected entry
    assert "short" in recall(index, MemoryPolicy(enabled=True, token_budget=10_000), APPLES).ids
    # a held-out evaluation must not show a graded task its own answer, whichever trace made it
    heldout = recall(
        OtherInputs(index), MemoryPolicy(enabled=True, token_budget=10_000), "  " + APPLES.upper()
    )
    assert heldout.ids == ["long"]
    assert OtherInputs(index).search(APPLES, 1) == [long]  # still k entries when one is dropped
    assert recall(index, MemoryPolicy(enabled=False), APPLES).ids == []
    assert recall(index, MemoryPolicy(enabled=True, k=0), APPLES).ids == []


def _runtime(
    index: MemoryIndex, policy: MemoryPolicy | None = None
) -> tuple[Runtime, ScriptedBackend]:
    student = ScriptedBackend("student", lambda _c: "17")
    teacher = ScriptedBackend("teacher", lambda _c: "PASS")
    prompts = StaticPrompts(
        {"student": "Solve it.", "teacher": "Review."},
        {"student": [Demonstration(input="1+1?", output="2")]},
    )
    return Runtime(AGENT, student, teacher, prompts, memory=index, memory_policy=policy), student


def _turns(conversation: Sequence[Message]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conversation]


def test_recalled_entries_follow_the_fixed_demonstrations_and_are_named_in_the_event() -> None:
    index = index_of(
        entry("a", APPLES, output="17"),
        entry("m", MARBLES, output="26"),
        entry("p", PARCEL, output="Lisbon"),
    )
    runtime, student = _runtime(index, MemoryPolicy(enabled=True, k=2))
    task = Task("Tom has 12 apples and gets 5 more. How many apples does Tom have now?", "t1")
    event = runtime.run(task, "auto")
    assert event.memory_entries == ["a", "m"]  # best first
    [conversation] = student.batches[0]
    assert _turns(conversation) == [
        ("system", "Solve it."),
        ("user", "1+1?"),
        ("assistant", "2"),  # the prompt version's demonstrations first
        ("user", MARBLES),
        ("assistant", "26"),
        ("user", APPLES),  # the best match last, nearest the task
        ("assistant", "17"),
        ("user", task.input),
    ]
    assert runtime.memory_stats is not None and runtime.memory_stats.count == 1


def test_each_task_of_a_batch_gets_its_own_entries_and_paired_retries_keep_them() -> None:
    index = index_of(entry("a", APPLES, output="17"), entry("p", PARCEL, output="Lisbon"))
    runtime, student = _runtime(index, MemoryPolicy(enabled=True, k=1))
    student.respond = lambda _c: "wrong"
    runtime.teacher.respond = lambda c: "FAIL" if "PASS or FAIL" in c[-1]["content"] else "hint"  # type: ignore[attr-defined]
    events = runtime.run_many(
        [Task(APPLES, "t1"), Task("Where does order 5 ship? Lisbon or Oslo", "t2"), Task("xyz")],
        "paired",
    )
    assert [e.memory_entries for e in events] == [["a"], ["p"], []]
    retries = student.batches[-1]
    assert ("assistant", "17") in _turns(retries[0]) and ("assistant", "Lisbon") in _turns(
        retries[1]
    )


def test_the_student_versions_policy_decides_unless_the_runtime_overrides_it() -> None:
    index = index_of(entry("a", APPLES, output="17"), entry("m", MARBLES, output="26"))
    student = ScriptedBackend("student", lambda _c: "17")
    texts = {"student": "Solve it.", "teacher": "Review."}
    for policy, shown in (
        (MemoryPolicy(enabled=True, k=1), ["a"]),
        (MemoryPolicy(enabled=False), []),
    ):
        prompts = StaticPrompts(texts, memory=policy)
        runtime = Runtime(AGENT, student, student, prompts, memory=index)
        assert runtime.run(Task(APPLES), "auto").memory_entries == shown
    override = Runtime(
        AGENT, student, student, StaticPrompts(texts, memory=MemoryPolicy(enabled=False)),
        memory=index, memory_policy=MemoryPolicy(enabled=True, k=2),
    )  # fmt: skip
    assert override.run(Task(APPLES), "auto").memory_entries == ["a", "m"]


def test_without_memory_or_with_it_off_nothing_is_shown() -> None:
    runtime, student = _runtime(index_of(entry("a", APPLES)), MemoryPolicy(enabled=False))
    assert runtime.run(Task(APPLES), "auto").memory_entries == []
    assert len(student.batches[0][0]) == 4  # system, one demonstration, the task
    assert runtime.memory_stats is not None and runtime.memory_stats.count == 0
    student = ScriptedBackend("student", lambda _c: "x")
    plain = Runtime(AGENT, student, student, StaticPrompts({"student": "s", "teacher": "t"}))
    assert plain.run(Task(APPLES), "auto").memory_entries == [] and plain.memory_stats is None


def test_the_subscriber_keeps_only_its_agents_entries_and_applies_tombstones() -> None:
    codec = AvroCodec()
    memory = MemorySubscriber({}, AGENT, "student", codec)

    def send(e: MemoryEntry, key: str | None = None) -> None:
        memory._apply((key or e.key).encode(), codec.encode(e))

    send(entry("a", APPLES))
    send(entry("o", APPLES, agent_id="other-agent"))
    send(entry("t", APPLES, role="teacher"))
    send(entry("x", MARBLES), key=memory_key(AGENT, "student", "not-x"))  # key lies: refused
    memory._apply(b"not a memory key", b"junk")
    memory._apply(memory_key(AGENT, "student", "bad").encode(), b"\xc3\x01junk")
    assert [e.entry_id for e in memory.index.entries()] == ["a"]
    assert memory.skipped == 3
    assert [e.entry_id for e in memory.search(APPLES, 3)] == ["a"]
    memory._apply(memory_key("other-agent", "student", "a").encode(), None)  # not ours
    assert memory.wait_for("a", present=True, timeout=0.1)
    memory._apply(memory_key(AGENT, "student", "a").encode(), None)
    assert memory.wait_for("a", present=False, timeout=0.1)
    assert memory.search(APPLES, 3) == [] and memory.stats.count == 2


@pytest.mark.parametrize("size", [10, 200, 2000])
def test_lookup_latency_is_reported_per_search(size: int) -> None:
    # Not a timed assert: prints the figure, checks only that stats record every search.
    from runtime.tasks import generate

    tasks = generate("arithmetic", "train", size, 0) + generate("extraction", "train", size, 0)
    index = index_of(*(entry(f"e{i}", t.input) for i, t in enumerate(tasks[:size])))
    queries = [t.input for t in generate("arithmetic", "test", 50, 1)]
    started = time.perf_counter()
    for query in queries:
        index.search(query, 3)
    elapsed = time.perf_counter() - started
    assert index.stats.count == len(queries) and index.stats.max_s >= index.stats.mean_s > 0
    print(f"\n[memory] {size} entries: {elapsed / len(queries) * 1e6:.0f} µs per search")


def test_searches_stay_consistent_while_the_updater_puts_and_removes() -> None:
    import threading

    index = index_of(entry("a", APPLES))
    stop, failures = threading.Event(), []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            index.put(entry(f"m{i % 50}", f"{MARBLES} {i}"))
            index.remove(f"m{(i + 25) % 50}")
            i += 1

    updater = threading.Thread(target=churn)
    updater.start()
    try:
        for _ in range(2000):
            found = index.search(APPLES, 3)
            if not found or found[0].entry_id != "a":
                failures.append(found)
    finally:
        stop.set()
        updater.join()
    assert failures == [] and index.stats.count == 2000
