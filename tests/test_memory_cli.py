"""`atlas memory list|show|forget`: ids checked before they reach a query or a key, a prefix
that names none or several entries is one line saying what to do, forget asks first and
publishes a tombstone under the entry's key; end to end on the real broker and store: an entry
listed, shown by a prefix, forgotten, its tombstone on the topic (same key and partition) and
its row marked deleted by the sink."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from atlas.cli import app
from atlas.commands import memory as memory_cli
from atlas.settings import Settings
from schemas.codec import AvroCodec
from schemas.models import MemoryEntry
from schemas.topics import MEMORY
from store.client import connect
from store.memory_queries import StoredMemoryEntry, memory_entries
from tests.test_cli_commands import FakeClient
from tests.workers import WorkerProcess, eventually, reader_at_end

runner = CliRunner()
ID_A = "abcdef01" + "0" * 24
ID_B = "abcdef01" + "1" * 24


def stored(entry_id: str, role: str = "student", text: str = "What is 2+2?") -> StoredMemoryEntry:
    return StoredMemoryEntry(
        agent_id="agent-a",
        role=role,
        entry_id=entry_id,
        input=text,
        output="4",
        source="edit",
        source_trace_id="trace-1",
        reward=0.9,
        terms=["what", "is", "2"],
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
        deleted=False,
    )


Cli = tuple[dict[str, str], list[tuple[Any, ...]], list[tuple[Any, ...]]]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI's environment, the store answered from two entries (their ids share 8 digits),
    what the store was asked and the tombstones published."""
    entries = [stored(ID_A), stored(ID_B, "teacher", "[bold]private[/] note")]
    asked: list[tuple[Any, ...]] = []
    published: list[tuple[Any, ...]] = []

    def fake_entries(
        _settings: Any, agent: str, role: str, prefix: str = "", include_deleted: bool = False
    ) -> list[StoredMemoryEntry]:
        asked.append((agent, role, prefix))
        return [e for e in entries if e.entry_id.startswith(prefix) and role in ("", e.role)]

    monkeypatch.setattr(memory_cli, "_entries", fake_entries)
    monkeypatch.setattr(memory_cli, "publish_tombstone", lambda *args: published.append(args))
    env = {"ATLAS_HOME": str(tmp_path), "ATLAS_KAFKA_BOOTSTRAP": "localhost:1", "COLUMNS": "200"}
    return env, asked, published


def memory(env: dict[str, str], *args: str, answer: str | None = None) -> Any:
    return runner.invoke(app, ["memory", *args], env=env, input=answer)


@pytest.mark.parametrize("bad", ["abc", "abcdef0", "xyz12345", "a" * 33, "abcdef01' OR 1=1"])
def test_an_id_that_is_not_8_to_32_hex_digits_is_refused_before_any_query(
    cli: Cli, bad: str
) -> None:
    env, asked, published = cli
    for command in (["show"], ["forget", "--yes"]):
        result = memory(env, *command, "--agent", "agent-a", bad)
        assert result.exit_code == 2, result.output
        assert "give 8 to 32 hex digits" in result.output
    assert asked == [] and published == []


def test_a_prefix_of_several_entries_or_of_none_says_what_to_do(cli: Cli) -> None:
    env, _, published = cli
    several = memory(env, "forget", "--yes", "--agent", "agent-a", "ABCDEF01")
    assert several.exit_code == 2
    assert "is the start of 2 entries of agent-a" in several.output
    assert "give more of the id, or --role" in several.output
    none = memory(env, "show", "--agent", "agent-a", "abcdef00")
    assert none.exit_code == 2 and "no live memory entry of agent-a" in none.output
    assert "atlas memory list --agent agent-a --all" in none.output
    assert published == []


def test_show_prints_the_whole_entry_and_a_role_narrows_a_prefix(cli: Cli) -> None:
    env, _, _ = cli
    shown = memory(env, "show", "--agent", "agent-a", "--role", "teacher", ID_B[:8])
    assert shown.exit_code == 0, shown.output
    assert f"entry_id: {ID_B}" in shown.output and "[bold]private[/] note" in shown.output
    assert "terms: what is 2" in shown.output and "reward: 0.900" in shown.output


