"""Start-up time of the local stack: `atlas up` (Kafka + store + topics + migrations) against a
bare Kafka broker started from the same jars (the baseline), median of N fresh starts each.

    .venv/bin/python benchmarks/stack_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from atlas import stack
from atlas.settings import Settings
from deploy.local.kafka import KAFKA_MAIN, KafkaNode, fetch_jars
from deploy.local.processes import free_port, stop_pid


def time_atlas_up(home: Path) -> float:
    settings = Settings(home=home)
    started = time.perf_counter()
    stack.up(settings)
    elapsed = time.perf_counter() - started
    stack.down(settings)
    return elapsed


def time_bare_kafka(home: Path, libs: Path) -> float:
    node = KafkaNode(home / "kafka", free_port(), free_port())
    started = time.perf_counter()
    process = node.start(libs)
    node.wait_ready(process)
    elapsed = time.perf_counter() - started
    stop_pid(process.pid, KAFKA_MAIN)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    libs = fetch_jars(Settings().cache_dir)
    ours, bare = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            ours.append(time_atlas_up(Path(a)))
            bare.append(time_bare_kafka(Path(b), libs))
        print(f"run {run + 1}: atlas up {ours[-1]:.2f}s, bare Kafka {bare[-1]:.2f}s")
    print(
        f"median of {args.runs}: atlas up {statistics.median(ours):.2f}s, "
        f"bare Kafka broker {statistics.median(bare):.2f}s, "
        f"ratio {statistics.median(ours) / statistics.median(bare):.2f}"
    )


if __name__ == "__main__":
    main()
