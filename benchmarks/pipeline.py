"""The scored-trace pipeline against raw baselines, in one run on a fresh local stack:

1. the raw ceiling: produce, consume, one columnar insert, and the Kafka -> ClickHouse copy
   (bytes in, bytes stored; batches of 5,000), messages/s;
2. each stage alone (``benchmarks/stages.py``): the reward worker with 1 and 2 workers
   (interactions in, scored traces out on Kafka), the sink (scored traces in, rows stored);
   then the whole pipeline: events/s, the ratio to the raw copy, CPU seconds per 1,000 events;
   beside them each stage's own code in-process with no Kafka (``benchmarks/stage_floors.py``):
   what one worker could do on one core whatever its plumbing;
3. event -> stored latency p50/p95/p99 at each offered load, from the event's own timestamp
   to its row's ``stored_at`` (the sink's clock as it sends the insert), not by polling;
4. LLM judging with the local model, batched vs one trace at a time: traces/s.

With ``--redaction``, the whole pipeline runs twice more on the same stack with PII planted in
every event (an e-mail address and a phone number in each task input): once with the reward
worker and sink redacting (configs/redaction.yaml, mask) and once with redaction off (a copy of
the configs whose redaction.yaml says ``default_policy: "off"``), printed side by side.

With ``--secure``, the pipeline and 3 run again on an `atlas up --secure` stack (SASL_SSL with
SCRAM, ACLs, the store over HTTPS) in the same invocation: the cost of security as a
throughput ratio and both p99s.

    .venv/bin/python benchmarks/pipeline.py [--events 20000] [--rates 100,1000] [--seconds 10]
        [--secure] [--redaction] [--judged 8]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from atlas import stack
from atlas.lag import group_lag
from atlas.settings import PROJECT_CONFIGS, Settings
from atlas.workers import REWARDS_GROUP, SINK_GROUP
from consumers.sink import DEFAULT_TOPICS
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.models import InteractionEvent
from schemas.topics import (
    ALERT_OBSERVATIONS,
    FEEDBACK,
    INTERACTIONS,
    MEMORY_CANDIDATES,
    POLICY_OBSERVATIONS,
)
from store.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.judging import judge_local
from benchmarks.stage_floors import floor_lines
from benchmarks.stages import (
    Deadline,
    StageRun,
    cpu_seconds,
    raw_stages,
    reward_alone,
    send_encoded,
    sink_alone,
)
from tests.factories import interaction
from tests.workers import WorkerProcess

CORES = os.cpu_count() or 1


@dataclass
class Latency:
    achieved: float  # events/s the producer really offered
    events: int
    p50: float
    p95: float
    p99: float


def stored(client: object, agent: str) -> int:
    """How many of the agent's traces are stored: counted by the store, so polling costs the
    machine little while the workers it measures run."""
    return client.query(  # type: ignore[attr-defined]
        "SELECT uniqExact(trace_id) FROM scored_traces WHERE agent_id = {a:String}",
        parameters={"a": agent},
    ).result_rows[0][0]


def settle(settings: Settings, timeout: float = 600.0) -> float:
    """Wait until the reward worker (scoring, and the retrain policy it feeds) and the sink
    have consumed everything: latency is measured from a quiet pipeline, not through the tail
    of the previous phase. Seconds taken."""
    started = time.perf_counter()
    kafka = settings.kafka_config("admin")  # on --secure only admin may read every group
    behind = {
        REWARDS_GROUP: (
            INTERACTIONS, FEEDBACK, POLICY_OBSERVATIONS, MEMORY_CANDIDATES, ALERT_OBSERVATIONS
        ),
        SINK_GROUP: DEFAULT_TOPICS,
    }  # fmt: skip
    while lags := {
        group: lag
        for group, topics in behind.items()
        if (lag := group_lag(kafka, group, topics)).lag
    }:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"the pipeline did not settle within {timeout:.0f}s: {lags}")
        time.sleep(0.5)
    return time.perf_counter() - started


def quiet(pids: list[int], timeout: float = 120.0, idle_share: float = 0.05) -> float:
    """Wait until the processes on the path (workers, broker, store) together use less than
    ``idle_share`` of a core over a second: the previous phase's background work (the store
    merging the parts of a burst's inserts, the broker compacting changelogs) is done, so
    the latency measured is the pipeline's own. Seconds taken."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(1.0)
        if sum(cpu_seconds(pid) for pid in pids) - before < idle_share:
            break
    return time.perf_counter() - started


