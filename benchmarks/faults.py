"""The fault suite: what the stream loses or duplicates when its parts crash, with figures.

On a fresh local stack, with two reward workers and a sink running, each scenario offers a
steady load of interactions (a fifth of them followed at once by their user's approval) and
injects one fault halfway: ``kill -9`` of a reward worker, of the sink, of the broker and of
the store (each restarted, as a supervisor would), the store unreachable for 60 s, 10,000
malformed messages of 13 kinds interleaved with 1,000 valid events, and ``kill -9`` of the
GEPA worker in the middle of a job. For each it prints what was sent, stored (one latest row
per trace), dead-lettered, lost and duplicated (a trace row beyond the one its events allow),
and whether the stream kept running (every worker alive, every valid event stored).

    .venv/bin/python benchmarks/faults.py [--rate 100] [--seconds 20] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from confluent_kafka import Producer

from atlas import stack
from atlas.demo import write_configs
from atlas.settings import Settings
from runtime.producer import EventProducer
from schemas.limits import EventLimits
from schemas.models import RetrainTrigger
from store.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.factories import interaction
from tests.hostile import hostile_messages
from tests.workers import WorkerProcess, eventually

T = TypeVar("T")
FIELD_LIMIT = 32 * 1024  # workers run with a small field limit: oversized messages stay small
WORKER_ENV = {"ATLAS_MAX_FIELD_BYTES": str(FIELD_LIMIT)}


@dataclass
class Outcome:
    scenario: str
    sent: int
    stored: int
    dead_lettered: int
    lost: int
    duplicated: int
    kept_running: bool
    seconds: float


class Rig:
    """The stack and its workers; ``restart`` replaces a crashed worker as a supervisor would."""

    def __init__(self, settings: Settings, logs: Path, configs: Path):
        self.settings, self.logs = settings, logs
        self.env = {**WORKER_ENV, "ATLAS_CONFIG_DIR": str(configs)}
        self.kafka = settings.kafka_config()
        self.store = connect(settings.store())
        self.workers = {
            name: WorkerProcess(settings, kind, logs, env=self.env)
            for name, kind in (("rewards-a", "rewards"), ("rewards-b", "rewards"), ("sink", "sink"))
        }

    def kill_and_restart(self, name: str, pause: float = 3.0) -> None:
        self.workers[name].kill9()
        time.sleep(pause)
        kind = self.workers[name].kind
        self.workers[name] = WorkerProcess(self.settings, kind, self.logs, env=self.env)

    def alive(self) -> bool:
        dead = {
            n: w.process.poll() for n, w in self.workers.items() if w.process.poll() is not None
        }
        for name, code in dead.items():
            print(f"worker {name} exited with status {code}; log: {self.workers[name].log}")
        return not dead

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()

    def query(self, sql: str, **parameters: object) -> list[tuple]:  # type: ignore[type-arg]
        return eventually(
            lambda: self.store.query(sql, parameters=parameters).result_rows, 120, "the store"
        )


def offer(rig: Rig, agent: str, rate: float, seconds: float, fault: Callable[[], None]) -> dict:  # type: ignore[type-arg]
    """Send ``rate`` interactions a second for ``seconds`` (every fifth approved at once) and
    run ``fault`` on a thread halfway; returns trace id -> feedback events sent for it."""
    rng = random.Random(agent)
    expected: dict[str, int] = {}
    injector = threading.Thread(target=fault, daemon=True)
    total = int(rate * seconds)
    started = time.monotonic()
    with EventProducer(rig.kafka, delivery_timeout_s=300, block_seconds=300) as producer:
        for i in range(total):
            if i == total // 2:
                injector.start()
            event = interaction(rng, agent, at=datetime.now(UTC))
            producer.record_interaction(event)
            expected[event.trace_id] = 0
            if i % 5 == 0:
                producer.record_feedback(event.trace_id, "approve", agent_id=agent)
                expected[event.trace_id] = 1
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        producer.flush(300)
    injector.join()
    return expected


def wait_until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 300) -> T:
    """``fetch()`` once ``done`` holds for it, or its value when ``timeout`` runs out: the
    tally then shows what is missing instead of a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(2)


