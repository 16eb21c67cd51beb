"""The workers' Prometheus metrics during a real run: the reward worker and the sink run as
processes (`atlas worker ...`) on the real broker and store, each serving /metrics on its own
port; N valid interactions and M poison messages go in, and what a plain HTTP scrape says is
compared with what was sent and with what the dead-letter topic and the store hold."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Producer

from atlas.settings import Settings
from deploy.local.processes import free_port
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.models import DeadLetter
from schemas.topics import DEADLETTER, INTERACTIONS, REWARDS
from store.client import connect
from tests.factories import interaction
from tests.hostile import hostile_messages
from tests.workers import (
    Observed,
    Samples,
    WorkerProcess,
    eventually,
    metric,
    reader_at_end,
    scored_count,
    scrape,
)

N_VALID = 300
LAG_READ_S = 5  # how often the workers read their consumer lag (ConsumerLag's default)
LAG = "atlas_consumer_lag"
IN, OUT, DEAD = "atlas_events_in_total", "atlas_events_out_total", "atlas_dead_letters_total"


def lags(samples: Samples, group: str) -> dict[tuple[str, str], float]:
    """``group``'s lag per (topic, partition), of every partition its worker holds."""
    found = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == LAG and label["group"] == group:
            found[(label["topic"], label["partition"])] = value
    return found


def settled(port: int, group: str, source: str) -> Samples | None:
    """A scrape in which the worker shows the lag of ``source``'s partitions, and no lag on
    any partition it holds."""
    samples = scrape(port)
    shown = lags(samples, group)
    held = any(topic == source for topic, _ in shown)
    return samples if held and not any(shown.values()) else None


def change(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much ``name`` (summed over ``labels``) grew from ``before`` to ``after``."""
    return metric(after, name, **labels) - metric(before, name, **labels)


def figures(
    rewards: Samples,
    rewards_before: Samples,
    sink: Samples,
    sink_before: Samples,
    letters: Counter[tuple[str, str]],
) -> list[tuple[str, float, float]]:
    """(what, sent, scraped) for each figure the run must show."""
    m_poison = sum(letters.values())
    r = {"after": rewards, "before": rewards_before}
    s = {"after": sink, "before": sink_before}
    reasons = sorted({reason for _, reason in letters} | {"ProcessingError"})
    return [
        (
            "rewards in (interactions)",
            N_VALID + m_poison,
            change(**r, name=IN, worker="rewards", topic=INTERACTIONS),
        ),
        ("rewards out (rewards)", N_VALID, change(**r, name=OUT, worker="rewards", topic=REWARDS)),
        ("rewards dead letters", m_poison, change(**r, name=DEAD, worker="rewards")),
        *(
            (
                f"  reason={reason}",
                letters[(INTERACTIONS, reason)],
                change(**r, name=DEAD, worker="rewards", topic=INTERACTIONS, reason=reason),
            )
            for reason in reasons
        ),
        (  # its own observation topics too: every event taken in, in some committed batch
            "rewards batch sizes, summed",
            change(**r, name=IN, worker="rewards"),
            change(**r, name="atlas_batch_size_sum", worker="rewards"),
        ),
        ("sink in (rewards)", N_VALID, change(**s, name=IN, worker="sink", topic=REWARDS)),
        ("sink out (rewards)", N_VALID, change(**s, name=OUT, worker="sink", topic=REWARDS)),
        ("sink in (deadletter)", m_poison, change(**s, name=IN, worker="sink", topic=DEADLETTER)),
        ("sink out (deadletter)", m_poison, change(**s, name=OUT, worker="sink", topic=DEADLETTER)),
        ("sink dead letters", 0, change(**s, name=DEAD, worker="sink")),
        ("rewards lag, all partitions", 0, sum(lags(rewards, "atlas-rewards").values())),
        ("sink lag, all partitions", 0, sum(lags(sink, "atlas-sink").values())),
    ]


def dead_letters_of(reader: object, run: str, expected: int) -> Counter[tuple[str, str]]:
    """(source topic, error type) of the dead letters of this run's poison, read off the
    dead-letter topic until ``expected`` have come."""
    codec, found = AvroCodec(), Counter[tuple[str, str]]()

    def read() -> bool:
        for message in reader.consume(500, timeout=1.0):  # type: ignore[attr-defined]
            if message.error() is None:
                letter = codec.decode(message.value(), DeadLetter)
                if (letter.key or b"").startswith(run.encode()):
                    found[(letter.source_topic, letter.error_type)] += 1
        return sum(found.values()) >= expected

    eventually(read, 120, f"{expected} dead letters on {DEADLETTER}", interval=0)
    return found


def test_scraped_counters_equal_what_was_sent(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"metrics-{run}"
    rng = random.Random(11)
    valid = [interaction(rng, agent) for _ in range(N_VALID)]
    poison = [h for h in hostile_messages(run, 80) if h.topic == INTERACTIONS]
    m_poison = len(poison)
    rewards_port, sink_port = free_port(), free_port()
    # the setting for one, the option for the other
    rewards = WorkerProcess(
        stack_settings, "rewards", tmp_path, {"ATLAS_METRICS_PORT": str(rewards_port)}
    )
    sink = WorkerProcess(
        stack_settings, "sink", tmp_path, options=("--metrics-port", str(sink_port))
    )
    try:
        # Both caught up with whatever earlier tests left: the figures before the run.
        before_rewards = eventually(
            lambda: settled(rewards_port, "atlas-rewards", INTERACTIONS),
            180,
            "the reward worker's metrics with no lag",
        )
        before_sink = eventually(
            lambda: settled(sink_port, "atlas-sink", REWARDS),
            180,
            "the sink's metrics with no lag",
        )
        dead_reader = reader_at_end(kafka_config, [DEADLETTER])
        raw = Producer({**kafka_config, "acks": "all"})
        with EventProducer(kafka_config) as producer:
            for i, event in enumerate(valid):
                producer.record_interaction(event)
                if i < m_poison:  # mixed in with the first valid ones
                    bad = poison[i]
                    raw.produce(bad.topic, key=bad.key, value=bad.value)
            assert raw.flush(30) == 0
        letters = dead_letters_of(dead_reader, run, m_poison)
        dead_reader.close()
        store = connect(stack_settings.store())

        def observed() -> Observed:
            rows = figures(
                scrape(rewards_port), before_rewards, scrape(sink_port), before_sink, letters
            )
            rows.append(("scored traces in the store", N_VALID, scored_count(store, agent)))
            return Observed(rows, [(what, sent, sent) for what, sent, _ in rows])

        # Once the workers caught up (lag read every few seconds), the figures stay put.
        eventually(observed, 300, "the scraped figures to equal what was sent", 2)
        time.sleep(LAG_READ_S + 1)  # and they stay there: nothing counted twice, later
        final = observed()
        rows = final.value
    finally:
        rewards.stop()
        sink.stop()
    print(f"\n{'':32} {'sent':>6} {'scraped':>8}")
    for what, sent, scraped in rows:
        print(f"{what:32} {sent:>6g} {scraped:>8g}")
    assert final, "the figures moved after they had matched"
    assert sum(letters.values()) == m_poison and {t for t, _ in letters} == {INTERACTIONS}
    assert len(letters) >= 2, letters  # several reasons, each counted under its own label
