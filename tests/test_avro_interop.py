"""Our Avro wire format is the Avro specification's single-object encoding, checked against an
implementation nobody on the team wrote: Apache Avro's Java library (``tests/java``).

Proven here:

* Java's ``BinaryMessageDecoder`` (which refuses a header other than ``C3 01`` + the schema's
  CRC-64-AVRO fingerprint) decodes every one of the event types as ``AvroCodec`` encodes them,
  to the values we wrote; a message with the pre-fix, byte-reversed fingerprint is refused.
  Java's ``BinaryMessageEncoder`` writes the same 10-byte header for every type, and our codec
  reads what it writes back to the original event.
* The same decoding holds for the exact bytes that went through the real broker, on all topics.
* Events written by Java's ``BinaryMessageEncoder`` are read by the real reward worker and
  sink: every interaction is scored and stored, every feedback is merged, none is refused.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from atlas.settings import Settings
from deploy.local.kafka import require_tool
from schemas.alerts import Alert
from schemas.codec import AvroCodec
from schemas.models import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    InteractionEvent,
    JobStatus,
    MemoryEntry,
    PromptVersion,
    RetrainTrigger,
    ScoredTrace,
)
from schemas.rollouts import RolloutStatus
from schemas.topics import FEEDBACK, INTERACTIONS, TOPICS, key_of, topic_of
from store.client import connect
from tests.factories import one_of_each
from tests.java.avro_java import (
    JDK_HINT,
    Messages,
    decode_args,
    fetch_avro_jars,
    java,
    java_decode,
    java_encode,
)
from tests.workers import WorkerProcess, eventually


@pytest.fixture(scope="module")
def avro_jars() -> Path:
    """The Avro jars; errors (never skips) when Java or Maven is missing."""
    require_tool("java", JDK_HINT)
    return fetch_avro_jars(Settings().cache_dir)


def ms(moment: datetime) -> int:
    """A timestamp-millis value, computed exactly (no float rounding)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def some(branch: str, value: Any) -> Any:
    """A union value in Avro's JSON encoding: ``{branch: value}``, or null."""
    return None if value is None else {branch: value}


def expected_fields(event: Event) -> dict[str, Any]:
    """A few meaningful fields of ``event`` as Avro's JSON encoding must show them."""
    if isinstance(event, InteractionEvent):
        return {
            **{k: getattr(event, k) for k in ("event_id", "trace_id", "agent_id", "task_input")},
            "created_at": ms(event.created_at),
            "reference": some("string", event.reference),
            "mode": event.mode,
            "models": event.models,
            "usage": event.usage.model_dump(),
            "steps": [
                {**s.model_dump(), "verdict": some("string", s.verdict)} for s in event.steps
            ],
        }
    if isinstance(event, FeedbackEvent):
        return {
            **{k: getattr(event, k) for k in ("event_id", "trace_id", "kind", "rating_max")},
            "agent_id": some("string", event.agent_id),
            "created_at": ms(event.created_at),
            "edited_text": some("string", event.edited_text),
            "rating": None,
        }
    if isinstance(event, ScoredTrace):
        unions = {"score": "double", "uncertainty": "double", "error": "string"}
        return {
            **{
                k: getattr(event, k)
                for k in ("trace_id", "revision", "reward", "escalated", "rim_version")
            },
            "scored_at": ms(event.scored_at),
            "baseline_reward": some("double", event.baseline_reward),
            "judge_scores": [
                {**j.model_dump(), **{k: some(t, getattr(j, k)) for k, t in unions.items()}}
                for j in event.judge_scores
            ],
        }
    if isinstance(event, PromptVersion):
        assert event.window_start is not None
        return {
            **{k: getattr(event, k) for k in ("agent_id", "version", "text", "source")},
            "parent_version": some("int", event.parent_version),
            "window_start": some("long", ms(event.window_start)),
            "heldout_reward": some("double", event.heldout_reward),
        }
    if isinstance(event, CheckpointEvent):
        return {
            **{k: getattr(event, k) for k in ("agent_id", "uri", "sha256", "source")},
            "created_at": ms(event.created_at),
            "job_id": None,
        }
    if isinstance(event, RetrainTrigger):
        return {
            **{k: getattr(event, k) for k in ("trigger_id", "kind", "agent_id", "params")},
            "budget": some("int", event.budget),
        }
    if isinstance(event, JobStatus):
        return {
            **{k: getattr(event, k) for k in ("job_id", "state", "seq", "metrics")},
            "progress": some("double", event.progress),
            "updated_at": ms(event.updated_at),
        }
    if isinstance(event, MemoryEntry):
        return {
            **{k: getattr(event, k) for k in ("entry_id", "source", "reward", "terms", "uses")},
            "created_at": ms(event.created_at),
            "retired_reason": some("string", event.retired_reason),
            "reward_when_used": some("double", event.reward_when_used),
            "reward_when_not_used": some("double", event.reward_when_not_used),
        }
    if isinstance(event, RolloutStatus):
        return {
            **{k: getattr(event, k) for k in ("rollout_id", "state", "canary_count", "lower")},
            "started_at": ms(event.started_at),
            "canary_mean": some("double", event.canary_mean),
        }
    if isinstance(event, Alert):
        return {
            **{k: getattr(event, k) for k in ("alert_id", "kind", "state", "count", "message")},
            "fired_at": ms(event.fired_at),
            "baseline_median": some("double", event.baseline_median),
        }
    assert isinstance(event, DeadLetter)
    return {  # Avro's JSON encoding writes bytes as ISO-8859-1 text
        **{k: getattr(event, k) for k in ("source_offset", "reason")},
        "key": some("bytes", event.key.decode("latin-1") if event.key else None),
        "original": event.original.decode("latin-1"),
        "failed_at": ms(event.failed_at),
    }


