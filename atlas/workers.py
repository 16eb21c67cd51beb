"""Long-running workers, wired from settings: the reward stream and the ClickHouse sink."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from atlas.agent import Backends
from atlas.settings import Settings
from consumers.sink import ClickHouseSink, SinkStats
from rim.config import build_rim, load_rim_config
from rim.reward import Rim
from schemas.topics import INTERACTIONS
from store.client import connect
from streams.processor import RewardProcessor


def build_settings_rim(settings: Settings) -> Rim:
    config = load_rim_config(settings.config_dir)
    if not config.needs_models:
        return build_rim(config)
    judge, arbiter = Backends(settings).judge_and_arbiter()
    return build_rim(config, judge, arbiter)


def topic_partitions(kafka_config: dict[str, str], topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(kafka_config).list_topics(topic, timeout=15)
    partitions = metadata.topics[topic].partitions
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist: run `atlas up`")
    return len(partitions)


def run_rewards_worker(settings: Settings, worker_id: str = "atlas-rewards") -> None:
    """Run the Faust reward processor until SIGTERM/SIGINT."""
    import faust

    from streams.app import create_app

    kafka = settings.kafka_config()
    processor = RewardProcessor(build_settings_rim(settings))
    data_dir = settings.home / "workers" / worker_id
    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(
        kafka["bootstrap.servers"],
        processor,
        topic_partitions(kafka, INTERACTIONS),
        data_dir=str(data_dir),
    )
    faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()


def run_sink_worker(settings: Settings, stop: threading.Event | None = None) -> SinkStats:
    """Run the ClickHouse sink until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    url = settings.store_url()
    sink = ClickHouseSink(settings.kafka_config(), lambda: connect(url))
    logging.getLogger(__name__).info("sink: Kafka %s -> %s", settings.bootstrap(), url)
    return sink.run(stop)


def worker_log(settings: Settings, name: str) -> Path:
    return settings.home / "workers" / f"{name}.log"
