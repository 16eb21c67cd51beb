"""What one memory entry does to tasks like it (`store.memory_queries.similar_traces`,
`atlas memory show --similar`): hand-built traces whose nearness to the entry's input and
whose shown / held back / neither split are known, against the real engine in both store
modes; and the CLI's table, its means, an agent with no traces and --similar 0."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from atlas.cli import app
from atlas.commands import memory as memory_cli
from schemas.models import MemoryEntry, ScoredTrace
from store.memory_queries import SimilarTrace, SimilarTraces, StatusMean, similar_traces
from store.writer import MemoryRow, StoreWriter
from tests.factories import interaction, scored

AGENT = "agent-s"
ENTRY = "c0ffee00" + "0" * 24
OTHER_ENTRY = "c0ffee00" + "1" * 24
ENTRY_INPUT = "Extract the city: Maria flew to Lisbon on Monday."
T0 = datetime(2026, 11, 26, 9, tzinfo=UTC)

# trace id -> (agent, task input, entry shown / held back / neither, rewards by revision).
# Nearest first, as the engine must rank them: the same text in capitals (distance 0), then
# one, two and three words changed, then tasks of other families.
Row = tuple[str, str, str, list[float]]
TRACES: dict[str, Row] = {
    "same-caps": (AGENT, ENTRY_INPUT.upper(), "shown", [0.9]),
    "one-word": (AGENT, "Extract the city: Maria flew to Lisbon on Friday.", "shown", [0.7]),
    # re-scored: the latest revision's reward (0.4) counts, not the first's
    "two-words": (AGENT, "Extract the city: Maria drove to Lisbon on Friday.", "held", [0.1, 0.4]),
    "three-words": (AGENT, "Extract the city: Pedro drove to Lisbon on Friday.", "neither", [0.5]),
    "apples": (AGENT, "Tom has 3 apples and buys 4 more. How many apples?", "held", [0.2]),
    "french": (AGENT, "Translate to French: good morning, my friend", "neither", [0.3]),
    # left out: the entry's own source trace, and another agent's identical task
    "source": (AGENT, ENTRY_INPUT, "neither", [0.95]),
    "other-agent": ("agent-other", ENTRY_INPUT, "shown", [0.0]),
}
NEAREST = ["same-caps", "one-word", "two-words", "three-words", "french", "apples"]
STATUS = {"shown": "shown", "held": "held back", "neither": "neither"}


def entry(entry_id: str = ENTRY, **changes: Any) -> MemoryEntry:
    fields: dict[str, Any] = {
        "agent_id": AGENT,
        "role": "student",
        "entry_id": entry_id,
        "input": ENTRY_INPUT,
        "output": "Lisbon",
        "source": "edit",
        "source_trace_id": "source",
        "reward": 0.95,
        "created_at": T0,
    }
    return MemoryEntry(**(fields | changes))


def traces() -> list[ScoredTrace]:
    rng = random.Random(16)
    out = []
    for i, (trace_id, (agent, text, status, rewards)) in enumerate(TRACES.items()):
        event = interaction(rng, agent, T0 + timedelta(minutes=i)).model_copy(
            update={
                "trace_id": trace_id,
                "task_input": text,
                "memory_entries": [ENTRY] if status == "shown" else [OTHER_ENTRY],
                "memory_held_back": [ENTRY] if status == "held" else [],
            }
        )
        for revision, reward in enumerate(rewards, start=1):
            out.append(
                scored(event, rng, revision).model_copy(update={"reward": reward}, deep=True)
            )
    return out


@pytest.fixture
def filled(store: Client) -> Client:
    StoreWriter(store).write([entry(), entry(OTHER_ENTRY, input="Translate: hello"), *traces()])
    return store


def test_the_nearest_traces_come_first_with_their_status_and_latest_reward(
    filled: Client,
) -> None:
    found = similar_traces(filled, AGENT, ENTRY, limit=10)
    assert [t.trace_id for t in found.traces] == NEAREST
    distances = [t.distance for t in found.traces]
    assert distances[0] == 0.0  # case-insensitive: the same 3-grams
    assert distances == sorted(distances) and len(set(distances[:4])) == 4
    assert all(0.0 < d < 0.5 for d in distances[1:4]) and all(d > 0.7 for d in distances[4:])
    for t in found.traces:
        _, text, status, rewards = TRACES[t.trace_id]
        assert (t.task_input, t.status, t.reward) == (text, STATUS[status], rewards[-1])


def test_the_means_are_those_of_the_similar_traces_per_status(filled: Client) -> None:
    found = similar_traces(filled, AGENT, ENTRY, limit=4)
    assert [t.trace_id for t in found.traces] == NEAREST[:4]
    by_status = {m.status: m for m in found.means}
    assert list(by_status) == ["shown", "held back", "neither"]
    assert by_status["shown"].traces == 2
    assert by_status["shown"].mean_reward == pytest.approx((0.9 + 0.7) / 2)
    assert (by_status["held back"].traces, by_status["held back"].mean_reward) == (1, 0.4)
    assert (by_status["neither"].traces, by_status["neither"].mean_reward) == (1, 0.5)
    dist = {t.trace_id: t.distance for t in found.traces}
    shown_mean = by_status["shown"].mean_distance
    assert shown_mean == pytest.approx((dist["same-caps"] + dist["one-word"]) / 2)
    everything = similar_traces(filled, AGENT, ENTRY, limit=100).means
    assert [(m.traces, m.mean_reward) for m in everything] == [
        (2, pytest.approx(0.8)),
        (2, pytest.approx(0.3)),
        (2, pytest.approx(0.4)),
    ]


def test_no_rows_for_an_entry_the_agent_does_not_have(filled: Client) -> None:
    empty = [StatusMean(s, 0, None, None) for s in ("shown", "held back", "neither")]
    for agent, entry_id, role in [
        ("agent-other", ENTRY, ""),  # another agent's view of the same id
        (AGENT, "c0ffee00" + "2" * 24, ""),  # no such entry
        (AGENT, ENTRY, "teacher"),  # another role
        (AGENT, "x' OR 1=1 --", ""),  # bound as a parameter: just an id no entry has
        (AGENT, ENTRY[:8], ""),  # a prefix is not the id
    ]:
        assert similar_traces(filled, agent, entry_id, role) == SimilarTraces([], empty)
    assert similar_traces(filled, AGENT, ENTRY, limit=0) == SimilarTraces([], empty)
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="limit must be between 0 and 2"):
            similar_traces(filled, AGENT, ENTRY, limit=bad)


def test_a_retired_entry_is_analysed_and_a_forgotten_one_is_not(filled: Client) -> None:
    later = T0 + timedelta(hours=1)
    retired = entry(retired_reason="lower reward when used", created_at=later)
    StoreWriter(filled).write([MemoryRow.of(retired, later)])
    assert [t.trace_id for t in similar_traces(filled, AGENT, ENTRY).traces] == NEAREST
    tombstone = MemoryRow(AGENT, "student", ENTRY, None, later + timedelta(hours=1))
    StoreWriter(filled).write([tombstone])
    assert similar_traces(filled, AGENT, ENTRY).traces == []


runner = CliRunner()


def stored_entry() -> Any:
    from store.memory_queries import StoredMemoryEntry

    return StoredMemoryEntry(**{**entry().model_dump(), "deleted": False})


def similar_answer(traces: list[SimilarTrace]) -> SimilarTraces:
    means = []
    for status in ("shown", "held back", "neither"):
        group = [t for t in traces if t.status == status]
        rewards = [t.reward for t in group]
        mean = sum(rewards) / len(rewards) if rewards else None
        means.append(StatusMean(status, len(group), None, mean))
    return SimilarTraces(traces, means)


@dataclass
class Cli:
    """The CLI's environment; the traces the fake store answers with; what `show` asked."""

    env: dict[str, str]
    answer: list[SimilarTrace] = field(default_factory=list)
    asked: list[tuple[str, str, str, int]] = field(default_factory=list)

    def show(self, *args: str) -> Any:
        command = ["memory", "show", "--agent", AGENT, ENTRY[:8], *args]
        return runner.invoke(app, command, env=self.env)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with the store answered from one entry and ``Cli.answer``'s traces."""
    env = {"ATLAS_HOME": str(tmp_path), "ATLAS_KAFKA_BOOTSTRAP": "localhost:1", "COLUMNS": "200"}
    state = Cli(env)

    def fake_similar(_settings: Any, e: Any, limit: int) -> SimilarTraces:
        state.asked.append((e.agent_id, e.entry_id, e.role, limit))
        return similar_answer(state.answer[:limit])

    monkeypatch.setattr(memory_cli, "_entries", lambda *args, **kwargs: [stored_entry()])
    monkeypatch.setattr(memory_cli, "_similar", fake_similar)
    return state