def assert_java_read(event: Event, decoded: dict[str, Any]) -> None:
    expected = expected_fields(event)
    shown = {k: decoded[k] for k in expected}
    assert shown == expected, f"{type(event).__name__}: Java read {shown}, we wrote {expected}"


def test_java_reads_and_writes_every_event_type_as_our_codec(
    avro_jars: Path, tmp_path: Path
) -> None:
    codec = AvroCodec()
    events = one_of_each(random.Random(5))
    assert {type(e) for e in events} == {c.event_type for c in TOPICS.values()}
    ours = [codec.encode(e) for e in events]
    decoded = java_decode(
        avro_jars, tmp_path / "ours", [(type(e), d) for e, d in zip(events, ours, strict=True)]
    )
    for event, record in zip(events, decoded, strict=True):
        assert_java_read(event, record)

    # Java writes what it read: the same header, a body our codec reads back to the event.
    theirs = java_encode(
        avro_jars,
        tmp_path / "theirs",
        [(type(e), [r]) for e, r in zip(events, decoded, strict=True)],
    )
    for event, mine, [written] in zip(events, ours, theirs, strict=True):
        assert written[:10] == mine[:10], f"{type(event).__name__}: {written[:10].hex()}"
        assert codec.decode(written, type(event)) == event
    identical = sum(w == m for m, [w] in zip(ours, theirs, strict=True))
    print(
        f"\n[avro-interop] Java decoded {len(decoded)}/{len(events)} event types; re-encoded"
        f" {len(theirs)}, same header {len(theirs)}, read back equal {len(theirs)},"
        f" byte-identical {identical} (not asserted: Java's HashMap may reorder map entries)"
    )

    # Control: the fingerprint is really checked. The pre-fix header (bytes reversed) is refused.
    legacy = ours[0][:2] + ours[0][2:10][::-1] + ours[0][10:]
    refused = java(
        avro_jars, "decode", *decode_args(tmp_path / "legacy", [(type(events[0]), legacy)])
    )
    assert refused.returncode == 1 and "MissingSchemaException" in refused.stderr, refused.stderr


def for_agent(event: Event, agent: str) -> Event:
    """``event`` moved to ``agent`` (a DeadLetter: keyed by it), so runs never share values."""
    if isinstance(event, ScoredTrace):
        inner = event.interaction.model_copy(update={"agent_id": agent})
        return event.model_copy(update={"agent_id": agent, "interaction": inner})
    if isinstance(event, DeadLetter):
        return event.model_copy(update={"key": agent.encode()})
    if "agent_id" in type(event).model_fields:
        return event.model_copy(update={"agent_id": agent})
    return event


