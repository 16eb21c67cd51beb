"""The scored-trace pipeline against raw baselines, in one run on a fresh local stack:

1. raw Kafka -> ClickHouse copy (bytes in, bytes stored; batches of 5,000): messages/s;
2. the pipeline (reward worker with programmatic judges + sink): traces/s, and the ratio;
3. event -> queryable latency p50/p99 at a fixed offered load;
4. LLM judging with the local model, batched vs one trace at a time: traces/s.

With ``--secure``, 2 and 3 run again on an `atlas up --secure` stack (SASL_SSL with SCRAM,
ACLs, the store over HTTPS) in the same invocation: the cost of security as a throughput ratio
and both p99s.

    .venv/bin/python benchmarks/pipeline.py [--events 5000] [--rate 50] [--seconds 20]
        [--secure] [--judged 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, Producer

from atlas import stack
from atlas.settings import Settings
from rim.judges import LLMJudge, Principle
from runtime.backends.local import LocalBackend, default_model_dir
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from store.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.factories import interaction
from tests.workers import WorkerProcess


def raw_copy(settings: Settings, n: int) -> float:
    kafka = settings.kafka_config()
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    codec, rng = AvroCodec(), random.Random(1)
    payload = [codec.encode(interaction(rng)) for _ in range(n)]
    producer = Producer({**kafka, "acks": "all", "linger.ms": 5})
    for value in payload:
        producer.produce(topic, value=value)
    producer.flush(60)
    client = connect(settings.store())
    client.command(
        "CREATE TABLE IF NOT EXISTS raw_copy (value String) ENGINE = MergeTree ORDER BY tuple()"
    )
    consumer = Consumer(
        {**kafka, "group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    copied, started = 0, 0.0
    while copied < n:
        batch = [m for m in consumer.consume(5000, timeout=1.0) if m.error() is None]
        if batch:
            started = started or time.perf_counter()  # from the first batch: no group join
            client.insert("raw_copy", [[m.value()] for m in batch], column_names=["value"])
            consumer.commit(asynchronous=False)
            copied += len(batch)
    elapsed = time.perf_counter() - started
    consumer.close()
    return copied / elapsed


def stored(client: object, agent: str) -> set[str]:
    rows = client.query(  # type: ignore[attr-defined]
        "SELECT trace_id FROM latest_traces WHERE agent_id = {a:String}", parameters={"a": agent}
    ).result_rows
    return {r[0] for r in rows}


def pipeline(
    settings: Settings, n: int, rate: float, seconds: float, logs: Path
) -> tuple[float, list[float]]:
    kafka, client = settings.kafka_config("agent"), connect(settings.store())
    workers = [WorkerProcess(settings, kind, logs) for kind in ("rewards", "sink")]
    rng = random.Random(2)
    try:
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        with EventProducer(kafka) as producer:
            producer.record_interaction(interaction(rng, warm))
        while not stored(client, warm):
            time.sleep(0.5)
        agent = f"bench-{uuid.uuid4().hex[:6]}"
        events = [interaction(rng, agent) for _ in range(n)]
        started = time.perf_counter()
        with EventProducer(kafka) as producer:
            for event in events:
                producer.record_interaction(event)
        while len(stored(client, agent)) < n:
            time.sleep(0.2)
        throughput = n / (time.perf_counter() - started)

        agent = f"lat-{uuid.uuid4().hex[:6]}"
        sent: dict[str, float] = {}
        seen: dict[str, float] = {}
        with EventProducer(kafka) as producer:
            next_at = time.perf_counter()
            while time.perf_counter() - next_at < seconds and len(sent) < rate * seconds:
                event = interaction(rng, agent, at=datetime.now(UTC))
                producer.record_interaction(event)
                producer._producer.poll(0)
                sent[event.trace_id] = time.perf_counter()
                time.sleep(max(0.0, next_at + len(sent) / rate - time.perf_counter()))
                if len(sent) % 10 == 0:
                    now = time.perf_counter()
                    for trace in stored(client, agent) - seen.keys():
                        seen[trace] = now
        while len(seen) < len(sent):
            now = time.perf_counter()
            for trace in stored(client, agent) - seen.keys():
                seen[trace] = now
            time.sleep(0.05)
        latencies = sorted((seen[t] - sent[t]) * 1000 for t in sent)
        return throughput, latencies
    finally:
        for worker in workers:
            worker.stop()


def judging(traces: int) -> tuple[float, float]:
    backend = LocalBackend(default_model_dir(Settings().cache_dir), max_batch=8, threads=2)
    judge = LLMJudge(
        "accuracy",
        [Principle(name="correctness", description="right answer")],
        backend,
        temperatures=(0.2, 0.5, 0.8),
        retries=0,
        max_tokens=64,
    )
    rng = random.Random(3)
    batch = [interaction(rng) for _ in range(traces)]
    started = time.perf_counter()
    for trace in batch:
        judge.judge([trace])
    serial = traces / (time.perf_counter() - started)
    started = time.perf_counter()
    judge.judge(batch)
    batched = traces / (time.perf_counter() - started)
    return serial, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50, help="offered load, events/s")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--judged", type=int, default=8, help="traces for the LLM judging test")
    parser.add_argument(
        "--secure", action="store_true", help="also run the pipeline on a --secure stack"
    )
    args = parser.parse_args()
    raw, ours, latencies = on_fresh_stack(args, secure=False)
    q = statistics.quantiles(latencies, n=100)
    print(f"raw Kafka -> ClickHouse copy:          {raw:9.0f} messages/s")
    print(f"pipeline (programmatic judges + sink): {ours:9.0f} traces/s   ratio {ours / raw:.3f}")
    print(
        f"event -> queryable at {args.rate:.0f}/s offered: p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms"
        f" ({len(latencies)} events)"
    )
    if args.secure:
        _, secured, secure_latencies = on_fresh_stack(args, secure=True)
        sq = statistics.quantiles(secure_latencies, n=100)
        print(
            f"secure pipeline (SASL_SSL, ACLs, HTTPS): {secured:7.0f} traces/s   "
            f"{secured / ours:.3f} of plain; p50 {sq[49]:.0f} ms, p99 {sq[98]:.0f} ms "
            f"(plain p99 {q[98]:.0f} ms)"
        )
    if args.judged:
        serial, batched = judging(args.judged)
        print(
            f"LLM judge, local model, 3 samples: serial {serial:.2f} traces/s, batched"
            f" {batched:.2f} traces/s, x{batched / serial:.2f}"
        )


def on_fresh_stack(args: argparse.Namespace, secure: bool) -> tuple[float, float, list[float]]:
    """(raw copy messages/s or 0 when secure, pipeline traces/s, latencies ms)."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        stack.up(settings, secure=secure)
        try:
            raw = 0.0 if secure else raw_copy(settings, args.events)
            ours, latencies = pipeline(settings, args.events, args.rate, args.seconds, Path(home))
        finally:
            stack.down(settings)
    return raw, ours, latencies


if __name__ == "__main__":
    main()
