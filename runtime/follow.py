"""Following a topic of versioned per-(agent, role) events, live, on a background thread.

The prompts topic (compacted) and the checkpoints topic both carry events with ``agent_id``,
``role`` and ``version``; a follower replays its topic from the beginning at start, so it
knows the latest event per agent/role, then applies new ones as they arrive.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from schemas.models import PRODUCTION
from schemas.signing import SignatureError, Verifier
from schemas.topics import label_of_key

log = logging.getLogger(__name__)
E = TypeVar("E")


def reached(consumer: Consumer, topic: str, ends: dict[int, int]) -> bool:
    """Whether ``consumer`` has read up to ``ends`` (partition -> offset) in every partition.
    Positions, not the offsets of the last messages: transaction markers take offsets too."""
    positions = consumer.position([TopicPartition(topic, p) for p in ends])
    done = {tp.partition: tp.offset for tp in positions}
    return all(end == 0 or done.get(p, -1) >= end for p, end in ends.items())


class TopicFollower(Generic[E]):
    """Replays ``topic`` from the beginning at :meth:`start`, then applies each new message
    live on a background thread through :meth:`_apply`, which subclasses define (under
    ``self._changed``, the lock readers take too). With a ``verifier``, a message without the
    learner's valid signature is refused: logged, counted in ``refused``, never applied."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        topic: str,
        event_type: type[E],
        codec: AvroCodec | None = None,
        verifier: Verifier | None = None,
    ):
        self.kafka_config = kafka_config
        self.topic = topic
        self.event_type = event_type
        self.codec = codec or AvroCodec()
        self._current: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0
        self.verifier = verifier
        self.refused = 0

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Any:
        """Start following; returns (self) once the topic's existing events are applied."""
        consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": f"atlas-follow-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        metadata = consumer.list_topics(self.topic, timeout=timeout)
        partitions = metadata.topics[self.topic].partitions
        if not partitions:
            consumer.close()
            raise RuntimeError(f"topic {self.topic} does not exist: run `atlas up`")
        assignment = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions]
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout)[1]
            for tp in assignment
        }
        consumer.assign(assignment)
        self._thread = threading.Thread(
            target=self._follow, args=(consumer, ends), name=f"follow-{self.topic}", daemon=True
        )
        self._thread.start()
        if not self._caught_up.wait(timeout):
            self.close()
            raise TimeoutError(f"could not replay {self.topic} within {timeout:.0f}s")
        return self

    def _follow(self, consumer: Consumer, ends: dict[int, int]) -> None:
        try:
            while not self._stop.is_set():
                if not self._caught_up.is_set() and reached(consumer, self.topic, ends):
                    self._caught_up.set()
                message = consumer.poll(0.2)
                if message is None or message.error():
                    continue
                if self._trusted(message):
                    self._apply(message.key(), message.value())
        finally:
            consumer.close()

    def _trusted(self, message: Any) -> bool:
        if self.verifier is None:
            return True
        try:
            self.verifier.check(self.topic, message.key(), message.value(), message.headers())
        except SignatureError as exc:
            self.refused += 1
            key = (message.key() or b"").decode(errors="replace")[:200]
            log.error(
                "refusing %s message %s at partition %d offset %d: %s; keeping the current version",
                self.topic,
                key,
                message.partition(),
                message.offset(),
                exc,
            )
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class RoleVersionFollower(TopicFollower[E]):
    """The latest ``event_type`` per (agent_id, role) on ``topic``, and per label: production
    under the key ``agent_id/role``, another label (canary, staging, ...) under
    ``agent_id/role@label``, each removed by a tombstone under its key; thread-safe. A message
    whose key does not name its event's label is skipped (counted in ``skipped``). With a
    ``verifier``, a message without the learner's valid signature is refused: logged, counted
    in ``refused``, and the current version kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._labelled: dict[str, dict[tuple[str, str], Any]] = {}

    def _slot(self, label: str) -> dict[tuple[str, str], Any]:
        if label == PRODUCTION:
            return self._current
        return self._labelled.setdefault(label, {})

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        text = (key or b"").decode(errors="replace")
        label = label_of_key(text)
        if value is None:  # tombstone: the agent/role's label was removed
            if key:
                agent_role = text if label == PRODUCTION else text[: -len(label) - 1]
                agent_id, _, role = agent_role.rpartition("/")
                with self._changed:
                    self._slot(label).pop((agent_id, role), None)
                    self._changed.notify_all()
            return
        try:
            event: Any = self.codec.decode(value, self.event_type)  # type: ignore[type-var]
        except DecodeError as exc:
            self.skipped += 1
            log.warning("skipping an unreadable message on %s: %s", self.topic, exc)
            return
        published = getattr(event, "label", PRODUCTION)
        if key is not None and published != label:
            self.skipped += 1
            log.warning(
                "skipping %s v%s on %s: its key %r does not name its label %r",
                event.role, event.version, self.topic, text[:200], published,
            )  # fmt: skip
            return
        with self._changed:
            self._slot(published)[(event.agent_id, event.role)] = event
            self._changed.notify_all()

    def labels(self, agent_id: str) -> dict[tuple[str, str], E]:
        """Every label of the agent's roles: (role, label) -> the version under it."""
        with self._lock:
            slots = {PRODUCTION: self._current, **self._labelled}
            return {
                (role, label): event
                for label, slot in slots.items()
                for (agent, role), event in slot.items()
                if agent == agent_id
            }

    def labelled(self, agent_id: str, label: str) -> dict[str, E]:
        """The agent's versions under ``label``, by role (production: what agents use)."""
        with self._lock:
            slot = self._current if label == PRODUCTION else self._labelled.get(label, {})
            return {role: event for (agent, role), event in slot.items() if agent == agent_id}

    def latest(self, agent_id: str, role: str) -> E | None:
        with self._lock:
            return self._current.get((agent_id, role))

    def wait_for(
        self,
        agent_id: str,
        role: str,
        version: int,
        timeout: float = 30.0,
        label: str = PRODUCTION,
    ) -> bool:
        """Block until the agent's ``role`` is at ``version`` under ``label`` (tests, CLIs)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = self._slot(label).get((agent_id, role))
                if current is not None and current.version == version:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