def test_show_prints_the_nearest_traces_and_the_means_after_the_entry(cli: Cli) -> None:
    cli.answer.extend(
        SimilarTrace(name, T0, TRACES[name][1], d, TRACES[name][3][-1], STATUS[TRACES[name][2]])
        for name, d in zip(NEAREST, [0.0, 0.1, 0.2, 0.3, 0.8, 0.9], strict=True)
    )
    result = cli.show()
    assert result.exit_code == 0, result.output
    assert cli.asked == [(AGENT, ENTRY, "student", 10)]
    out = result.output
    assert out.index("output:\nLisbon") < out.index("similar traces: the 6 traces of agent-s")
    assert "ngramDistanceCaseInsensitiveUTF8" in out
    row = next(line for line in out.splitlines() if "two-words" in line)
    assert "0.200" in row and "0.400" in row and "held back" in row
    assert "Extract the city: Maria drove to Lisbon on Friday." in row
    assert (
        "mean reward of these traces, by whether the entry was: shown 0.800 (n=2), held back"
        " 0.300 (n=2), neither 0.400 (n=2)" in out
    )
    cli.asked.clear()
    three = cli.show("--similar", "3")
    assert cli.asked == [(AGENT, ENTRY, "student", 3)]
    assert "held back 0.400 (n=1), neither - (n=0)" in three.output