def offered(
    producer_config: dict[str, str], client: object, rate: float, seconds: float
) -> Latency:
    """Offer ``rate`` events/s for ``seconds``; then each event's latency from its own
    timestamp to its row's ``stored_at`` (the sink's clock as it sends the insert), in ms."""
    agent, rng = f"lat-{uuid.uuid4().hex[:6]}", random.Random(int(rate))
    n = int(rate * seconds)
    with EventProducer(producer_config) as producer:
        # an agent's producer is long-lived: its connection and idempotence id come first,
        # not inside the first events' latency (they cost the first ~0.5 s ~500 ms here)
        producer.record_interaction(interaction(rng, f"warm-{agent}"))
        producer._producer.flush(30)
        started = time.perf_counter()
        for i in range(n):
            producer.record_interaction(interaction(rng, agent, at=datetime.now(UTC)))
            producer._producer.poll(0)
            time.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
        achieved = n / (time.perf_counter() - started)
    deadline = Deadline(f"stored traces of {agent}")
    while (count := stored(client, agent)) < n:
        deadline.check(count, n)
        time.sleep(0.5)
    [row] = client.query(  # type: ignore[attr-defined]
        "SELECT quantiles(0.5, 0.95, 0.99)(dateDiff('millisecond', created_at, stored_at))"
        " FROM scored_traces WHERE agent_id = {a:String} AND revision = 1",
        parameters={"a": agent},
    ).result_rows
    return Latency(achieved, n, *row[0])


def with_pii(event: InteractionEvent, i: int) -> InteractionEvent:
    """The event with an e-mail address and a phone number planted in its task input."""
    planted = f" Reach me at user{i}@example.com or +44 20 7946 {i % 10_000:04d}."
    return event.model_copy(update={"task_input": event.task_input + planted})


def redaction_off_configs(root: Path) -> Path:
    """A copy of the project's configs whose redaction.yaml turns redaction off."""
    target = root / "configs-redaction-off"
    shutil.copytree(PROJECT_CONFIGS, target, dirs_exist_ok=True)
    (target / "redaction.yaml").write_text('default_policy: "off"\n')
    return target


