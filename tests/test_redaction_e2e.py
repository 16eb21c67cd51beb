"""PII through the whole stack: interactions, feedback and bad messages carrying planted PII
of every kind go through the real reward worker and sink; none of the planted strings may
appear in any table of the store's database or on atlas.rewards.v1 (nor on the dead-letter and
memory topics), and the placeholders must be there instead."""

from __future__ import annotations

import random
import string
import uuid
from pathlib import Path

from confluent_kafka import Producer

from atlas.settings import Settings
from runtime.producer import EventProducer
from runtime.redaction_detectors import luhn_ok
from schemas.models import Step
from schemas.topics import (
    DEADLETTER,
    FEEDBACK,
    INTERACTIONS,
    MEMORY,
    MEMORY_CANDIDATES,
    REWARDS,
)
from store.client import connect
from tests.factories import interaction
from tests.workers import WorkerProcess, eventually, reader_at_end


def caught_up(kafka_config: dict[str, str], groups: dict[str, list[str]]) -> bool:
    """Every group has committed up to the end of every non-empty partition of its topics."""
    from confluent_kafka import Consumer, TopicPartition

    from atlas.lag import committed_offsets

    probe = Consumer({**kafka_config, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        for group, topics in groups.items():
            wanted = [
                TopicPartition(topic, p)
                for topic in topics
                for p in probe.list_topics(topic, timeout=10).topics[topic].partitions
            ]
            committed = committed_offsets(kafka_config, group, wanted, 10)
            for tp in wanted:
                end = probe.get_watermark_offsets(tp, timeout=10)[1]
                if end > 0 and committed.get((tp.topic, tp.partition), -1) < end:
                    return False
        return True
    finally:
        probe.close()


def _card(rng: random.Random) -> str:
    body = "4" + "".join(rng.choice(string.digits) for _ in range(14))
    number = next(body + c for c in string.digits if luhn_ok(body + c))
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice(string.digits) for _ in range(18))
    check = 98 - int(bban + "131400") % 97  # D=13, E=14, then "00"
    return f"DE{check:02d}{bban}"


def planted_pii(rng: random.Random, run: str) -> dict[str, str]:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return {
        "email": f"pii.{run}@example.com",
        "user": f"user.{run}@corp.example.org",
        "phone": f"+44 20 {d(4)} {d(4)}",
        "phone_us": f"(415) {d(3)}-{d(4)}",
        "card": _card(rng),
        "iban": _iban(rng),
        "ipv4": f"10.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
        "ipv6": f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}",
        "edit_email": f"edit.{run}@example.net",
        "comment_phone": f"+1 650 {d(3)} {d(4)}",
    }


def _needles(pii: dict[str, str]) -> set[bytes]:
    """Each planted string, and its digits alone where it has separators."""
    needles = {v.encode() for v in pii.values()}
    for key in ("phone", "phone_us", "card", "comment_phone"):
        needles.add("".join(c for c in pii[key] if c.isdigit()).encode())
    return needles


