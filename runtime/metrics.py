"""Prometheus metrics of the long-running workers (reward and rollout streams, sink, GEPA and
GRPO workers, recording proxy): one set of named metrics that every worker updates, served over
HTTP by ``serving`` when ``ATLAS_METRICS_PORT`` is set.

It lives in ``runtime/`` because every package that runs a worker may import it (``streams/``,
``consumers/``, ``ingest/``, ``atlas/``), while ``consumers/``' Kafka plumbing is out of reach
of ``streams/`` and ``ingest/``; ``schemas/`` stays the contracts without I/O.

The names and labels are a contract: Grafana's dashboards and the Kubernetes scrape
configuration read them.

=============================================  =========  ==============================
metric                                         type       labels
=============================================  =========  ==============================
``atlas_events_in_total``                      counter    worker, topic
``atlas_events_out_total``                     counter    worker, topic
``atlas_dead_letters_total``                   counter    worker, topic, reason
``atlas_events_dropped_total``                 counter    worker, topic, reason
``atlas_batch_size``                           histogram  worker
``atlas_batch_seconds``                        histogram  worker
``atlas_consumer_lag``                         gauge      group, topic, partition
``atlas_jobs_total``                           counter    kind, state
``atlas_jobs_active``                          gauge      kind
=============================================  =========  ==============================

``worker`` is one of rewards, rollouts, sink, gepa, grpo, proxy; ``kind`` gepa or grpo.

Readiness: the same port answers ``GET /ready`` with 200 once every consumer group this
process reads with (each ``ConsumerLag``) has been joined (the broker gave the consumer a
member id), 503 and the groups still waiting before that; a process without one (the proxy, the
OTLP receiver) is ready while it serves. Kubernetes' readiness probe reads it.

Guarantees: a stream or sink counts a batch's events only once its effect is durable (the
transaction committed, the rows inserted and the offsets committed), so a batch retried after a
failure is counted once; dead letters count by source ``topic`` and ``reason`` (the dead
letter's error type). Metrics are per process: Prometheus sums the replicas.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from schemas.configfile import ConfigError

log = logging.getLogger(__name__)

EVENTS_IN = Counter(
    "atlas_events_in",
    "Events a worker took in: read from the topic (streams, sink, job workers) or handed to "
    "the proxy's recorder for the topic.",
    ["worker", "topic"],
)
EVENTS_OUT = Counter(
    "atlas_events_out",
    "Events a worker delivered, dead letters aside: produced to the topic in a committed "
    "transaction (streams, job workers), acknowledged by Kafka (proxy), or the topic's events "
    "stored (sink).",
    ["worker", "topic"],
)
DEAD_LETTERS = Counter(
    "atlas_dead_letters",
    "Events a worker dead-lettered, by the topic they came from and the reason (error type).",
    ["worker", "topic", "reason"],
)
DROPPED = Counter(
    "atlas_events_dropped",
    "Events a worker took in and left on purpose, neither delivered nor dead-lettered (e.g. the "
    "sink skips an undecodable event whose topic's owner dead-letters it).",
    ["worker", "topic", "reason"],
)
BATCH_SIZE = Histogram(
    "atlas_batch_size",
    "Events per batch a worker committed.",
    ["worker"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "atlas_batch_seconds",
    "Seconds from a batch's first handling to its commit (retries included).",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge(
    "atlas_consumer_lag",
    "Messages after the group's committed offset, per partition assigned to this worker.",
    ["group", "topic", "partition"],
)
JOBS = Counter(
    "atlas_jobs",
    "Jobs that entered a state (QUEUED, RUNNING, SUCCEEDED, FAILED, REJECTED).",
    ["kind", "state"],
)
JOBS_ACTIVE = Gauge("atlas_jobs_active", "Jobs this worker runs now.", ["kind"])


_GROUPS: list[ConsumerLag] = []  # this process's consumers, for /ready
_GROUPS_LOCK = threading.Lock()


def readiness() -> tuple[bool, str]:
    """Whether every consumer group of this process has been joined, and what waits."""
    with _GROUPS_LOCK:
        waiting = sorted({lag.group for lag in _GROUPS if not lag.joined})
    if waiting:
        return False, "waiting to join consumer group " + ", ".join(waiting)
    return True, "ready"


def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI: ``/ready`` (200 or 503, a line of text), everything else Prometheus' metrics."""
    if environ.get("PATH_INFO") == "/ready":
        ready, why = readiness()
        status = "200 OK" if ready else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [why.encode() + b"\n"]
    return _PROMETHEUS(environ, start_response)


_PROMETHEUS = make_wsgi_app()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


