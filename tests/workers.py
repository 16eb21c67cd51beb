"""Start the real worker processes (`atlas worker ...`) for end-to-end tests, stop them by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from atlas.settings import Settings
from deploy.local.processes import stop_pid


class WorkerProcess:
    def __init__(
        self, settings: Settings, kind: str, log_dir: Path, env: dict[str, str] | None = None
    ):
        self.kind = kind
        self.log = log_dir / f"{kind}-{uuid.uuid4().hex[:6]}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "atlas.cli", "worker", kind],
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
    admin = AdminClient(kafka_config)
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions

    probe = Consumer({**kafka_config, "group.id": f"probe-{uuid.uuid4().hex}"})
    partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {
        p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
    }
    probe.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions]
        )
        result = admin.list_consumer_group_offsets([request])[group].result(10)
        committed = {tp.partition: tp.offset for tp in result.topic_partitions}
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{group} did not consume {topic} within {timeout}s")


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
