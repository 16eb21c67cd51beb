"""The reward worker's bounded state, on a fresh local stack per run (real Kafka, real workers):

1. memory after N traces (default 200,000) with a 1-minute vs a 7-day feedback window: the
   worker's RSS (when ready, after each quarter was sent, once all was consumed, peak, later)
   and the trace states it still holds one expiry pass,
   and 60 s + a pass, after all was consumed (its log line ``trace states: N held, M expired
   now``);
2. recovery of a worker killed with ``kill -9`` holding M traces (default 100,000) of state,
   beside one holding 1,000: seconds from the restart until a fresh probe interaction is
   scored on atlas.rewards.v1, and until the worker logs that it restored the traces' table
   from the changelog (a kill -9'd member holds its partitions for the 20 s session timeout);
   changelog size.

Interactions are offered at a steady rate (``--rate``); the rate the worker kept up is shown.
Figures are printed beside their baseline from the same run, with the machine load; nothing
is asserted. Worker logs are kept in a folder printed at the end.

    .venv/bin/python benchmarks/state.py [--traces 200000] [--recovery-traces 100000]
        [--rate 300] [--flush 5] [--logs DIR]   # the full run takes ~40 min on 2 cores
    .venv/bin/python benchmarks/state.py --memory-only --traces 1000000 --rate 1000 \
        --baseline-traces 200000   # RSS over a million events, ~25 min
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from atlas import stack
from atlas.settings import Settings
from runtime.producer import EventProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.factories import interaction
from tests.workers import WorkerProcess, wait_consumed

INTERACTIONS, REWARDS = "atlas.interactions.v1", "atlas.rewards.v1"
CHANGELOG, GROUP = "atlas-rewards-traces-changelog", "atlas-rewards"
STATES = re.compile(r"trace states: (\d+) held, (\d+) expired now")
READY, RECOVERED = ") ready", "states of atlas-rewards-traces-changelog"
SHORT_S, LONG_S = 60, 604_800
STAMP, STAMP_FORMAT = (
    re.compile(r"\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"),
    "%Y-%m-%d %H:%M:%S,%f",
)
Figures = dict[str, float | None]


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def disk_mb(folder: Path, pattern: str, files: str = "*") -> float:
    found = (f for d in folder.glob(pattern) for f in d.rglob(files) if f.is_file())
    return sum(f.stat().st_size for f in found) / 2**20


class RssSampler:
    """The peak RSS of a process, sampled every half second on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self.peak = max(self.peak, rss_mb(self.pid) or 0.0)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak


class LogWatch:
    """Follows a worker's log: when each marker first appeared, and each expiry pass."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker, self.offset = worker, 0
        self.seen: dict[str, float] = {}
        self.passes: list[tuple[float, int]] = []  # (seen at, states held)

    def poll(self) -> None:
        """Read the new lines; times are the lines' own timestamps (epoch), else now."""
        with self.worker.log.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            stamp = STAMP.match(line)
            now = datetime.strptime(stamp[1], STAMP_FORMAT).timestamp() if stamp else time.time()
            for marker in (READY, RECOVERED):
                if marker in line:
                    self.seen.setdefault(marker, now)
            if match := STATES.search(line):
                self.passes.append((now, int(match[1])))

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.perf_counter() + timeout
        while not done():
            self.poll()
            alive(self.worker)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s ({self.worker.log})")
            time.sleep(0.2)


def alive(worker: WorkerProcess) -> None:
    if worker.process.poll() is not None:
        tail = worker.log.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"worker exited {worker.process.returncode}:\n" + "\n".join(tail))


@contextmanager
def fresh_stack() -> Iterator[Settings]:
    with tempfile.TemporaryDirectory(prefix="atlas-state-") as home:
        settings = Settings(home=Path(home))
        stack.up(settings)
        try:
            yield settings
        finally:
            stack.down(settings)


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }


