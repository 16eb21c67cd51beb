"""Start the real worker processes (`atlas worker ...`) for end-to-end tests, stop them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition

from atlas.lag import committed_offsets
from atlas.settings import Settings
from consumers.trigger_worker import JobRunner, TriggerWorker
from deploy.local.processes import stop_pid
from schemas.models import JobKind
from schemas.topics import TRIGGERS


class WorkerProcess:
    def __init__(
        self,
        settings: Settings,
        kind: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.log = log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "atlas.cli", "worker", kind, *options],
                env={**os.environ, "ATLAS_HOME": str(settings.home), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_pid(self.process.pid, "atlas.cli", timeout=20)
        self.process.wait(10)


def wait_consumed(
    kafka_config: dict[str, str], group: str, topic: str, timeout: float = 60
) -> None:
    """Block until ``group`` has committed offsets up to the end of every partition of ``topic``."""
    from confluent_kafka import Consumer

    probe = Consumer({**kafka_config, "group.id": f"probe-{uuid.uuid4().hex}"})
    partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {
        p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
    }
    probe.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wanted = [TopicPartition(topic, p) for p in partitions]
        committed = committed_offsets(kafka_config, group, wanted, 10)
        if all(committed.get((topic, p), -1) >= end for p, end in ends.items()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{group} did not consume {topic} within {timeout}s")


def reader_at_end(kafka_config: dict[str, str], topics: list[str]) -> Any:
    """A consumer assigned to the current end of every partition of ``topics``: it sees only
    what is produced from now on (the session's topics hold earlier tests' messages, hostile
    ones included)."""
    from confluent_kafka import Consumer

    consumer = Consumer({**kafka_config, "group.id": f"reader-{uuid.uuid4().hex}"})
    metadata = consumer.list_topics(timeout=10).topics
    consumer.assign(
        [
            TopicPartition(
                topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            )
            for topic in topics
            for p in metadata[topic].partitions
        ]
    )
    return consumer


def skip_to_end(kafka_config: dict[str, str], group: str, topic: str) -> None:
    """Commit ``group``'s offsets at the end of ``topic``: a worker started next sees only
    what is produced from now on (earlier tests leave triggers behind)."""
    from confluent_kafka import Consumer

    consumer = Consumer({**kafka_config, "group.id": group, "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = [
        TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1])
        for p in partitions
    ]
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


@dataclass
class Observed:
    """A value and the one awaited; true when they are equal, so a timed-out ``eventually``
    reports the last value it saw instead of ``False``."""

    value: Any
    expected: Any

    def __bool__(self) -> bool:
        return bool(self.value == self.expected)


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds; errors count as not yet
    (a service may be down on purpose), the last one is reported on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def start_trigger_worker(
    kafka_config: dict[str, str], kind: JobKind, run_job: JobRunner
) -> tuple[threading.Event, threading.Thread]:
    """A TriggerWorker on a thread, in its own consumer group that starts at the end of the
    triggers topic (earlier tests leave triggers behind). Stop it with the returned event."""
    group = f"{kind}-test-{uuid.uuid4().hex[:6]}"
    skip_to_end(kafka_config, group, TRIGGERS)
    worker = TriggerWorker(
        kind, kafka_config, run_job, worker_id=f"test-{uuid.uuid4().hex[:6]}", group_id=group
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def scored_count(store: Any, agent: str) -> int:
    """Rows of ``agent`` in the store's scored_traces (every revision)."""
    query = "SELECT count() FROM scored_traces WHERE agent_id = {a:String}"
    return int(store.query(query, {"a": agent}).result_rows[0][0])


def stack_cli(settings: Settings) -> Callable[..., str]:
    """``cli(*args, code=0)``: the atlas CLI in-process against the stack of ``settings``; it
    asserts the exit code and returns the output with its whitespace folded (wide tables)."""
    from typer.testing import CliRunner

    from atlas.cli import app

    runner = CliRunner()
    env = {"ATLAS_HOME": str(settings.home), "COLUMNS": "220"}

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return " ".join(result.output.split())

    return cli


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """A worker's /metrics on 127.0.0.1:``port``, fetched with a plain HTTP client and parsed
    by prometheus_client's own parser: {(sample name, labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)
