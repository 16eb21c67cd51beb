"""The scored-trace stream end to end on the real broker and store, with the real worker
processes: 1,000 interactions and 400 feedback events (100 of them before their interaction),
500 malformed messages mixed in, the reward worker killed with SIGKILL halfway, and the store
stopped for 30 seconds. Exactly one latest row per trace must come out, nothing lost."""

from __future__ import annotations

import io
import random
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Producer

from atlas import stack
from atlas.settings import Settings
from runtime.producer import EventProducer
from schemas.codec import AvroCodec, SchemaCatalog
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import FEEDBACK, INTERACTIONS
from store.client import connect
from tests.factories import interaction
from tests.workers import WorkerProcess, eventually, wait_consumed


def _malformed(
    run: str, rng: random.Random, codec: AvroCodec, n: int
) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of bad messages: random bytes, the wrong event type, missing fields."""
    catalog = SchemaCatalog.load()
    full = catalog.current[InteractionEvent.schema_name]
    truncated = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Partial",
            "fields": [
                f for f in full["fields"] if f["name"] in ("event_id", "trace_id", "agent_id")
            ],
        }
    )
    header = b"\xc3\x01" + catalog.fingerprint(InteractionEvent.schema_name)
    bad = []
    for i in range(n):
        key = f"{run}-bad-{i}".encode()
        kind = i % 5
        if kind in (0, 1):
            bad.append(
                (INTERACTIONS if kind == 0 else FEEDBACK, key, rng.randbytes(rng.randint(1, 300)))
            )
        elif kind == 2:
            feedback = FeedbackEvent(trace_id=key.decode(), kind="approve")
            bad.append((INTERACTIONS, key, codec.encode(feedback)))
        elif kind == 3:
            bad.append((FEEDBACK, key, codec.encode(interaction(rng, "bad"))))
        else:
            body = io.BytesIO()
            fastavro.schemaless_writer(
                body, truncated, {"event_id": "e", "trace_id": key.decode(), "agent_id": "x"}
            )
            bad.append((INTERACTIONS, key, header + body.getvalue()))
    return bad


def test_thousand_traces_survive_a_worker_kill_and_a_store_outage(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"e2e-{run}"
    rng = random.Random(7)
    codec = AvroCodec()
    events = [interaction(rng, agent) for _ in range(1000)]
    bad = _malformed(run, rng, codec, 500)
    raw = Producer({**kafka_config, "acks": "all"})
    store = connect(stack_settings.store())

    def latest() -> list[tuple]:
        return store.query(
            "SELECT trace_id, revision, feedback_count, human_score, escalated FROM latest_traces"
            " WHERE agent_id = {a:String}",
            parameters={"a": agent},
        ).result_rows

    rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        with EventProducer(kafka_config) as producer:
            for event in events[:100]:  # feedback before its interaction
                producer.record_feedback(event.trace_id, "approve", agent_id=agent)
        wait_consumed(kafka_config, "atlas-rewards", FEEDBACK, timeout=120)

        with EventProducer(kafka_config) as producer:
            for i, event in enumerate(events[:500]):
                producer.record_interaction(event)
                if i % 2 == 0:
                    topic, key, value = bad[i // 2]
                    raw.produce(topic, key=key, value=value)
            assert raw.flush(30) == 0
        eventually(lambda: len(latest()) >= 200, 120, "the first traces to be stored", interval=2)
        rewards.kill9()  # halfway: SIGKILL, no clean shutdown
        rewards = WorkerProcess(stack_settings, "rewards", tmp_path)

        with EventProducer(kafka_config) as producer:
            for i, event in enumerate(events[500:]):
                producer.record_interaction(event)
                if i % 2 == 0:
                    topic, key, value = bad[250 + i // 2]
                    raw.produce(topic, key=key, value=value)
            assert raw.flush(30) == 0
        assert stack.stop_store(stack_settings)
        time.sleep(30)  # the store is down; the sink must hold its batch and retry
        stack.start_store(stack_settings)
        try:
            eventually(
                lambda: len(latest()) == 1000, 300, "all 1000 traces in ClickHouse", interval=2
            )
        except AssertionError as timeout:  # say where the missing traces went
            missing = {e.trace_id for e in events} - {r[0] for r in latest()}
            refused = store.query(
                "SELECT error_type, count() FROM dead_letters FINAL WHERE key IN {k:Array(String)}"
                " GROUP BY error_type",
                parameters={"k": sorted(missing)},
            ).result_rows
            raise AssertionError(
                f"{timeout}: {len(missing)} missing, dead-lettered by type: {refused}; logs in "
                f"{tmp_path}"
            ) from None

        with EventProducer(kafka_config) as producer:
            for i, event in enumerate(events[100:400]):
                kind = "reject" if i < 150 else "approve"
                producer.record_feedback(event.trace_id, kind, agent_id=agent)
        eventually(
            lambda: sum(r[1] == 2 for r in latest()) == 300, 180, "300 second revisions", interval=2
        )
    finally:
        rewards.stop()
        sink.stop()

    rows = {r[0]: r for r in latest()}
    assert len(rows) == 1000 and set(rows) == {e.trace_id for e in events}
    duplicates = store.query(
        "SELECT count() FROM (SELECT trace_id, revision, count() AS c FROM scored_traces FINAL"
        " WHERE agent_id = {a:String} GROUP BY trace_id, revision HAVING c > 1)",
        parameters={"a": agent},
    ).result_rows[0][0]
    assert duplicates == 0
    for i, event in enumerate(events):
        _, revision, feedback_count, human, escalated = rows[event.trace_id]
        assert escalated is False
        if i < 100:  # waited in the table, merged into the first score
            assert (revision, feedback_count, human) == (1, 1, 1.0)
        elif i < 400:
            assert (revision, feedback_count, human) == (2, 1, 0.0 if i < 250 else 1.0)
        else:
            assert (revision, feedback_count, human) == (1, 0, None)
    judged = store.query(
        "SELECT judge, count(), countIf(score IS NOT NULL) FROM judge_scores FINAL"
        " WHERE agent_id = {a:String} AND revision = 1 GROUP BY judge ORDER BY judge",
        parameters={"a": agent},
    ).result_rows
    assert judged == [
        ("format", 1000, 1000),
        ("reference_match", 1000, 1000),
        ("tool_success", 1000, 0),
    ]
    letters = store.query(
        "SELECT count(), uniqExact(source_topic, source_partition, source_offset),"
        " countIf(reason = '') FROM dead_letters FINAL"
        " WHERE processor = 'rewards' AND startsWith(key, {run:String})",
        parameters={"run": f"{run}-bad-"},
    ).result_rows[0]
    assert letters == (500, 500, 0)


def test_monitor_and_replay_on_the_real_pipeline(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from atlas.cli import app

    agent = f"mon-{uuid.uuid4().hex[:8]}"
    rng = random.Random(11)
    events = [interaction(rng, agent, at=datetime.now(UTC)) for _ in range(20)]
    store = connect(stack_settings.store())

    def latest() -> dict[str, tuple]:
        rows = store.query(
            "SELECT trace_id, revision, feedback_count, human_score FROM latest_traces"
            " WHERE agent_id = {a:String}",
            parameters={"a": agent},
        ).result_rows
        return {r[0]: r[1:] for r in rows}

    def all_feedback_merged() -> bool:
        rows = latest()
        return len(rows) == 20 and sum(r[1] for r in rows.values()) == 5

    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    env = {"ATLAS_HOME": str(stack_settings.home), "COLUMNS": "220"}
    try:
        with EventProducer(kafka_config) as producer:
            for event in events:
                producer.record_interaction(event)
            for event in events[:5]:
                producer.record_feedback(event.trace_id, "reject", agent_id=agent)
        # Feedback may wait for its interaction (revision 1) or follow it (revision 2).
        eventually(all_feedback_merged, 180, "20 traces, 5 with feedback", interval=2)
        before = latest()
        chart = tmp_path / "monitor.png"
        shown = CliRunner().invoke(
            app, ["monitor", "--agent", agent, "--plot", str(chart)], env=env
        )
        assert shown.exit_code == 0, shown.output
        assert agent in shown.output and "non_degradation" in shown.output
        assert chart.stat().st_size > 10_000

        replayed = CliRunner().invoke(app, ["replay", "--since", "1h", "--agent", agent], env=env)
        assert replayed.exit_code == 0 and "20 trace(s) sent for re-scoring" in replayed.output

        def rescored() -> bool:
            now = latest()
            return all(now[t][0] == before[t][0] + 1 for t in before)

        eventually(rescored, 180, "a new revision of every trace", interval=2)
    finally:
        for worker in workers:
            worker.stop()
    after = latest()
    for i, event in enumerate(events):  # the feedback survives the re-scoring
        assert after[event.trace_id][1:] == ((1, 0.0) if i < 5 else (0, None))

    bad = CliRunner().invoke(app, ["monitor", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "invalid duration 'yesterday'" in bad.output
