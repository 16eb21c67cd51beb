"""The store in both modes: embedded chdb in this process, and ClickHouse HTTP served by the
local store process. Same code, same assertions."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from schemas.models import InteractionEvent, MemoryEntry, ScoredTrace
from store.client import StoreUnavailable, connect
from store.migrations import MIGRATIONS, applied_versions, migrate
from store.queries import reward_by_agent
from store.writer import MemoryRow, StoreWriter
from tests.factories import interaction, one_of_each, scored

pytestmark = pytest.mark.integration

N_TRACES = 100_000
BATCH = 20_000


def _traces(n: int, seed: int) -> list[ScoredTrace]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 25, tzinfo=UTC)
    traces = []
    for i in range(n):
        event = interaction(rng, agent_id=f"agent-{i % 3}", at=start + timedelta(seconds=i))
        traces.append(scored(event, rng))
    return traces


@pytest.fixture(scope="module")
def traces() -> list[ScoredTrace]:
    return _traces(N_TRACES, seed=11)


def test_migrations_are_idempotent(store: Client) -> None:
    assert migrate(store) == []
    assert applied_versions(store) == {m.version for m in MIGRATIONS}


def test_100k_traces_in_batches_replay_without_duplicates(
    store: Client, traces: list[ScoredTrace]
) -> None:
    writer = StoreWriter(store, batch_size=BATCH)
    started = time.perf_counter()
    sent = writer.write(traces, dedup_token="offsets-0-99999")
    elapsed = time.perf_counter() - started
    print(f"\ninserted {N_TRACES} traces (+ judge scores) in {elapsed:.2f}s")
    assert sent == N_TRACES * 3  # one trace row and two judge-score rows each
    # The same batch again, as a sink replaying after a crash: dropped by its dedup tokens.
    writer.write(traces, dedup_token="offsets-0-99999")
    assert store.query("SELECT count() FROM scored_traces").result_rows[0][0] == N_TRACES
    assert store.query("SELECT count() FROM judge_scores").result_rows[0][0] == 2 * N_TRACES
    # Replayed without a token (a different batching): the engine still converges on
    # (trace, revision).
    writer.write(traces[:1000])
    assert store.query("SELECT count() FROM scored_traces FINAL").result_rows[0][0] == N_TRACES

    rows = {
        row["agent_id"]: row for row in reward_by_agent(store, datetime(2026, 1, 1, tzinfo=UTC))
    }
    for agent in ("agent-0", "agent-1", "agent-2"):
        mine = [t for t in traces if t.agent_id == agent]
        assert rows[agent]["traces"] == len(mine)
        assert rows[agent]["mean_reward"] == pytest.approx(sum(t.reward for t in mine) / len(mine))
        assert rows[agent]["tokens"] == sum(t.interaction.usage.total_tokens for t in mine)
        assert rows[agent]["escalation_rate"] == pytest.approx(
            sum(t.escalated for t in mine) / len(mine)
        )


def test_latest_revision_wins(store: Client) -> None:
    first = _traces(50, seed=5)
    revised = [
        t.model_copy(update={"revision": 2, "reward": 0.99, "feedback_count": 1})
        for t in first[:20]
    ]
    writer = StoreWriter(store)
    writer.write(first)
    writer.write(revised)
    rows = store.query(
        "SELECT revision, count(), avg(reward) FROM latest_traces"
        " GROUP BY revision ORDER BY revision"
    ).result_rows
    assert rows[0][:2] == (1, 30)
    assert rows[1][:2] == (2, 20) and rows[1][2] == pytest.approx(0.99)


def test_every_event_type_has_a_table(store: Client) -> None:
    events = [e for e in one_of_each(random.Random(9)) if not isinstance(e, InteractionEvent)]
    StoreWriter(store).write(events)
    for table in (
        "scored_traces",
        "judge_scores",
        "feedback",
        "prompt_versions",
        "checkpoints",
        "triggers",
        "jobs",
        "dead_letters",
        "memory_entries",
    ):
        assert store.query(f"SELECT count() FROM {table}").result_rows[0][0] >= 1, table
    original = store.query(
        "SELECT original FROM dead_letters", column_formats={"original": "bytes"}
    ).result_rows[0][0]
    assert original == b"\x00\xffgarbage"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1", "cannot reach ClickHouse at http://default@127.0.0.1:1/default"),
        ("ftp://example", "unsupported ClickHouse URL scheme 'ftp'"),
        ("localhost:8123", "invalid ClickHouse URL"),
    ],
)
def test_wrong_clickhouse_url_is_one_clear_line(url: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(StoreUnavailable) as info:
        connect(url)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - started < 30, "a wrong URL must not hang"


def test_a_stored_trace_carries_the_time_it_was_inserted(store: Client) -> None:
    [trace] = _traces(1, seed=5)  # created on 2026-11-25: stored_at is not its timestamp
    before = datetime.now(UTC) - timedelta(seconds=1)  # the clocks' resolution: ms vs µs
    StoreWriter(store).write([trace])
    after = datetime.now(UTC) + timedelta(seconds=1)
    [[stored_at, latency]] = store.query(
        "SELECT stored_at, dateDiff('millisecond', created_at, stored_at) FROM latest_traces"
        " WHERE trace_id = {t:String}",
        parameters={"t": trace.trace_id},
    ).result_rows
    assert before <= stored_at.replace(tzinfo=UTC) <= after
    assert latency == (stored_at.replace(tzinfo=UTC) - trace.interaction.created_at) // timedelta(
        milliseconds=1
    )


def test_a_tombstone_deletes_its_memory_entry_and_a_later_entry_revives_it(store: Client) -> None:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    kept, gone = (
        MemoryEntry(
            agent_id="agent-m", role="student", entry_id=entry_id, input=f"q {entry_id}",
            output="a", source="edit", source_trace_id="t", reward=0.2, terms=["q"],
            created_at=at,
        )
        for entry_id in ("kept", "gone")
    )  # fmt: skip
    writer = StoreWriter(store)
    writer.write([MemoryRow.of(kept, at), MemoryRow.of(gone, at)])
    writer.write([MemoryRow("agent-m", "student", "gone", None, at + timedelta(seconds=1))])

    def current() -> list[str]:
        rows = store.query("SELECT entry_id FROM memory_current ORDER BY entry_id").result_rows
        return [r[0] for r in rows]

    assert current() == ["kept"]
    deleted = store.query("SELECT deleted FROM memory_entries FINAL WHERE entry_id = 'gone'")
    assert deleted.result_rows == [(1,)]
    writer.write([MemoryRow.of(gone, at + timedelta(seconds=2))])  # the same input taught again
    assert current() == ["gone", "kept"]


def test_a_prompt_versions_memory_policy_is_stored_and_read_back(store: Client) -> None:
    """Migration 8's column holds the student's memory policy; a row stored without it (as
    before the migration) reads as the default policy, as its event does."""
    from schemas.models import MemoryPolicy, PromptVersion
    from store.queries import prompt_history

    policy = MemoryPolicy(enabled=False, k=5, token_budget=300, min_score=1.5)
    version = PromptVersion(
        agent_id="a", role="student", version=1, text="t", source="manual", memory=policy
    )
    StoreWriter(store).write([version])
    store.command(
        "INSERT INTO prompt_versions (agent_id, role, version, text, source, created_at)"
        " VALUES ('a', 'student', 2, 'old', 'gepa', now64(3))"
    )
    stored = prompt_history(store, "a", "student")
    assert [v.memory for v in stored] == [policy, MemoryPolicy()]


def test_a_rollouts_decision_is_its_latest_status_even_at_the_same_time(store: Client) -> None:
    """The statuses of one batch of traces can carry one time: the decision is still the
    rollout's latest (it is final), and comes first among them in the history. Migrations 14
    and 15 keep the non-degradation figures, the kind, and a checkpoint's canary label."""
    from schemas.models import CheckpointEvent
    from schemas.rollouts import RolloutStatus
    from store.queries import checkpoint_history, rollout_statuses

    at = datetime(2026, 11, 28, 1, tzinfo=UTC)

    def status(rollout: str, state: str, when: datetime) -> RolloutStatus:
        return RolloutStatus(
            agent_id="a", role="student", rollout_id=rollout, canary_version=2,
            production_version=1, state=state, started_at=at, updated_at=when,  # type: ignore[arg-type]
            canary_count=20, production_count=20, lower=-0.5, upper=0.1, alpha=0.05,
            reason=state, paired_count=20, non_degradation=0.2, non_degradation_upper=0.57,
            right_count=10, retention=0.0, retention_upper=0.4, kind="checkpoint",
        )  # fmt: skip

    later = at + timedelta(seconds=5)
    for stored_apart in (  # apart: in parts of their own, read in any order
        [status("r1", "rolled_back", at)],
        [status("r1", "running", at), status("r2", "running", later)],
    ):
        StoreWriter(store).write(stored_apart)
    latest = rollout_statuses(store, "a", "student")
    assert [(s.rollout_id, s.state) for s in latest] == [("r2", "running"), ("r1", "rolled_back")]
    times = {"started_at", "updated_at"}  # the store's DateTime64 comes back naive
    assert latest[1].model_dump(exclude=times) == status("r1", "rolled_back", at).model_dump(
        exclude=times
    )  # every figure read back
    history = rollout_statuses(store, "a", latest=False)
    assert [(s.rollout_id, s.state) for s in history] == [
        ("r2", "running"), ("r1", "rolled_back"), ("r1", "running"),
    ]  # fmt: skip
    canary = CheckpointEvent(
        agent_id="a", role="student", version=3, uri="file:///c", base_model="b",
        source="grpo", label="canary", rollout_id="r3", traffic_share=0.1,
    )  # fmt: skip
    StoreWriter(store).write([canary])
    [stored] = checkpoint_history(store, "a", "student")
    assert stored.model_dump(exclude={"created_at"}) == canary.model_dump(exclude={"created_at"})