def test_java_decodes_the_bytes_that_went_through_the_broker(
    avro_jars: Path, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    codec = AvroCodec()
    events = [  # 3 of each type, all distinct (some types carry no random id)
        for_agent(e, f"interop-{run}-{seed}")
        for seed in range(3)
        for e in one_of_each(random.Random(seed))
    ]
    producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for event in events:
        producer.produce(
            topic_of(event),
            value=codec.encode(event),
            key=key_of(event),
            headers={"run": run},
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0 and failures == []

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"interop-{run}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(sorted({topic_of(e) for e in events}))
    received: Messages = []
    deadline = time.monotonic() + 120
    try:
        while len(received) < len(events) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if dict(message.headers() or []).get("run") == run.encode():
                received.append((TOPICS[message.topic()].event_type, message.value()))
    finally:
        consumer.close()
    assert len(received) == len(events), f"consumed {len(received)} of {len(events)}"

    decoded = java_decode(avro_jars, tmp_path, received)
    sent = {codec.encode(e): e for e in events}  # the encoding is deterministic
    assert len(sent) == len(events)
    for (event_type, data), record in zip(received, decoded, strict=True):
        assert type(sent[data]) is event_type  # the consumed bytes are exactly those we produced
        assert_java_read(sent[data], record)
    topics = len({t for t, _ in received})
    print(
        f"\n[avro-interop] broker: produced {len(events)}, consumed {len(received)},"
        f" Java decoded {len(decoded)} with fields as sent, event types {topics}"
    )
    assert len(decoded) == 3 * len(TOPICS) and topics == len(TOPICS)


def interaction_datum(agent: str, trace_id: str, n: int, at_ms: int) -> dict[str, Any]:
    """An InteractionEvent in Avro's JSON encoding, written by hand (not by our code)."""
    answer = str(3 * n + 4)
    step = {"index": 0, "role": "student", "kind": "answer", "content": answer}
    step |= {"verdict": None, "model": "smollm2-135m", "prompt_tokens": 30}
    step |= {"completion_tokens": 4, "latency_ms": 95.5}
    return {
        "event_id": f"java-{uuid.uuid4()}",
        "trace_id": trace_id,
        "agent_id": agent,
        "created_at": at_ms,
        "task_id": f"java-arith-{n}",
        "task_family": {"string": "arithmetic"},
        "task_input": f"What is {n + 3} + {2 * n + 1}?",
        "reference": {"string": answer},
        "mode": "auto",
        "prompt_versions": [{"role": "student", "version": 1}],
        "models": {"student": "smollm2-135m"},
        "steps": [step],
        "final_answer": answer,
        "baseline_answer": None,
        "usage": {"prompt_tokens": 30, "completion_tokens": 4},
        "latency_ms": 95.5,
        "metadata": {"writer": "org.apache.avro BinaryMessageEncoder"},
        "memory_entries": [f"entry-{n}"] if n % 2 else [],
        "memory_held_back": [] if n % 2 else [f"entry-{n + 1}"],
        "rollouts": [
            {"role": "student", "rollout_id": "java-rollout", "arm": arm, "canary_version": 2,
             "production_version": 1, "kind": "prompt"}
            for arm in (["canary"] if n % 3 == 0 else ["production"] if n % 3 == 1 else [])
        ],
        "production_answer": {"string": answer} if n % 3 == 0 else None,
    }  # fmt: skip


def feedback_datum(agent: str, trace_id: str, kind: str, at_ms: int) -> dict[str, Any]:
    """A FeedbackEvent in Avro's JSON encoding, written by hand (not by our code)."""
    unset = dict.fromkeys(("edited_text", "rating", "tool_name", "tool_success"))
    return {
        "event_id": f"java-{uuid.uuid4()}",
        "trace_id": trace_id,
        "agent_id": {"string": agent},
        "created_at": at_ms,
        "kind": kind,
        **unset,
        "rating_min": 1.0,
        "rating_max": 5.0,
        "user_id": {"string": "java-user"},
        "comment": {"string": "written by Apache Avro's Java library"},
    }


def test_java_encoded_events_are_scored_and_stored(
    avro_jars: Path, stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"java-{run}"
    now = ms(datetime.now(UTC))
    traces = [f"java-{run}-{i}" for i in range(20)]
    kinds = ["approve" if i % 2 == 0 else "reject" for i in range(10)]
    interactions, feedback = java_encode(
        avro_jars,
        tmp_path / "java",
        [
            (InteractionEvent, [interaction_datum(agent, t, i, now) for i, t in enumerate(traces)]),
            (
                FeedbackEvent,
                [feedback_datum(agent, t, k, now + 1) for t, k in zip(traces, kinds, strict=False)],
            ),
        ],
    )
    codec = AvroCodec()  # our reader agrees before the workers see them
    assert [codec.decode(d, InteractionEvent).trace_id for d in interactions] == traces
    assert [codec.decode(d, InteractionEvent).memory_entries for d in interactions] == [
        [f"entry-{i}"] if i % 2 else [] for i in range(20)
    ]
    assert [codec.decode(d, InteractionEvent).memory_held_back for d in interactions] == [
        [] if i % 2 else [f"entry-{i + 1}"] for i in range(20)
    ]
    assert [codec.decode(d, FeedbackEvent).kind for d in feedback] == kinds
    assert codec.legacy_reads == 0

    store = connect(stack_settings.store())

    def latest() -> dict[str, tuple[Any, ...]]:
        rows = store.query(
            "SELECT trace_id, revision, feedback_count, human_score, task_id, final_answer,"
            " memory_entries, memory_held_back, rollouts, production_reward FROM latest_traces"
            " WHERE agent_id = {a:String}",
            parameters={"a": agent},
        ).result_rows
        return {r[0]: r[1:] for r in rows}

    def all_scored_with_feedback() -> bool:
        rows = latest()
        return len(rows) == 20 and sum(r[1] for r in rows.values()) == 10

    # Java's partitioner, as EventProducer: a trace's interaction and feedback share a partition.
    producer = Producer({**kafka_config, "acks": "all", "partitioner": "murmur2_random"})
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    try:
        for trace, data in zip(traces, interactions, strict=True):
            producer.produce(INTERACTIONS, key=trace.encode(), value=data)
        assert producer.flush(30) == 0
        for trace, data in zip(traces, feedback, strict=False):
            producer.produce(FEEDBACK, key=trace.encode(), value=data)
        assert producer.flush(30) == 0
        eventually(all_scored_with_feedback, 300, "20 Java-written traces, 10 with feedback", 2)
    finally:
        for worker in workers:
            worker.stop()

    rows = latest()
    for i, trace in enumerate(traces):
        _, feedback_count, human, task_id, answer, entries, held_back, rollouts, shadow = rows[
            trace
        ]
        # production's shadow answer (the reference, on the canary's tasks) is scored too
        assert shadow == (1.0 if i % 3 == 0 else None)
        arm = ["canary", "production", None][i % 3]
        assert rollouts == (
            []
            if arm is None
            else [
                {"role": "student", "rollout_id": "java-rollout", "arm": arm,
                 "canary_version": 2, "production_version": 1}
            ]
        )  # fmt: skip
        assert (task_id, answer) == (f"java-arith-{i}", str(3 * i + 4))
        assert entries == ([f"entry-{i}"] if i % 2 else [])
        assert held_back == ([] if i % 2 else [f"entry-{i + 1}"])
        if i < 10:
            assert (feedback_count, human) == (1, 1.0 if kinds[i] == "approve" else 0.0)
        else:
            assert (feedback_count, human) == (0, None)
    stored_feedback = store.query(
        "SELECT count() FROM feedback FINAL WHERE agent_id = {a:String} AND user_id = 'java-user'",
        parameters={"a": agent},
    ).result_rows[0][0]
    letters = store.query(
        "SELECT count() FROM dead_letters FINAL WHERE key IN {keys:Array(String)}",
        parameters={"keys": traces},
    ).result_rows[0][0]
    with_feedback = sum(r[1] == 1 for r in rows.values())
    print(
        f"\n[avro-interop] Java-encoded: {len(interactions)} interactions, {len(feedback)}"
        f" feedback -> latest_traces rows {len(rows)}, with feedback_count 1: {with_feedback},"
        f" feedback rows {stored_feedback}, dead letters {letters}"
    )
    assert (len(rows), with_feedback, stored_feedback, letters) == (20, 10, 10, 0)