def settle(rig: Rig, agent: str, expected: dict[str, int]) -> list[tuple]:  # type: ignore[type-arg]
    return wait_until(
        lambda: rig.query(
            "SELECT trace_id, revision, feedback_count FROM latest_traces"
            " WHERE agent_id = {a:String}",
            a=agent,
        ),
        lambda rows: len(rows) == len(expected) and all(r[2] >= expected[r[0]] for r in rows),
    )


def tally(rig: Rig, name: str, agent: str, expected: dict[str, int], started: float) -> Outcome:
    rows = settle(rig, agent, expected)
    latest = {r[0]: r for r in rows}
    # Lost: a trace not stored, or its feedback not merged. Feedback merges into revision 1
    # when it is read before its interaction, else makes revision 2.
    lost = sum(1 for t in expected if t not in latest or latest[t][2] < expected[t])
    doubled = rig.query(
        "SELECT count() FROM (SELECT trace_id, revision FROM scored_traces FINAL"
        " WHERE agent_id = {a:String} GROUP BY trace_id, revision HAVING count() > 1)",
        a=agent,
    )[0][0]
    beyond = sum(1 for t, (_, rev, fb) in latest.items() if fb > expected.get(t, 0) or rev > 1 + fb)
    return Outcome(
        name,
        len(expected),
        len(latest),
        0,
        lost,
        doubled + beyond,
        rig.alive() and lost == 0,
        time.monotonic() - started,
    )


def run_traffic_scenario(
    rig: Rig, name: str, fault: Callable[[], None], rate: float, seconds: float
) -> Outcome:
    agent, started = f"fault-{uuid.uuid4().hex[:8]}", time.monotonic()
    expected = offer(rig, agent, rate, seconds, fault)
    return tally(rig, name, agent, expected, started)


def malformed(rig: Rig) -> Outcome:
    run, agent, started = uuid.uuid4().hex[:10], f"fault-{uuid.uuid4().hex[:8]}", time.monotonic()
    bad = hostile_messages(run, 10_000, limits=EventLimits(max_field_bytes=FIELD_LIMIT))
    rng = random.Random(run)
    expected: dict[str, int] = {}
    raw = Producer({**rig.kafka, "acks": "all", "linger.ms": 5})
    with EventProducer(rig.kafka) as producer:
        for i in range(1_000):
            event = interaction(rng, agent, at=datetime.now(UTC))
            producer.record_interaction(event)
            expected[event.trace_id] = 0
            for message in bad[i * 10 : (i + 1) * 10]:
                while True:
                    try:
                        raw.produce(message.topic, key=message.key, value=message.value)
                        break
                    except BufferError:
                        raw.poll(0.1)
            raw.poll(0)
    assert raw.flush(120) == 0
    outcome = tally(rig, "10,000 malformed + 1,000 valid", agent, expected, started)

    count, unique = wait_until(
        lambda: rig.query(
            "SELECT count(), uniqExact(key) FROM dead_letters FINAL"
            " WHERE startsWith(key, {r:String})",
            r=f"{run}-bad-",
        )[0],
        lambda found: found[0] >= len(bad),
    )
    outcome.sent += len(bad)
    outcome.dead_lettered = count
    outcome.lost += len(bad) - unique
    outcome.duplicated += count - unique
    outcome.kept_running = outcome.kept_running and unique == len(bad)
    return outcome