def test_planted_pii_reaches_no_table_and_no_downstream_topic(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"pii-{run}"
    rng = random.Random(run)
    pii = planted_pii(rng, run)
    events = []
    for _ in range(6):
        event = interaction(rng, agent)
        steps = [*event.steps]
        steps[0] = steps[0].model_copy(update={"content": f"wire it to {pii['iban']}"})
        events.append(
            event.model_copy(
                update={
                    "task_input": f"I am {pii['email']}, call {pii['phone']}. {event.task_input}",
                    "final_answer": f"card {pii['card']} or {pii['phone_us']}",
                    "baseline_answer": f"seen from {pii['ipv6']}",
                    "reference": f"host {pii['ipv4']}",
                    "steps": [*steps, Step(**{**steps[-1].model_dump(), "index": 9})],
                    "metadata": {"session": f"ip {pii['ipv4']} mail {pii['email']}"},
                }
            )
        )
    # A second interaction for a trace already scored (dead-lettered, decodable original) and
    # bytes that are no event at all (dead-lettered raw).
    conflict = events[0].model_copy(update={"event_id": str(uuid.uuid4())})
    garbage = f"not avro {pii['email']} {pii['card']} {pii['iban']}".encode()

    store = connect(stack_settings.store())
    reader = reader_at_end(kafka_config, [REWARDS, DEADLETTER, MEMORY])
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    seen: list[bytes] = []
    try:
        with EventProducer(kafka_config) as producer:
            for event in events:
                producer.record_interaction(event)
        with EventProducer(kafka_config) as producer:
            producer.record_interaction(conflict)
            for event in events[:3]:
                producer.record_feedback(
                    event.trace_id,
                    "edit",
                    agent_id=agent,
                    edited_text=f"{event.reference} — write to {pii['edit_email']}",
                    comment=f"ring me on {pii['comment_phone']}",
                    user_id=pii["user"],
                )
            producer.record_feedback(
                events[3].trace_id, "approve", agent_id=agent, comment=f"I am {pii['email']}"
            )
        raw = Producer({**kafka_config, "acks": "all"})
        raw.produce(INTERACTIONS, key=f"{run}-garbage".encode(), value=garbage)
        assert raw.flush(30) == 0

        def stored() -> tuple[int, int, int]:
            traces = store.query(
                "SELECT count(), countIf(feedback_count > 0) FROM latest_traces"
                " WHERE agent_id = {a:String}",
                parameters={"a": agent},
            ).result_rows[0]
            letters = store.query(
                "SELECT count() FROM dead_letters WHERE key IN {k:Array(String)}",
                parameters={"k": [conflict.trace_id, f"{run}-garbage"]},
            ).result_rows[0][0]
            return int(traces[0]), int(traces[1]), int(letters)

        eventually(lambda: stored() == (6, 4, 2), 240, "6 traces, 4 with feedback, 2 letters", 2)
        consumed = {
            "atlas-rewards": [INTERACTIONS, FEEDBACK, MEMORY_CANDIDATES],
            "atlas-sink": [REWARDS, FEEDBACK, DEADLETTER, MEMORY],
        }
        eventually(lambda: caught_up(kafka_config, consumed), 180, "the workers to catch up", 2)
        while (message := reader.poll(2.0)) is not None:
            if message.error() is None and message.value() is not None:
                seen.append(message.value())
    finally:
        reader.close()
        for worker in workers:
            worker.stop()

    needles = _needles(pii)
    rewards = [m for m in seen if agent.encode() in m]
    assert len(rewards) >= 6, "the run's scored traces were not seen on the topics"
    on_topics = {n for n in needles for m in seen if n in m}
    assert not on_topics, f"planted PII on downstream topics: {on_topics}"
    assert any(b"<EMAIL>" in m and b"<CARD>" in m and b"<IBAN>" in m for m in rewards)

    database = store.query("SELECT currentDatabase()").result_rows[0][0]
    tables = [
        r[0]
        for r in store.query(
            "SELECT name FROM system.tables WHERE database = {d:String}"
            " AND engine NOT IN ('View', 'MaterializedView')",
            parameters={"d": database},
        ).result_rows
    ]
    assert {"scored_traces", "feedback", "dead_letters", "judge_scores"} <= set(tables)
    leaks = {}
    for table in tables:
        dump = store.raw_query(f"SELECT * FROM `{database}`.`{table}` FORMAT TabSeparated")
        found = sorted(n.decode() for n in needles if n in dump)
        if found:
            leaks[table] = found
    assert not leaks, f"planted PII stored in ClickHouse: {leaks}"
    feedback = store.query(
        "SELECT edited_text, comment, user_id FROM feedback WHERE trace_id = {t:String}",
        parameters={"t": events[0].trace_id},
    ).result_rows
    assert feedback and "<EMAIL>" in feedback[0][0] and "<PHONE>" in feedback[0][1]
    assert feedback[0][2] == "<EMAIL>"
    memory = store.query(
        "SELECT input, output FROM memory_entries WHERE agent_id = {a:String}",
        parameters={"a": agent},
    ).result_rows
    assert memory and all("<EMAIL>" in i and "<EMAIL>" in o for i, o in memory), memory
