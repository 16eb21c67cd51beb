"""The pipeline's stages measured one at a time, on a stack the caller started (used by
``benchmarks/pipeline.py``, which prints them beside the whole pipeline):

* the raw ceiling: produce, consume, one columnar insert through the store URL, and the copy
  Kafka -> ClickHouse (consume + insert + commit per batch of 5,000);
* the reward worker alone: interactions in -> scored traces out on Kafka, with 1 or 2 workers;
* the sink alone: scored traces in -> rows in the store.

Each worker stage also reports the CPU seconds its processes spent per 1,000 events (from
``/proc``), which says whether a stage is CPU-bound on this machine.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from atlas.settings import Settings
from schemas.codec import AvroCodec
from schemas.topics import INTERACTIONS, REWARDS
from store.client import connect
from tests.factories import interaction, scored
from tests.workers import WorkerProcess

STAGE_TIMEOUT_S = 600.0


class Deadline:
    """Ends a wait that would otherwise hang the benchmark (a lost or dead-lettered event)."""

    def __init__(self, what: str, seconds: float = STAGE_TIMEOUT_S):
        self.what, self.seconds, self.at = what, seconds, time.monotonic() + seconds

    def check(self, done: int, wanted: int) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError(f"{self.what}: {done} of {wanted} after {self.seconds:.0f}s")


@dataclass
class StageRun:
    per_s: float  # events/s through the stage
    cpu_per_1000: float  # CPU seconds of the stage's processes per 1,000 events
    # the pipeline's: CPU seconds per 1,000 events of each process on the path, by name
    cpu_by_process: dict[str, float] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_stages(settings: Settings, n: int) -> dict[str, float]:
    """messages/s of raw produce, consume, insert and copy (bytes in, bytes stored)."""
    kafka = settings.kafka_config()
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    codec, rng = AvroCodec(), random.Random(1)
    payload = [codec.encode(interaction(rng)) for _ in range(n)]
    producer = Producer({**kafka, "acks": "all", "linger.ms": 5})
    started = time.perf_counter()
    for value in payload:
        producer.produce(topic, value=value)
    producer.flush(60)
    rates = {"produce": n / (time.perf_counter() - started)}
    client = connect(settings.store())
    client.command(
        "CREATE TABLE IF NOT EXISTS raw_copy (value String) ENGINE = MergeTree ORDER BY tuple()"
    )
    started = time.perf_counter()
    client.insert("raw_copy", [[value] for value in payload], column_names=["value"])
    rates["insert"] = n / (time.perf_counter() - started)
    probe = Consumer({**kafka, "group.id": topic})
    partitions = probe.list_topics(topic).topics[topic].partitions
    probe.close()
    for stage in ("consume", "copy"):
        consumer = Consumer({**kafka, "group.id": f"{topic}-{stage}", "enable.auto.commit": False})
        started = time.perf_counter()  # assigned, not subscribed: no group join to wait out
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        copied, deadline = 0, Deadline(f"raw {stage}")
        while copied < n:
            deadline.check(copied, n)
            batch = [m for m in consumer.consume(5000, timeout=1.0) if m.error() is None]
            if batch and stage == "copy":
                client.insert("raw_copy", [[m.value()] for m in batch], column_names=["value"])
                consumer.commit(asynchronous=False)
            copied += len(batch)
        rates[stage] = copied / (time.perf_counter() - started)
        consumer.close()
    return rates


def send_encoded(kafka: dict[str, str], messages: list[tuple[bytes, bytes]]) -> None:
    """Produce interactions encoded beforehand (key, value), with the agents' producer
    settings (``runtime/producer.py``): like the raw copy's messages, they cost this process
    next to nothing while the workers it measures run. Encoding them (an agent's work, on the
    agent's machine) took 30-45 µs per event of these 2 cores when it happened here."""
    producer = Producer(
        {
            **kafka,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    for key, value in messages:
        while True:
            try:
                producer.produce(INTERACTIONS, key=key, value=value)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
    if producer.flush(60):
        raise TimeoutError("interactions still undelivered after 60 s")


def _scored_count(consumer: Consumer, wanted: set[bytes]) -> int:
    """Scored traces of the ``wanted`` trace ids (message keys) among the next messages. The
    key says which trace a message scores, so the watcher decodes nothing: it shares the
    machine's cores with the worker it measures."""
    found = 0
    for message in consumer.consume(1000, timeout=0.2):
        if message.error() is None and message.key() in wanted:
            wanted.discard(message.key())
            found += 1
    return found


def reward_alone(settings: Settings, n: int, logs: Path, workers: int = 1) -> StageRun:
    """Interactions in, scored traces out on Kafka: ``workers`` reward workers, warmed up on
    every partition first, then ``n`` interactions at once."""
    codec, rng = AvroCodec(), random.Random(5)
    running = [WorkerProcess(settings, "rewards", logs) for _ in range(workers)]
    watcher = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",  # the warm-up may be scored before it joins
            "log_level": 0,
        }
    )
    watcher.subscribe([REWARDS])
    try:
        for agent, count in ((f"warm-{uuid.uuid4().hex[:6]}", 64), (None, n)):
            agent = agent or f"alone-{uuid.uuid4().hex[:6]}"
            events = [interaction(rng, agent) for _ in range(count)]
            encoded = [(event.trace_id.encode(), codec.encode(event)) for event in events]
            cpu = sum(cpu_seconds(w.process.pid) for w in running)
            started = time.perf_counter()
            send_encoded(settings.kafka_config("agent"), encoded)
            wanted = {event.trace_id.encode() for event in events}
            seen, deadline = 0, Deadline(f"scored traces of {agent}")
            while seen < count:
                deadline.check(seen, count)
                seen += _scored_count(watcher, wanted)
        elapsed = time.perf_counter() - started
        spent = sum(cpu_seconds(w.process.pid) for w in running) - cpu
        return StageRun(n / elapsed, spent / n * 1000)
    finally:
        watcher.close()
        for worker in running:
            worker.stop()


def sink_alone(settings: Settings, n: int, logs: Path) -> StageRun:
    """Scored traces written straight to the rewards topic, then stored by one sink."""
    codec, rng = AvroCodec(), random.Random(6)
    sink = WorkerProcess(settings, "sink", logs)
    store = connect(settings.store())
    producer = Producer({**settings.kafka_config(), "acks": "all", "linger.ms": 5})
    try:
        for agent, count in ((f"warm-{uuid.uuid4().hex[:6]}", 1), (None, n)):
            agent = agent or f"sink-{uuid.uuid4().hex[:6]}"
            payload = [codec.encode(scored(interaction(rng, agent), rng)) for _ in range(count)]
            cpu = cpu_seconds(sink.process.pid)
            started = time.perf_counter()
            for value in payload:
                producer.produce(REWARDS, value=value)
            producer.flush(60)
            query = "SELECT count() FROM scored_traces WHERE agent_id = {a:String}"
            deadline = Deadline(f"stored traces of {agent}")
            while (rows := store.query(query, parameters={"a": agent}).result_rows[0][0]) < count:
                deadline.check(rows, count)
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
        return StageRun(n / elapsed, (cpu_seconds(sink.process.pid) - cpu) / n * 1000)
    finally:
        sink.stop()