def gepa_mid_job(rig: Rig, settings: Settings, logs: Path, env: dict[str, str]) -> Outcome:
    """A GEPA job killed while optimizing is failed by the restarted worker (same slot, same
    id), never run twice, and publishes nothing."""
    started, agent = time.monotonic(), f"fault-{uuid.uuid4().hex[:8]}"
    expected = offer(rig, agent, 20, 2, lambda: None)  # traces for the job's datasets
    settle(rig, agent, expected)
    worker = WorkerProcess(settings, "gepa", logs, env=env)
    trigger = RetrainTrigger(kind="gepa", agent_id=agent, reason="fault suite", budget=200)
    with EventProducer(rig.kafka) as producer:
        producer.send(trigger)

    def states() -> list[tuple[str, str]]:
        return rig.store.query(
            "SELECT state, message FROM jobs FINAL WHERE trigger_id = {t:String} ORDER BY seq",
            parameters={"t": trigger.trigger_id},
        ).result_rows

    try:
        eventually(
            lambda: (
                (last := states()[-1:]) and last[0][0] == "RUNNING" and "optimizing" in last[0][1]
            ),
            600,
            "the job optimizing",
        )
        worker.kill9()
        worker = WorkerProcess(settings, "gepa", logs, env=env)
        eventually(lambda: states()[-1][0] == "FAILED", 300, "the killed job FAILED", interval=2)
        kept_running = worker.process.poll() is None and rig.alive()
    finally:
        worker.stop()
    reports = states()
    queued = sum(state == "QUEUED" for state, _ in reports)
    published = rig.query(
        "SELECT count() FROM prompt_versions FINAL WHERE trigger_id = {t:String}",
        t=trigger.trigger_id,
    )[0][0]
    failed = reports[-1][0] == "FAILED" and "restarted" in reports[-1][1]
    return Outcome(
        "kill -9 GEPA worker mid-job",
        1,
        int(failed),
        0,
        0 if failed else 1,
        (queued - 1) + published,
        kept_running,
        time.monotonic() - started,
    )


def traffic_faults(rig: Rig, outage_s: float = 60.0) -> dict[str, Callable[[], None]]:
    """The faults injected halfway through a load, by scenario name."""
    settings = rig.settings

    def store_away() -> None:
        stack.stop_store(settings)
        time.sleep(outage_s)
        stack.start_store(settings)

    def crash(stop: Callable[..., bool], start: Callable[[Settings], object]) -> Callable[[], None]:
        def fault() -> None:
            stop(settings, kill=True)
            time.sleep(3)
            start(settings)

        return fault

    return {
        "kill -9 reward worker": lambda: rig.kill_and_restart("rewards-a"),
        "kill -9 sink": lambda: rig.kill_and_restart("sink"),
        "kill -9 broker, restart": crash(stack.stop_kafka, stack.start_kafka),
        "kill -9 store, restart": crash(stack.stop_store, stack.start_store),
        f"store unreachable {outage_s:.0f} s": store_away,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="interactions offered per second")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of load per scenario")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop by PID
    home = Path(tempfile.mkdtemp(prefix="atlas-faults-"))
    settings = Settings(home=home)
    configs = write_configs(
        settings.config_dir,
        home / "configs",
        {
            "gepa": {
                "eval_mode": "auto",
                "minibatch_size": 2,
                "dataset": {"train_size": 8, "validation_size": 4, "heldout_size": 8},
                "demonstrations": {"enabled": False},
            },
            "retrain_policy": {"enabled": False},
        },
    )
    stack.up(settings)
    rig = Rig(settings, home, configs)
    traffic = traffic_faults(rig)
    results: list[Outcome] = []
    suite_started = time.monotonic()
    try:
        time.sleep(10)  # the workers join their groups
        for name, fault in traffic.items():
            if args.only is None or name in args.only:
                results.append(run_traffic_scenario(rig, name, fault, args.rate, args.seconds))
                print(results[-1], flush=True)
        if args.only is None or "malformed" in args.only:
            results.append(malformed(rig))
            print(results[-1], flush=True)
        if args.only is None or "gepa" in args.only:
            env = {"ATLAS_CONFIG_DIR": str(configs)}  # reflects with the local model: slow
            results.append(gepa_mid_job(rig, settings, home, env))
            print(results[-1], flush=True)
    finally:
        rig.stop()
        stack.down(settings)
    print(
        f"\nfault suite: {args.rate:.0f} interactions/s offered for {args.seconds:.0f}s per"
        f" scenario, 2 reward workers + sink; {time.monotonic() - suite_started:.0f}s in all\n"
    )
    print("| scenario | sent | stored | dead-lettered | lost | duplicated | kept running | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.scenario} | {r.sent:,} | {r.stored:,} | {r.dead_lettered:,} | {r.lost} |"
            f" {r.duplicated} | {'yes' if r.kept_running else 'NO'} | {r.seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