def test_show_says_so_when_the_agent_has_no_traces_and_similar_0_asks_nothing(
    cli: Cli,
) -> None:
    result = cli.show()
    assert result.exit_code == 0, result.output
    assert "similar traces: none: agent-s has no stored traces other than the one" in (
        " ".join(result.output.split())
    )
    cli.asked.clear()
    off = cli.show("--similar", "0")
    assert off.exit_code == 0 and cli.asked == [] and "similar traces" not in off.output
    assert cli.show("--similar", "-1").exit_code == 2
    assert cli.show("--similar", "1001").exit_code == 2 and cli.asked == []


def test_show_against_the_real_embedded_store(tmp_path: Path) -> None:
    """The whole path, no fakes: the CLI opens the chdb store the rows were written to."""
    from store.client import connect
    from store.migrations import migrate

    url = f"chdb://{tmp_path / 'chdb'}"
    client = connect(url)
    migrate(client)
    StoreWriter(client).write([entry(), *traces()])
    env = {"ATLAS_HOME": str(tmp_path), "ATLAS_CLICKHOUSE_URL": url, "COLUMNS": "200"}
    result = Cli(env).show("--similar", "2")
    assert result.exit_code == 0, result.output
    assert "similar traces: the 2 traces of agent-s" in result.output
    assert "same-caps" in result.output and "one-word" in result.output
    assert "shown 0.800 (n=2), held back - (n=0), neither - (n=0)" in result.output
