"""The metrics module (runtime/metrics.py) and the workers that use it in-process: what a batch,
a job and the proxy's recorder count, the consumer lag measured on the real broker, and the
port settings. Every figure is read the way Prometheus reads it: /metrics over HTTP, parsed by
prometheus_client's parser (the worker processes themselves: tests/test_metrics_e2e.py)."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from atlas.settings import Settings
from consumers.jobs import JobReporter
from deploy.local.processes import free_port
from ingest.serving import open_recorder
from runtime.metrics import ConsumerLag, LeftOut, WorkerMetrics, job_entered, serving
from runtime.producer import EventProducer
from schemas.configfile import ConfigError
from schemas.models import FeedbackEvent, RetrainTrigger
from schemas.topics import FEEDBACK, INTERACTIONS, JOBS, TRIGGERS
from tests.factories import no_completion_exchange
from tests.fakes import Msg
from tests.workers import Samples, eventually, metric, scrape, start_trigger_worker


@contextmanager
def served() -> Iterator[int]:
    """This process's metrics on a free port while the block runs."""
    port = free_port()
    with serving("127.0.0.1", port):
        yield port


def grew(port: int, before: Samples, name: str, **labels: str) -> float:
    return metric(scrape(port), name, **labels) - metric(before, name, **labels)


def test_a_taken_metrics_port_is_one_readable_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}")
        with refused, serving("127.0.0.1", port):
            pass


def test_metrics_are_off_by_default_and_bound_to_localhost() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.metrics_port, settings.metrics_host) == (0, "127.0.0.1")
    with serving(settings.metrics_host, settings.metrics_port):  # nothing served, no error
        pass


def test_a_committed_batch_counts_in_out_dead_letters_by_reason_and_its_size() -> None:
    worker = f"unit-{uuid.uuid4().hex[:6]}"
    batch = [Msg(b"x", b"k", i, INTERACTIONS) for i in range(5)] + [Msg(b"f", b"k", 0, FEEDBACK)]
    with served() as port:
        before = scrape(port)
        WorkerMetrics(worker).committed(
            batch,
            started=0.0,
            delivered=["atlas.rewards.v1"] * 3,
            left_out=[
                LeftOut(INTERACTIONS, "DecodeError"),
                LeftOut(INTERACTIONS, "DecodeError"),
                LeftOut(FEEDBACK, "InvalidEvent"),
                LeftOut(FEEDBACK, "OwnerDeadLetters", dead_lettered=False),
            ],
        )
        WorkerMetrics(worker).committed([], 0.0, [])  # a timer's batch: no size, no events

        def counted(name: str, **labels: str) -> float:
            return grew(port, before, name, worker=worker, **labels)

        assert counted("atlas_events_in_total", topic=INTERACTIONS) == 5
        assert counted("atlas_events_in_total", topic=FEEDBACK) == 1
        assert counted("atlas_events_out_total", topic="atlas.rewards.v1") == 3
        assert counted("atlas_dead_letters_total", topic=INTERACTIONS, reason="DecodeError") == 2
        assert counted("atlas_dead_letters_total", topic=FEEDBACK, reason="InvalidEvent") == 1
        assert counted("atlas_dead_letters_total") == 3
        assert counted("atlas_events_dropped_total", reason="OwnerDeadLetters") == 1
        assert counted("atlas_batch_size_count") == 1 and counted("atlas_batch_size_sum") == 6
        assert counted("atlas_batch_seconds_count") == 1


def test_a_job_counts_each_state_it_enters_once() -> None:
    kind = f"unit-{uuid.uuid4().hex[:6]}"
    with served() as port:
        before = scrape(port)
        previous = None
        for state in ("QUEUED", "RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"):  # progress
            job_entered(kind, state, previous)
            previous = state
        assert [
            grew(port, before, "atlas_jobs_total", kind=kind, state=state)
            for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED")
        ] == [1, 1, 1, 0]


def lag_of(port: int, group: str) -> dict[tuple[str, str], float]:
    return {
        (labels["topic"], labels["partition"]): value
        for (name, found), value in scrape(port).items()
        if name == "atlas_consumer_lag" and (labels := dict(found))["group"] == group
    }