def test_forget_asks_first_and_publishes_a_tombstone_under_the_key(cli: Cli) -> None:
    env, _, published = cli
    args = ["memory", "forget", "--agent", "agent-a", ID_A.upper()]
    declined = runner.invoke(app, args, env=env, input="n\n")
    assert declined.exit_code == 1 and "nothing forgotten" in declined.output
    assert published == []
    confirmed = runner.invoke(app, args, env=env, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    [(config, topic, key)] = published
    assert (topic, key) == (MEMORY, f"agent-a/student/{ID_A}")
    assert config["bootstrap.servers"] == "localhost:1"
    assert f"forgot agent-a/student/{ID_A}" in confirmed.output


def test_list_shows_short_ids_and_user_text_verbatim(cli: Cli) -> None:
    env, _, _ = cli
    listed = runner.invoke(app, ["memory", "list", "--agent", "agent-a"], env=env)
    assert listed.exit_code == 0, listed.output
    assert ID_A[:12] in listed.output and ID_A not in listed.output
    assert "[bold]private[/] note" in listed.output and "2 live entries" in listed.output


def test_the_memory_query_asks_for_what_was_given() -> None:
    row = {**stored(ID_A).__dict__, "deleted": 1}
    client = FakeClient([row])
    [found] = memory_entries(client, "agent-a", prefix="abcdef01", include_deleted=True)  # type: ignore[arg-type]
    assert found.deleted is True and found.entry_id == ID_A
    ((sql, parameters),) = client.asked
    assert "startsWith(entry_id, {prefix:String})" in sql and "FINAL" in sql
    assert parameters == {
        "agent": "agent-a",
        "role": "",
        "prefix": "abcdef01",
        "deleted": 1,
        "retired": 1,
        "limit": 10_000,
    }


def test_list_all_marks_a_retired_entry_with_its_figures(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _, _ = cli
    retired = StoredMemoryEntry(
        **{
            **stored(ID_A).__dict__,
            "retired_reason": "mean reward when used 0.400 ...",
            "uses": 21,
            "reward_when_used": 0.4,
            "reward_when_not_used": 0.75,
        }
    )
    monkeypatch.setattr(memory_cli, "_entries", lambda *a, **k: [retired, stored(ID_B)])
    listed = runner.invoke(app, ["memory", "list", "--agent", "agent-a", "--all"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "retired 21 shown: 0.400 vs 0.750 held back" in " ".join(listed.output.split())
    assert "1 live entry of agent-a" in listed.output


@pytest.mark.integration
def test_an_entry_is_listed_shown_by_prefix_forgotten_and_deleted_in_the_store(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    agent = f"forget-{uuid.uuid4().hex[:10]}"
    entry = MemoryEntry(
        agent_id=agent,
        role="student",
        entry_id=uuid.uuid4().hex,
        input="What is the capital of France?",
        output="Paris.",
        source="edit",
        source_trace_id=f"trace-{uuid.uuid4().hex[:8]}",
        reward=0.8,
        terms=["what", "capital", "france"],
    )
    env = {"ATLAS_HOME": str(stack_settings.home), "COLUMNS": "200"}
    store = connect(stack_settings.store())
    partitions: list[int] = []
    # as the stream writes entries: librdkafka's default partitioner
    producer = Producer({**kafka_config, "acks": "all"})
    producer.produce(
        MEMORY,
        key=entry.key.encode(),
        value=AvroCodec().encode(entry),
        on_delivery=lambda err, msg: partitions.append(-1 if err else msg.partition()),
    )
    producer.flush(30)
    assert partitions and partitions[0] >= 0

    def deleted() -> list[tuple[Any, ...]]:
        query = "SELECT deleted FROM memory_entries FINAL WHERE agent_id = {a:String}"
        return store.query(query, parameters={"a": agent}).result_rows

    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    reader = reader_at_end(kafka_config, [MEMORY])
    try:
        eventually(lambda: deleted() == [(0,)], 120, "the entry in the store", interval=0.5)
        listed = runner.invoke(app, ["memory", "list", "--agent", agent], env=env)
        assert listed.exit_code == 0, listed.output
        assert entry.entry_id[:12] in listed.output and "capital of France" in listed.output
        shown = runner.invoke(
            app, ["memory", "show", "--agent", agent, entry.entry_id[:8]], env=env
        )
        assert shown.exit_code == 0, shown.output
        assert "Paris." in shown.output and entry.source_trace_id in shown.output
        forgot = runner.invoke(
            app, ["memory", "forget", "--yes", "--agent", agent, entry.entry_id[:8]], env=env
        )
        assert forgot.exit_code == 0, forgot.output
        deadline = time.monotonic() + 30
        message = None
        while time.monotonic() < deadline and message is None:
            polled = reader.poll(0.5)
            if polled is not None and not polled.error() and polled.key() == entry.key.encode():
                message = polled
        assert message is not None, "no tombstone on the topic"
        assert message.value() is None and message.partition() == partitions[0]
        eventually(lambda: deleted() == [(1,)], 60, "the row deleted", interval=0.5)
        gone = runner.invoke(app, ["memory", "show", "--agent", agent, entry.entry_id], env=env)
        assert gone.exit_code == 2 and "--all" in gone.output
        listed_all = runner.invoke(app, ["memory", "list", "--all", "--agent", agent], env=env)
        assert "removed" in listed_all.output and "0 live entries" in listed_all.output
    finally:
        reader.close()
        sink.stop()
