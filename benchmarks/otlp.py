"""The OTLP receiver's throughput in GenAI spans per second, beside baselines from the same run.

On a fresh local stack (started here in a temporary ATLAS_HOME, stopped by PID at the end):

* ``receiver -> Kafka``: OTLP/HTTP protobuf export requests of ``--batch`` GenAI spans each
  (content on the span, as ``span_only`` capture makes them), posted by ``--clients``
  concurrent clients; a span counts once its request got 200, that is once Kafka acknowledged
  its event (``acks=all``).
* ``receiver, instant acks``: the same requests to a receiver whose producer acknowledges at
  once (encoding included): the receiver's own cost (HTTP, decoding, conversion, Avro).
* ``EventProducer alone``: the same events, converted beforehand, produced by one
  ``EventProducer`` and flushed: Kafka's rate for them with nothing in front.

    .venv/bin/python benchmarks/otlp.py [--spans 20000] [--batch 100] [--clients 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atlas import stack
from atlas.settings import Settings
from ingest.otlp import AckedSender, OtlpConfig, OtlpReceiver
from ingest.otlp_decode import parse_request, spans_of
from ingest.otlp_events import from_spans
from ingest.serving import ServerThread, open_sender
from runtime.producer import EventProducer
from tests.otlp_payloads import FakeKafka, as_protobuf, chat_attrs, new_ids, request, span


def bodies(total: int, batch: int) -> list[bytes]:
    out = []
    for start in range(0, total, batch):
        trace = new_ids()[0]
        spans = [
            span(
                trace,
                new_ids()[1],
                chat_attrs(f"question {i}: " + "words " * 30, "an answer " * 20),
            )
            for i in range(start, min(total, start + batch))
        ]
        out.append(as_protobuf(request(spans, {"atlas.agent_id": "bench"}))[0])
    return out


def post_all(url: str, payloads: list[bytes], clients: int) -> float:
    """Seconds to have every payload answered 200."""
    headers = {"content-type": "application/x-protobuf"}

    def post(chunk: list[bytes]) -> None:
        with httpx.Client(timeout=120) as client:
            for body in chunk:
                client.post(f"{url}/v1/traces", content=body, headers=headers).raise_for_status()

    chunks = [payloads[i::clients] for i in range(clients)]
    post(payloads[:2])  # warm-up: connections, the producer's metadata
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, chunks))
    return time.perf_counter() - started


def receiver_rate(sender: AckedSender, payloads: list[bytes], clients: int) -> float:
    server = ServerThread(OtlpReceiver(OtlpConfig(ack_timeout_s=60), sender).app)
    try:
        return post_all(server.url, payloads, clients)
    finally:
        server.stop()
        sender.close()


def producer_rate(kafka: dict[str, str], payloads: list[bytes]) -> tuple[float, int]:
    events = [
        e
        for body in payloads
        for e in from_spans(
            list(spans_of(parse_request(body, "protobuf", "traces"))), "bench"
        ).events  # type: ignore[arg-type]
    ]
    with EventProducer(kafka) as producer:
        producer.send(events[0])
        producer.flush(60)
        started = time.perf_counter()
        for event in events:
            producer.send(event)
        producer.flush(120)
        return time.perf_counter() - started, len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="spans per export request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent exporters")
    args = parser.parse_args()
    payloads = bodies(args.spans, args.batch)
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="atlas-otlp-bench-")))
    stack.up(settings)
    try:
        kafka = settings.kafka_config()
        figures = {
            "receiver -> Kafka (acks=all)": receiver_rate(
                open_sender(kafka), payloads, args.clients
            ),
            "receiver, instant acks": receiver_rate(
                AckedSender(FakeKafka()), payloads, args.clients
            ),
        }
        seconds, produced = producer_rate(kafka, payloads)
        assert produced == args.spans
        figures["EventProducer alone (baseline)"] = seconds
    finally:
        stack.down(settings)
    print(
        f"\n{args.spans:,} GenAI spans in {len(payloads)} OTLP protobuf requests of {args.batch},"
        f" {args.clients} concurrent clients\n"
    )
    print(f"{'path':<34} {'seconds':>8} {'spans/s':>10}")
    for name, secs in figures.items():
        print(f"{name:<34} {secs:>8.2f} {args.spans / secs:>10,.0f}")


if __name__ == "__main__":
    main()