def fill(
    settings: Settings,
    worker: WorkerProcess,
    n: int,
    rate: float,
    quarter: Callable[[int], None] = lambda sent: None,
) -> tuple[float, float]:
    """Offer ``n`` interactions at ``rate``/s in 100 ms chunks, wait until the worker's group
    consumed them; (offered rate, rate the worker kept from first send to all consumed).
    ``quarter(sent)`` is called after each quarter of them was sent."""
    kafka, rng = settings.kafka_config(), random.Random(n)
    agent, chunk = f"state-{uuid.uuid4().hex[:6]}", max(1, int(rate / 10))
    started = time.perf_counter()
    with EventProducer(kafka) as producer:
        for i in range(n):
            if i % chunk == 0:
                time.sleep(max(0.0, started + i / rate - time.perf_counter()))
                if i % (chunk * 100) == 0:
                    alive(worker)
            if i and i % max(1, n // 4) == 0:
                quarter(i)
            producer.record_interaction(interaction(rng, agent))
    produced = time.perf_counter()
    deadline = produced + 600 + n / 50
    while True:
        alive(worker)
        try:
            wait_consumed(kafka, GROUP, INTERACTIONS, timeout=15)
            break
        except TimeoutError:
            if time.perf_counter() > deadline:
                raise
    return n / (produced - started), n / (time.perf_counter() - started)


def window_run(window: int, traces: int, rate: float, logs: Path) -> Figures:
    env = {"ATLAS_FEEDBACK_WINDOW_S": str(window)}
    pending_ttl = 3600.0
    if window < pending_ttl:
        env["ATLAS_PENDING_FEEDBACK_TTL_S"] = str(window)
        pending_ttl = window
    interval = min(60.0, max(1.0, min(pending_ttl, window) / 4))  # as in streams/app.py
    with fresh_stack() as settings:
        worker = WorkerProcess(settings, "rewards", logs, env=env)
        sampler = RssSampler(worker.process.pid)
        try:
            watch = LogWatch(worker)
            watch.until(lambda: READY in watch.seen, 180, "worker ready")
            idle = rss_mb(worker.process.pid)
            along: Figures = {}

            def quarter(sent: int) -> None:
                along[f"RSS after {sent * 100 // traces}% sent MB"] = rss_mb(worker.process.pid)

            offered, kept = fill(settings, worker, traces, rate, quarter)
            consumed = time.time()
            along["RSS after all consumed MB"] = rss_mb(worker.process.pid)
            figures: Figures = {"offered rate /s": offered, "worker kept /s": kept, **along}
            # A pass that began after all was consumed, then one a short window later.
            for label, wait in (("a pass", interval), (f"{SHORT_S}s + a pass", SHORT_S + interval)):
                after = consumed + wait + 1
                watch.until(
                    lambda after=after: bool(watch.passes) and watch.passes[-1][0] > after,
                    interval + wait + 120,
                    "an expiry pass",
                )
                figures[f"states held {label} later"] = watch.passes[-1][1]
                figures[f"RSS {label} later MB"] = rss_mb(worker.process.pid)
            return {
                **figures,
                "RSS when ready MB": idle,
                "RSS peak MB": sampler.stop(),
                "expiry pass every s": interval,
            }
        finally:
            sampler.stop()
            worker.stop()


def recovery_run(traces: int, rate: float, flush: float, logs: Path) -> Figures:
    env = {"ATLAS_FEEDBACK_WINDOW_S": str(LONG_S)}
    with fresh_stack() as settings:
        kafka = settings.kafka_config()
        worker = WorkerProcess(settings, "rewards", logs, env=env)
        watcher = Consumer({**kafka, "group.id": f"probe-{uuid.uuid4().hex}"})
        try:
            first = LogWatch(worker)
            first.until(lambda: READY in first.seen, 180, "worker ready")
            offered, kept = fill(settings, worker, traces, rate)
            time.sleep(flush)  # the changelog sends and the store's offsets settle
            rss_full = rss_mb(worker.process.pid)
            ends = end_offsets(watcher, REWARDS)
            watcher.assign([TopicPartition(REWARDS, p, end) for p, end in ends.items()])
            changelog = sum(end_offsets(watcher, CHANGELOG).values())
            worker.kill9()
            restarted = time.time()
            worker = WorkerProcess(settings, "rewards", logs, env=env)
            probe = interaction(random.Random(), f"probe-{uuid.uuid4().hex[:6]}")
            with EventProducer(kafka) as producer:
                producer.record_interaction(probe)
            watch, scored = LogWatch(worker), 0.0

            def probe_scored() -> bool:
                nonlocal scored
                for message in watcher.consume(100, timeout=0.1):
                    if message.error() is None and message.key() == probe.trace_id.encode():
                        scored = time.time()
                return scored > 0

            watch.until(probe_scored, 900, "the probe's ScoredTrace")
            watch.poll()
            recovered = watch.seen.get(RECOVERED)
            return {
                "offered rate /s": offered,
                "worker kept /s": kept,
                "restart -> probe scored s": scored - restarted,
                "restart -> table restored s": recovered and recovered - restarted,
                "changelog records": changelog,
                "changelog segments MB": disk_mb(
                    Path(settings.home, "kafka", "data"), CHANGELOG + "-*", "*.log"
                ),
                "RSS before kill MB": rss_full,
                "RSS after recovery MB": rss_mb(worker.process.pid),
            }
        finally:
            watcher.close()
            worker.stop()


def table(title: str, names: tuple[str, str], runs: tuple[Figures, Figures]) -> list[str]:
    lines = [f"{title:<38} {names[0]:>14} {names[1]:>20} {'ratio':>8}"]
    for key in runs[0]:
        ours, base = runs[0][key], runs[1].get(key)
        cells = [
            f"{v:,.1f}" if isinstance(v, float) else "-" if v is None else f"{v:,}"
            for v in (ours, base)
        ]
        ratio = f"{ours / base:.3f}" if ours is not None and base else "-"
        lines.append(f"  {key:<36} {cells[0]:>14} {cells[1]:>20} {ratio:>8}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=200_000)
    parser.add_argument("--recovery-traces", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=300, help="offered interactions/s")
    parser.add_argument("--flush", type=float, default=5, help="seconds before the kill -9")
    parser.add_argument("--logs", type=Path, default=None, help="folder for the worker logs")
    parser.add_argument(
        "--baseline-traces",
        type=int,
        default=None,
        help="traces for the 7-day-window baseline (default: --traces)",
    )
    parser.add_argument("--memory-only", action="store_true", help="skip the kill -9 recovery part")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="atlas-state-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    started, loads = time.perf_counter(), [f"start {load()}"]
    short = window_run(SHORT_S, args.traces, args.rate, logs)
    loads.append(f"after 1-min window {load()}")
    baseline = args.baseline_traces or args.traces
    week = window_run(LONG_S, baseline, args.rate, logs)
    loads.append(f"after 7-day window {load()}")
    lines = table(
        f"{args.traces:,} traces (baseline {baseline:,})",
        ("1-min window", "7-day (baseline)"),
        (short, week),
    )
    if not args.memory_only:
        full = recovery_run(args.recovery_traces, args.rate, args.flush, logs)
        loads.append(f"after {args.recovery_traces:,} traces {load()}")
        few = recovery_run(1000, args.rate, args.flush, logs)
        loads.append(f"after 1,000 traces {load()}")
        lines += [
            "",
            *table(
                "kill -9, then restart",
                (f"{args.recovery_traces:,} traces", "1,000 (baseline)"),
                (full, few),
            ),
        ]
    lines += [
        "",
        f"load average 1/5/15 min on {os.cpu_count()} cores: " + "; ".join(loads),
        f"took {time.perf_counter() - started:.0f}s; worker logs in {logs}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