def ready(port: int) -> tuple[int, str]:
    """GET /ready on the metrics port: (status, its line)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode().strip()


class _Joining:
    """A consumer whose group membership the test decides."""

    member: str | None = None

    def assignment(self) -> list[object]:
        return []

    def memberid(self) -> str | None:
        return self.member


def test_ready_waits_for_every_consumer_group_of_the_process() -> None:
    first, second = _Joining(), _Joining()
    nowhere = {"bootstrap.servers": "127.0.0.1:1"}  # nothing assigned, so nothing is read
    lags = [ConsumerLag(nowhere, group, interval_s=0.1).start() for group in ("atlas-a", "atlas-b")]
    try:
        with served() as port:
            assert ready(port) == (503, "waiting to join consumer group atlas-a, atlas-b")
            first.member = "m-1"
            lags[0].watch(first)  # type: ignore[arg-type]
            lags[1].watch(second)  # type: ignore[arg-type]
            assert ready(port) == (503, "waiting to join consumer group atlas-b")
            second.member = "m-2"
            lags[1]._watched_at = 0.0  # the once-a-second limit, not under test here
            lags[1].watch(second)  # type: ignore[arg-type]
            assert ready(port) == (200, "ready")
            assert scrape(port)  # /metrics is served beside it
    finally:
        for lag in lags:
            lag.close()
    with served() as port:
        assert ready(port) == (200, "ready")  # closed consumers wait for nothing


def test_consumer_lag_is_what_the_group_has_not_committed(kafka_config: dict[str, str]) -> None:
    topic, group = f"metrics-lag-{uuid.uuid4().hex[:8]}", f"metrics-lag-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(kafka_config)  # kept until the topic is made
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer(kafka_config)
    for i in range(7):
        producer.produce(topic, value=b"v", partition=i % 2)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    lag = ConsumerLag(kafka_config, group, interval_s=0.2).start()
    try:
        with served() as port:
            assert ready(port) == (503, f"waiting to join consumer group {group}")
            taken = []

            def assigned_and_read() -> bool:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    taken.append(message)
                lag.watch(consumer)
                return len(consumer.assignment()) == 2

            eventually(assigned_and_read, 60, "the partitions assigned", interval=0)
            eventually(
                lambda: lag.watch(consumer) or ready(port) == (200, "ready"),
                30,
                "ready once the group is joined",
            )
            # nothing committed yet: every message counts, from the partitions' start
            eventually(
                lambda: lag_of(port, group) == {(topic, "0"): 4, (topic, "1"): 3},
                30,
                "a lag of 4 + 3",
                interval=0.2,
            )
            while len(taken) < 7:
                message = consumer.poll(1)
                if message is not None and message.error() is None:
                    taken.append(message)
            consumer.commit(asynchronous=False)  # what it has read: all 7
            eventually(
                lambda: lag_of(port, group) == {(topic, "0"): 0, (topic, "1"): 0},
                30,
                "no lag once committed",
                interval=0.2,
            )
            lag.close()
            assert lag_of(port, group) == {}  # its partitions are no longer this worker's
    finally:
        lag.close()
        consumer.close()


def test_the_proxys_recorder_counts_what_it_took_left_out_and_kafka_acknowledged(
    kafka_config: dict[str, str],
) -> None:
    feedback = [FeedbackEvent(trace_id=f"t-{uuid.uuid4().hex}", kind="approve") for _ in range(4)]
    no_completion = no_completion_exchange()
    with served() as port:
        before = scrape(port)
        recorder = open_recorder(kafka_config)
        for event in feedback:
            recorder.submit(event)
        recorder.submit(no_completion)
        recorder.close()
        assert recorder.stats()["delivered"] == 4

        def counted(name: str, **labels: str) -> float:
            return grew(port, before, name, worker="proxy", **labels)

        assert counted("atlas_events_in_total", topic=FEEDBACK) == 4
        assert counted("atlas_events_in_total", topic=INTERACTIONS) == 1
        assert counted("atlas_events_out_total", topic=FEEDBACK) == 4  # Kafka's acks
        assert counted("atlas_events_dropped_total", topic=INTERACTIONS, reason="unreadable") == 1


def test_a_learning_worker_counts_its_triggers_job_states_and_reports(
    kafka_config: dict[str, str],
) -> None:
    agent, release = f"metrics-{uuid.uuid4().hex[:8]}", threading.Event()

    def job(trigger: RetrainTrigger, reporter: JobReporter) -> None:
        reporter.report("RUNNING", "half", progress=0.5)
        release.wait(60)
        reporter.report("RUNNING", "most", progress=0.9)
        reporter.report("SUCCEEDED", "done")

    with served() as port:
        before = scrape(port)
        stop, thread = start_trigger_worker(kafka_config, "gepa", job)
        try:
            with EventProducer(kafka_config) as producer:
                producer.send(RetrainTrigger(kind="gepa", agent_id=agent, reason="metrics"))
            eventually(
                lambda: metric(scrape(port), "atlas_jobs_active", kind="gepa") == 1,
                60,
                "the job running",
                interval=0.2,
            )
            release.set()
            eventually(
                lambda: grew(port, before, "atlas_jobs_total", kind="gepa", state="SUCCEEDED"),
                60,
                "the job done",
                interval=0.2,
            )
            eventually(
                lambda: metric(scrape(port), "atlas_jobs_active", kind="gepa") == 0,
                10,
                "no job running",
                interval=0.2,
            )
        finally:
            release.set()
            stop.set()
            thread.join(30)
        assert [
            grew(port, before, "atlas_jobs_total", kind="gepa", state=state)
            for state in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED")
        ] == [1, 1, 1, 0]
        assert grew(port, before, "atlas_events_in_total", worker="gepa", topic=TRIGGERS) == 1
        assert grew(port, before, "atlas_events_out_total", worker="gepa", topic=JOBS) == 4
