"""A background recorder: what an agent's code (the SDK, ``runtime/tracing.py``) or a request
handler (the recording proxy, ``ingest/proxy.py``) hands over is turned into events and
produced to Kafka on one background thread, so recording never waits on Kafka, on building
the event or on encoding it.

Guarantees:

* ``submit`` never blocks: it puts the item on a bounded queue (``capacity``) and returns;
  when the queue is full the item is dropped, counted (``dropped``) and logged.
* An item is an ``Event``, sent as it is, or anything ``convert`` turns into one (an
  exchange, a trace), on the recorder's thread; interactions count as ``recorded``, feedback
  as ``feedback``.
* Events go through ``runtime.producer.EventProducer`` (``acks=all``, idempotent). With a
  spill file, what Kafka does not acknowledge in time is appended to it (``spilled``) and sent
  again by the next producer opened on it: the recorder opens a new one as soon as Kafka
  acknowledges again, and at start-up. The agent's call is never affected.
* ``close`` drains the queue, then closes the producer (what is unacknowledged by then is
  spilled, or reported by the producer without a spill file).
* An item ``convert`` finds nothing to record in (it raises ``Unrecordable``: ``unreadable``)
  or that makes no valid event (``invalid``, e.g. over the size limits) is counted and logged
  with its trace id, never with its text.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from runtime.metrics import LeftOut, WorkerMetrics
from runtime.producer import EventProducer, ProducerError
from schemas.codec import AvroCodec
from schemas.limits import LimitError
from schemas.models import Event, InteractionEvent
from schemas.topics import INTERACTIONS, topic_of

log = logging.getLogger(__name__)
COUNTERS = ("recorded", "feedback", "dropped", "unreadable", "invalid", "send_errors")


class Unrecordable(ValueError):
    """The item holds nothing to record (``convert`` says why); counted as ``unreadable``."""


def as_is(item: Any) -> Event:
    """The ``convert`` of a recorder handed events only."""
    if not isinstance(item, Event):
        raise Unrecordable(f"{type(item).__name__} is no event")
    return item


class EventSink(Protocol):
    """What the recorder needs of a producer (``EventProducer`` is one)."""

    delivered: int
    spilled: int

    def send(self, event: Event) -> None: ...

    def poll(self, timeout: float = 0.0) -> int: ...

    def close(self, timeout: float = 30.0) -> None: ...


class Recorder:
    def __init__(
        self,
        open_producer: Callable[[], EventSink],
        capacity: int = 10_000,
        spill_path: Path | None = None,
        convert: Callable[[Any], Event] = as_is,
        name: str = "recorder",
        metrics: WorkerMetrics | None = None,
    ):
        self._open = open_producer
        self.metrics = metrics  # with one, what is taken and left out is counted for Prometheus
        self._convert = convert
        self._queue: queue.Queue[Any] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._close_timeout = 30.0
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._closed_delivered = 0  # of producers closed (reopened after an outage)
        self._closed_spilled = 0
        self._producer: EventSink | None = None
        self.spill_path = spill_path
        self.started = threading.Event()

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def submit(self, item: Any) -> bool:
        """Hand ``item`` over; False (counted, logged) if the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            if self.metrics is not None:  # the others are counted on the recorder's thread
                self.metrics.taken((topic_for(item),))
            self._count("dropped", item)
            log.error("recorder queue full (%d): an event was dropped", self._queue.maxsize)
            return False

    def stats(self) -> dict[str, int]:
        """Counters since start: recorded/feedback (handed to Kafka), delivered and spilled
        (Kafka's verdicts), dropped, unreadable, invalid, send_errors, and queued now."""
        producer = self._producer
        with self._lock:
            stats = dict(self.counts)
        stats["delivered"] = self._closed_delivered + (
            producer.delivered if producer is not None else 0
        )
        stats["spilled"] = self._closed_spilled + (producer.spilled if producer is not None else 0)
        stats["queued"] = self._queue.qsize()
        return stats

    def close(self, timeout: float = 30.0) -> None:
        """Record what is queued, then close the producer (within about ``timeout``)."""
        if self._thread.is_alive():
            self._close_timeout = timeout
            self._queue.put(None)
            self._thread.join(timeout + 60)

    def _count(self, name: str, left_out: Any = None) -> None:
        """Count ``name``; with ``left_out``, that item was not recorded for that reason."""
        with self._lock:
            self.counts[name] += 1
        if left_out is not None and self.metrics is not None:
            self.metrics.left_out((LeftOut(topic_for(left_out), name, dead_lettered=False),))

    def _spill_waiting(self) -> bool:
        return self.spill_path is not None and self.spill_path.exists()

    def _run(self) -> None:
        producer = self._producer = self._open()  # resends an earlier run's spill first
        self.started.set()
        delivered_at_spill = None  # Kafka's delivered count when events were last spilled
        spilled = producer.spilled
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = False
            if item is None:
                break
            if item is not False:
                self._record(producer, item)
            producer.poll(0)
            if producer.spilled != spilled:
                spilled, delivered_at_spill = producer.spilled, producer.delivered
            elif (
                delivered_at_spill is not None
                and producer.delivered > delivered_at_spill
                and self._spill_waiting()
            ):  # Kafka acknowledges again: a new producer sends the spilled events
                producer = self._reopen(producer)
                spilled, delivered_at_spill = producer.spilled, None
        producer.close(self._close_timeout)
        self._closed_delivered += producer.delivered
        self._closed_spilled += producer.spilled
        self._producer = None  # its client and connections go with it

    def _reopen(self, producer: EventSink) -> EventSink:
        producer.close(10.0)
        self._closed_delivered += producer.delivered
        self._closed_spilled += producer.spilled
        started = time.monotonic()
        self._producer = fresh = self._open()
        log.info("Kafka is back: spilled events resent in %.1fs", time.monotonic() - started)
        return fresh

    def _record(self, producer: EventSink, item: Any) -> None:
        if self.metrics is not None:
            self.metrics.taken((topic_for(item),))
        try:
            event = item if isinstance(item, Event) else self._convert(item)
            producer.send(event)
            self._count("recorded" if isinstance(event, InteractionEvent) else "feedback")
        except Unrecordable as exc:
            self._count("unreadable", item)
            log.warning("trace %s not recorded: %s", getattr(item, "trace_id", "?"), exc)
        except (ValidationError, LimitError, ValueError) as exc:
            self._count("invalid", item)
            log.error(
                "trace %s not recorded: %s",
                getattr(item, "trace_id", "?"),
                str(exc).splitlines()[0][:300],
            )
        except ProducerError as exc:
            self._count("send_errors", item)
            log.error("trace %s not recorded: %s", getattr(item, "trace_id", "?"), exc)


def open_recorder(
    kafka_config: dict[str, str],
    codec: AvroCodec | None = None,
    spill_path: Path | None = None,
    delivery_timeout_s: float = 60.0,
    capacity: int = 10_000,
    convert: Callable[[Any], Event] = as_is,
    name: str = "recorder",
    metrics: WorkerMetrics | None = None,
) -> Recorder:
    """A started recorder producing with ``EventProducer`` (``acks=all``, spilling to
    ``spill_path``: an earlier run's spill is sent first, on the recorder's thread); with
    ``metrics``, both count for Prometheus."""

    def producer() -> EventProducer:
        return EventProducer(
            kafka_config,
            codec=codec,
            delivery_timeout_s=delivery_timeout_s,
            block_seconds=1.0,
            spill_path=spill_path,
            metrics=metrics,
        )

    return Recorder(producer, capacity, spill_path, convert, name, metrics).start()


def topic_for(item: Any) -> str:
    """The topic ``item`` is recorded on: an event's own; what ``convert`` turns into an
    event (an exchange, a trace) becomes an interaction."""
    return topic_of(item) if isinstance(item, Event) else INTERACTIONS