def pipeline(
    settings: Settings,
    n: int,
    rates: list[float],
    seconds: float,
    logs: Path,
    env: dict[str, str] | None = None,
    pii: bool = False,
) -> tuple[StageRun, dict[float, Latency]]:
    kafka, client = settings.kafka_config("agent"), connect(settings.store())
    workers = [WorkerProcess(settings, kind, logs, env) for kind in ("rewards", "sink")]
    rng, codec = random.Random(2), AvroCodec()
    try:
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        with EventProducer(kafka) as producer:
            producer.record_interaction(interaction(rng, warm))
        deadline = Deadline("the warm-up trace")
        while not stored(client, warm):
            deadline.check(0, 1)
            time.sleep(0.5)
        agent = f"bench-{uuid.uuid4().hex[:6]}"
        events = [interaction(rng, agent) for _ in range(n)]
        if pii:
            events = [with_pii(event, i) for i, event in enumerate(events)]
        status = stack.read_status(settings)
        assert status.kafka is not None and status.store is not None
        processes = {  # every process on the path, so the whole CPU budget shows
            "reward worker": workers[0].process.pid,
            "sink": workers[1].process.pid,
            "Kafka broker": status.kafka.pid,
            "store": status.store.pid,
            "producer (this benchmark)": os.getpid(),
        }
        encoded = [(event.trace_id.encode(), codec.encode(event)) for event in events]
        cpu = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        send_encoded(kafka, encoded)
        deadline = Deadline(f"stored traces of {agent}")
        while (count := stored(client, agent)) < n:
            deadline.check(count, n)
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        by_process = {
            name: (cpu_seconds(pid) - cpu[name]) / n * 1000 for name, pid in processes.items()
        }
        spent = by_process["reward worker"] + by_process["sink"]
        throughput = StageRun(n / elapsed, spent, by_process)

        latencies = {}
        for rate in rates:
            settled = settle(settings)
            calm = quiet(list(processes.values())[:4])  # not this process: it is idle here
            print(
                f"settled in {settled:.1f}s, quiet {calm:.1f}s later, before {rate:.0f}/s",
                flush=True,
            )
            latencies[rate] = offered(kafka, client, rate, seconds)
        return throughput, latencies
    finally:
        for worker in workers:
            worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="per worker stage")
    parser.add_argument(
        "--raw-events", type=int, default=50_000, help="for the raw clients (their ceiling)"
    )
    parser.add_argument(
        "--rates", default="100,1000", help="offered loads for the latency test, events/s"
    )
    parser.add_argument("--seconds", type=float, default=10, help="per offered load")
    parser.add_argument("--judged", type=int, default=8, help="traces for the LLM judging test")
    parser.add_argument(
        "--secure", action="store_true", help="also run the pipeline on a --secure stack"
    )
    parser.add_argument(
        "--redaction",
        action="store_true",
        help="also run the pipeline with PII in every event, redaction on and off, same stack",
    )
    args = parser.parse_args()
    plain = on_fresh_stack(args, secure=False)
    raw = plain.raw
    for stage in ("produce", "consume", "insert"):
        print(f"raw {stage + ':':44} {raw[stage]:9.0f} messages/s")
    print(f"{'raw Kafka -> ClickHouse copy (the ceiling):':48} {raw['copy']:9.0f} messages/s")
    one = plain.stages["reward worker alone, 1 worker"]
    for name, run in [*plain.stages.items(), ("pipeline (both workers)", plain.pipeline)]:
        extra = f", x{run.per_s / one.per_s:.2f} of one" if "2 workers" in name else ""
        print(
            f"{name + ':':48} {run.per_s:9.0f} events/s   ratio {run.per_s / raw['copy']:.4f},"
            f" {run.cpu_per_1000:.2f} CPU s per 1000{extra}"
        )
    budget = plain.pipeline.cpu_by_process
    total = sum(budget.values())
    print(
        "pipeline CPU s per 1000 events by process: "
        + ", ".join(f"{name} {seconds:.3f}" for name, seconds in budget.items())
        + f"; {total:.3f} in all: {CORES} cores allow at most {CORES * 1000 / total:.0f} events/s"
    )
    # what the stages' own code allows on one core, whatever the plumbing (stage_floors.py)
    print("\n".join(floor_lines(args.events * 4)))
    ours, latencies = plain.pipeline.per_s, plain.latencies
    for rate, q in latencies.items():
        print(
            f"event -> stored at {rate:.0f}/s offered ({q.achieved:.0f}/s sent, {q.events}"
            f" events): p50 {q.p50:.0f} ms, p95 {q.p95:.0f} ms, p99 {q.p99:.0f} ms"
        )
    if plain.redaction:
        on, off = plain.redaction["on"], plain.redaction["off"]
        for name, run in (("redaction on (mask)", on), ("redaction off", off)):
            print(
                f"pipeline with PII in every event, {name + ':':20} {run.per_s:9.0f} events/s,"
                f" {run.cpu_per_1000:.2f} CPU s per 1000"
            )
        print(f"redaction costs x{on.per_s / off.per_s:.3f} of the throughput without it")
    if args.secure:
        secure = on_fresh_stack(args, secure=True)
        secured, secure_latencies = secure.pipeline.per_s, secure.latencies
        print(
            f"secure pipeline (SASL_SSL, ACLs, HTTPS): {secured:7.0f} traces/s   "
            f"{secured / ours:.3f} of plain"
        )
        for rate, q in secure_latencies.items():
            base = latencies[rate]
            print(
                f"  secure at {rate:.0f}/s offered: p50 {q.p50:.0f} ms, p99 {q.p99:.0f} ms"
                f" (plain p50 {base.p50:.0f} ms, p99 {base.p99:.0f} ms)"
            )
    if args.judged:  # the same as benchmarks/judging.py --only local
        print("\n".join(judge_local(args.judged)))


@dataclass
class Run:
    raw: dict[str, float]  # raw clients, messages/s (plain stack only)
    stages: dict[str, StageRun]  # each worker alone (plain stack only)
    pipeline: StageRun
    latencies: dict[float, Latency]
    redaction: dict[str, StageRun] | None = None  # "on"/"off", PII in every event (plain only)


def on_fresh_stack(args: argparse.Namespace, secure: bool) -> Run:
    """Everything measured on one new stack; the stages alone only on a plain one."""
    with tempfile.TemporaryDirectory() as home:
        settings, logs = Settings(home=Path(home)), Path(home)
        stack.up(settings, secure=secure)
        try:
            raw, stages = {}, {}
            if not secure:
                raw = raw_stages(settings, args.raw_events)
                for workers in (1, 2):
                    name = f"reward worker alone, {workers} worker{'s' * (workers > 1)}"
                    stages[name] = reward_alone(settings, args.events, logs, workers)
                stages["sink alone"] = sink_alone(settings, args.events, logs)
            rates = [float(r) for r in args.rates.split(",")]
            ours, latencies = pipeline(settings, args.events, rates, args.seconds, logs)
            redaction = None
            if args.redaction and not secure:
                off = {"ATLAS_CONFIG_DIR": str(redaction_off_configs(Path(home)))}
                redaction = {
                    "off": pipeline(settings, args.events, [], 0, logs, off, pii=True)[0],
                    "on": pipeline(settings, args.events, [], 0, logs, pii=True)[0],
                }
        finally:
            stack.down(settings)
    return Run(raw, stages, ours, latencies, redaction)


if __name__ == "__main__":
    main()
