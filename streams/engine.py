"""A small exactly-once stream engine on confluent-kafka: take a batch of messages, let the
handlers turn it into outputs and table changes, and commit the outputs, the tables' changelog
entries and the batch's source offsets in one Kafka transaction.

It replaced Faust for the reward stream: profiled under load (py-spy, issue 14), Faust and
aiokafka spent about 1.8 of the reward worker's 2.35 CPU ms per event on per-event machinery
(one future, one changelog write and one acknowledgement per message), and Faust skipped
messages around rebalances, which cost a gap guard of its own. Here a batch costs one
transaction, and librdkafka hands over every offset in order. A batch's transaction commits
on a thread while the next batch is filled (a commit took 60-120 ms of each 500-event batch's
~400 ms when the two took turns).

Guarantees:
* A batch's outputs, changelog entries and offsets are committed together or not at all
  (Kafka transactions; ``send_offsets_to_transaction`` fences a member of an older group
  generation, KIP-447). A worker killed at any point leaves no half batch for a
  ``read_committed`` reader, and the next owner processes the batch once, from the state the
  last committed batch left.
* A table partition is restored from its compacted changelog, to its end, before any message
  of a source partition it follows is handled.
* A handler that raises one of ``retry_on`` (a schema-registry outage) aborts the batch: its
  table changes are undone, its partitions rewound, and it is tried again after a backoff.
  Handlers dead-letter their own bad events; anything else they raise is a bug, logged, and
  retried the same way, so nothing is committed past an event that was not handled.
* At most one batch is committing while the next is filled on top of its table changes;
  the next one's transaction begins only after it committed. If it fails, both are undone
  (the later first) and rewound. A rebalance, a timer or stopping waits for it first.
* A rebalance in the middle of taking a batch drops what was taken: the partitions' next
  owner (this worker or another) starts from the committed offsets.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import (
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from runtime.metrics import ConsumerLag, WorkerMetrics
from schemas.topics import DEADLETTER
from streams import positions
from streams.tables import Batch, Table, ensure_topics, restore
from streams.transactions import MAX_BACKOFF_S, TransactionStuck, Transactor

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[Message], Batch], None]


@dataclass
class Timer:
    """``run(batch)`` every ``interval_s`` between batches, in a transaction of its own; again
    right after the next batch if it returns True (more work than one transaction should
    hold)."""

    interval_s: float
    run: Callable[[Batch], bool]
    due: float = 0.0


@dataclass
class InFlight:
    """A filled batch whose transaction runs on a thread while the next batch is filled."""

    batch: Batch
    messages: list[Message]
    offsets: list[TopicPartition]
    started: float  # time.monotonic() when the batch began to be handled
    thread: threading.Thread = field(init=False)
    failure: BaseException | None = None


class StreamEngine:
    def __init__(
        self,
        kafka_config: dict[str, str],
        group_id: str,
        handlers: dict[str, Handler],
        tables: Sequence[Table] = (),
        timers: Sequence[Timer] = (),
        batch_size: int = 500,
        linger_s: float = 0.05,
        retry_on: tuple[type[Exception], ...] = (),
        transactional_id: str | None = None,
        max_poll_interval_s: float = 600.0,
        worker: str | None = None,
    ):
        """``worker`` labels this engine's metrics (``runtime/metrics.py``; default: the group)."""
        self.kafka_config, self.group_id = kafka_config, group_id
        self.handlers, self.tables, self.timers = handlers, list(tables), list(timers)
        self.batch_size, self.linger_s, self.retry_on = batch_size, linger_s, retry_on
        self.transactional_id = transactional_id or f"{group_id}-{uuid.uuid4().hex[:12]}"
        self.max_poll_interval_s = max_poll_interval_s
        self._assignment_changed = False
        self._consumer: Consumer | None = None
        self._transactor = Transactor(kafka_config, self.transactional_id)
        self._commits: dict[tuple[str, int], int] = {}  # what this worker committed last
        self._in_flight: InFlight | None = None  # the batch committing in the background
        self.metrics = WorkerMetrics(worker or group_id)
        self._lag = ConsumerLag(kafka_config, group_id)
        self._ready: Callable[[], None] | None = None  # run's, until the first assignment
        # a batch's outputs that are not events it delivers: table changes, dead letters
        self._not_events = {table.changelog for table in self.tables} | {DEADLETTER}

    # -- setup -------------------------------------------------------------------------------

    def ensure_topics(self, partitions: int, internal: Sequence[str]) -> None:
        """Create the changelogs (compacted) and ``internal`` topics if missing, each with
        ``partitions`` partitions (they must match the source topics')."""
        wanted = {**{t.changelog: True for t in self.tables}, **dict.fromkeys(internal, False)}
        ensure_topics(self.kafka_config, wanted, partitions)

    def _connect(self) -> None:
        self._consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # co-partitioned topics (interactions, feedback) land on the same member
                "partition.assignment.strategy": "range",
                "session.timeout.ms": 20_000,
                "heartbeat.interval.ms": 3_000,
                "max.poll.interval.ms": int(self.max_poll_interval_s * 1000),
            }
        )
        self._transactor.connect()
        self._consumer.subscribe(
            list(self.handlers),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self._restore(consumer, assigned)
        if self._ready is not None:  # the first assignment's tables are restored: it consumes
            self._ready, ready = None, self._ready
            ready()

    def _restore(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self._assignment_changed = True
        try:
            committed = consumer.committed(assigned, timeout=60)
        except KafkaException as exc:  # then idle partitions commit their positions once
            log.warning("reading the group's offsets failed (%s)", exc)
            committed = []
        self._commits = {(tp.topic, tp.partition): tp.offset for tp in committed}
        for table in self.tables:
            wanted = {tp.partition for tp in assigned if tp.topic in table.follows}
            for partition in set(table.partitions) - wanted:
                del table.partitions[partition]
            missing = sorted(wanted - set(table.partitions))
            if missing:
                restore(self.kafka_config, f"{self.group_id}-restore", table, missing)

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        # Eager rebalancing revokes everything, then assigns the new set; no batch is open in
        # between, so the states of partitions this worker keeps stay valid (the others are
        # dropped in _on_assign). The batch being committed ends first, so the next owner
        # starts from what it committed.
        self._assignment_changed = True
        self._settle()

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        # Taken away without a revoke (session timed out): another member may have changed
        # these states since; they are restored again if they come back.
        self._assignment_changed = True
        self._settle()
        for table in self.tables:
            for tp in lost:
                if tp.topic in table.follows:
                    table.partitions.pop(tp.partition, None)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Process until ``stop`` is set; the open batch is finished first. ``ready`` is
        called once the group assigned this worker its partitions (none is an assignment too)
        and their tables are restored: from then on it consumes."""
        self._ready = ready
        self._transactor.stop = stop
        self._connect()
        assert self._consumer is not None
        self._lag.start()
        backoff = 0.5
        try:
            while not stop.is_set():
                if self._timers_due():
                    if not self._settle():
                        stop.wait(backoff)
                        continue
                    for timer in self.timers:
                        if time.monotonic() >= timer.due:
                            self._run_timer(timer)
                messages = self._take()
                self._lag.watch(self._consumer)
                if not messages:
                    if self._settle():
                        self._commit_passed()
                    continue
                if self._commit_or_retry(functools.partial(self._handle, messages), messages):
                    backoff = 0.5
                else:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            try:
                self._settle()
            finally:
                self._close()

    def _timers_due(self) -> bool:
        now = time.monotonic()
        return any(now >= timer.due for timer in self.timers)

    def _run_timer(self, timer: Timer) -> None:
        more: list[bool] = []
        committed = self._commit_or_retry(lambda batch: more.append(timer.run(batch)), [])
        committed = committed and self._settle()
        again = committed and more == [True]
        timer.due = time.monotonic() + (0.0 if again else timer.interval_s)

    def _take(self) -> list[Message]:
        """Up to ``batch_size`` messages: waits for the first, then at most ``linger_s`` for
        the rest. Empty if a rebalance happened meanwhile (their partitions start again from
        the committed offsets)."""
        assert self._consumer is not None
        first = self._consumer.consume(1, timeout=0.5)
        if not first:
            return []
        self._assignment_changed = False
        rest = self._consumer.consume(self.batch_size - 1, timeout=self.linger_s)
        if self._assignment_changed:  # ``first`` may be of a partition no longer ours
            positions.reset_to_committed(self._consumer)
            return []
        messages = []
        for message in [*first, *rest]:
            error = message.error()
            if error is None:
                messages.append(message)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("consumer: %s", error)
        return messages

    def _handle(self, messages: list[Message], batch: Batch) -> None:
        by_topic: dict[str, list[Message]] = {}
        for message in messages:
            by_topic.setdefault(message.topic(), []).append(message)
        for topic, handler in self.handlers.items():
            if topic in by_topic:
                handler(by_topic[topic], batch)

    def _commit_or_retry(
        self,
        fill: Callable[[Batch], None],
        messages: list[Message],
        offsets: list[TopicPartition] | None = None,
    ) -> bool:
        """Fill a batch, then start committing it with ``messages``' offsets (or ``offsets``)
        once the batch before it has committed: one batch commits in the background while
        the next is filled. False if this batch or the one before it failed: both are undone
        (the later first) and their messages rewound, to be tried again."""
        batch, failure, started = Batch(), True, time.monotonic()
        try:
            fill(batch)
            offsets = (
                positions.positions_after(self._consumer, messages) if offsets is None else offsets
            )
            failure = False
        except self.retry_on as exc:
            log.warning("batch of %d waits: %s", len(messages), exc)
        except KafkaException as exc:
            log.warning("batch of %d not committed (%s); trying again", len(messages), exc)
        except Exception:
            log.exception("batch of %d failed; trying again", len(messages))
        earlier = self._finish_in_flight()
        if failure or earlier is not None:
            batch.undo()
            if earlier is not None:
                earlier.batch.undo()
            positions.rewind(self._consumer, [*(earlier.messages if earlier else ()), *messages])
            return False
        if batch.outputs or offsets:
            flight = InFlight(batch, messages, offsets or [], started)
            flight.thread = threading.Thread(
                target=self._commit_in_background, args=(flight,), name="committer", daemon=True
            )
            self._in_flight = flight
            flight.thread.start()
        return True

    def _commit_in_background(self, flight: InFlight) -> None:
        try:
            self._transact(flight.batch, flight.offsets)
        except BaseException as exc:
            flight.failure = exc
            return
        self._count(flight)

    def _count(self, flight: InFlight) -> None:
        """The metrics of a committed batch: events in and out, dead letters by reason."""
        outputs = flight.batch.outputs
        delivered = (out.topic for out in outputs if out.topic not in self._not_events)
        self.metrics.committed(
            flight.messages, flight.started, delivered, flight.batch.dead_letters
        )

    def _finish_in_flight(self) -> InFlight | None:
        """Wait for the batch being committed; it if it failed (its changes not undone yet)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return None
        flight.thread.join()
        if flight.failure is None:
            return None
        expected = isinstance(flight.failure, KafkaException | TransactionStuck)
        log.warning(
            "batch of %d not committed (%s); trying again",
            len(flight.messages),
            flight.failure,
            exc_info=None if expected else flight.failure,
        )
        return flight

    def _settle(self) -> bool:
        """Wait for the batch being committed; False (it undone and rewound) if it failed."""
        failed = self._finish_in_flight()
        if failed is not None:
            failed.batch.undo()
            positions.rewind(self._consumer, failed.messages)
        return failed is None

    def _transact(self, batch: Batch, offsets: list[TopicPartition]) -> None:
        """Commit ``batch`` with ``offsets`` (see ``streams/transactions.py``)."""
        assert self._consumer is not None
        self._transactor.commit(batch, offsets, self._consumer)
        self._committed(offsets)

    def _committed(self, offsets: list[TopicPartition]) -> None:
        self._commits.update({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def _commit_passed(self) -> None:
        """Commit positions the consumer moved past without a message (transaction markers,
        ours too, and aborted records), which otherwise show as lag forever."""
        assert self._consumer is not None
        moved = positions.passed(self._consumer, self._commits)
        if moved and self._commit_or_retry(lambda batch: None, [], moved):
            self._settle()

    def _close(self) -> None:
        self._lag.close()
        if self._consumer is not None:
            self._consumer.close()  # leaves the group: its partitions move on at once
        self._transactor.close()