@contextlib.contextmanager
def serving(host: str, port: int) -> Iterator[None]:
    """Serve /metrics and /ready on ``host:port`` on a daemon thread while the block runs;
    nothing when ``port`` is 0. A port that cannot be bound is a ConfigError (one line, the
    port named)."""
    if not port:
        yield
        return
    try:
        server = make_server(host, port, metrics_app, ThreadingWSGIServer, _QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set "
            "ATLAS_METRICS_PORT (or --metrics-port) to a free port, or 0 for none"
        ) from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class LeftOut(NamedTuple):
    """An event a worker took in and did not deliver: dead-lettered, or left on purpose."""

    topic: str
    reason: str
    dead_lettered: bool = True


class WorkerMetrics:
    """The event and batch metrics of one worker (its ``worker`` label)."""

    def __init__(self, worker: str):
        self.worker = worker

    def taken(self, topics: Iterable[str]) -> None:
        """Events taken in, one topic per event."""
        for topic, n in collections.Counter(topics).items():
            EVENTS_IN.labels(self.worker, topic).inc(n)

    def delivered(self, topics: Iterable[str]) -> None:
        """Events delivered, one topic per event."""
        for topic, n in collections.Counter(topics).items():
            EVENTS_OUT.labels(self.worker, topic).inc(n)

    def left_out(self, events: Iterable[LeftOut]) -> None:
        for (topic, reason, dead_lettered), n in collections.Counter(events).items():
            counter = DEAD_LETTERS if dead_lettered else DROPPED
            counter.labels(self.worker, topic, reason).inc(n)

    def committed(
        self,
        messages: Sequence[Message],
        started: float,
        delivered: Iterable[str],
        left_out: Iterable[LeftOut] = (),
    ) -> None:
        """A batch committed: ``messages`` taken in (with the batch's size and its seconds
        since ``started``, a ``time.monotonic()``), the topics of the events it ``delivered``,
        and the events it dead-lettered or dropped."""
        if messages:
            self.taken(message.topic() for message in messages)
            BATCH_SIZE.labels(self.worker).observe(len(messages))
            BATCH_SECONDS.labels(self.worker).observe(time.monotonic() - started)
        self.delivered(delivered)
        self.left_out(left_out)


def job_entered(kind: str, state: str, previous: str | None) -> None:
    """A job of ``kind`` went from ``previous`` (None: new) to ``state``."""
    if state != previous:  # progress reports repeat RUNNING
        JOBS.labels(kind, state).inc()


class ConsumerLag:
    """Keeps ``atlas_consumer_lag`` of the partitions assigned to one worker's consumer: each
    partition's end (its last stable offset) minus the group's committed offset (its start
    when the group committed none). A thread of its own reads them every ``interval_s`` with a
    consumer that never joins the group, so a worker that is stuck (its store down, a long
    batch) shows its lag growing. The worker reports its assignment with ``watch``."""

    def __init__(self, kafka_config: dict[str, str], group: str, interval_s: float = 5.0):
        self.kafka_config, self.group, self.interval_s = kafka_config, group, interval_s
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self._reported: set[tuple[str, int]] = set()
        self._watched_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-{group}", daemon=True)
        self.joined = False  # the group gave the worker's consumer a member id

    def start(self) -> ConsumerLag:
        """Start reading; from now until ``close`` the process is not ready before the group
        is joined."""
        with _GROUPS_LOCK:
            _GROUPS.append(self)
        self._thread.start()
        return self

    def watch(self, consumer: Consumer) -> None:
        """Take note of ``consumer``'s assignment and whether it joined its group (at most
        once a second: call it freely)."""
        now = time.monotonic()
        if now - self._watched_at >= 1.0:
            self._watched_at = now
            self._assigned = frozenset((tp.topic, tp.partition) for tp in consumer.assignment())
            self.joined = self.joined or bool(consumer.memberid())

    def close(self) -> None:
        """Stop reading and drop this worker's series (its partitions move to other workers)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._show({})
        with _GROUPS_LOCK:
            if self in _GROUPS:
                _GROUPS.remove(self)

    def _run(self) -> None:
        reader = Consumer(
            {
                **self.kafka_config,
                "group.id": self.group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        try:
            failing = False
            while not self._stop.wait(self.interval_s):
                try:
                    self._show(self._read(reader, sorted(self._assigned)))
                    failing = False
                except KafkaException as exc:  # the last figures stay until the next read
                    if not failing:  # once per outage, not every few seconds
                        log.warning("consumer lag of %s not read: %s", self.group, exc)
                    failing = True
        finally:
            reader.close()

    def _read(self, reader: Consumer, partitions: list[tuple[str, int]]) -> dict[tuple, int]:
        if not partitions:
            return {}
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        lags = {}
        for tp in reader.committed(wanted, timeout=10):
            low, high = reader.get_watermark_offsets(tp, timeout=10)
            start = tp.offset if tp.offset >= 0 else low
            lags[(tp.topic, tp.partition)] = max(high - start, 0)
        return lags

    def _show(self, lags: dict[tuple, int]) -> None:
        for topic, partition in self._reported - set(lags):
            CONSUMER_LAG.remove(self.group, topic, str(partition))
        for (topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(lag)
        self._reported = set(lags)
