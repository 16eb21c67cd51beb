"""Where the runtime gets its prompts: fixed seeds, or the compacted prompts topic, live."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from schemas.models import Demonstration, PromptVersion
from schemas.topics import PROMPTS

log = logging.getLogger(__name__)
ROLES = ("student", "teacher")


def reached(consumer: Consumer, topic: str, ends: dict[int, int]) -> bool:
    """Whether ``consumer`` has read up to ``ends`` (partition -> offset) in every partition.
    Positions, not the offsets of the last messages: transaction markers take offsets too."""
    positions = consumer.position([TopicPartition(topic, p) for p in ends])
    done = {tp.partition: tp.offset for tp in positions}
    return all(end == 0 or done.get(p, -1) >= end for p, end in ends.items())


class PromptProvider(Protocol):
    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        """Every role's current prompt for the agent, read at one instant (never a mixture)."""
        ...


class StaticPrompts:
    """Fixed prompts (version 0, source ``seed``): the fallback before anything is published,
    and the way candidates are measured (texts and demonstrations per role)."""

    def __init__(
        self,
        texts: dict[str, str],
        demonstrations: dict[str, list[Demonstration]] | None = None,
    ):
        missing = [role for role in ROLES if role not in texts]
        if missing:
            raise ValueError(f"seed prompts missing for roles: {', '.join(missing)}")
        self.texts = texts
        self.demonstrations = demonstrations or {}

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        return {
            role: PromptVersion(
                agent_id=agent_id,
                role=role,
                version=0,
                text=text,
                source="seed",
                demonstrations=self.demonstrations.get(role, []),
            )
            for role, text in self.texts.items()
        }


class PromptSubscriber:
    """Follows ``atlas.prompts.v1``: replays it from the beginning at start (the topic is
    compacted, so that is the current prompt per agent/role), then applies updates live on a
    background thread. ``snapshot`` is thread-safe; roles never published fall back."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        fallback: PromptProvider,
        codec: AvroCodec | None = None,
        topic: str = PROMPTS,
    ):
        self.kafka_config = kafka_config
        self.fallback = fallback
        self.codec = codec or AvroCodec()
        self.topic = topic
        self._current: dict[tuple[str, str], PromptVersion] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0

    def start(self, timeout: float = 30.0) -> PromptSubscriber:
        """Start following; returns once the topic's existing prompts are loaded."""

        consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": f"atlas-prompts-{uuid.uuid4().hex}",
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
            target=self._follow, args=(consumer, ends), name="prompt-subscriber", daemon=True
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
                self._apply(message.key(), message.value())
        finally:
            consumer.close()  # type: ignore[attr-defined]

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:  # tombstone: the agent/role was deleted
            if key:
                agent_id, _, role = key.decode().partition("/")
                with self._changed:
                    self._current.pop((agent_id, role), None)
                    self._changed.notify_all()
            return
        try:
            version = self.codec.decode(value, PromptVersion)
        except DecodeError as exc:
            self.skipped += 1
            log.warning("skipping an unreadable prompt message: %s", exc)
            return
        with self._changed:
            self._current[(version.agent_id, version.role)] = version
            self._changed.notify_all()

    def snapshot(self, agent_id: str) -> dict[str, PromptVersion]:
        base = self.fallback.snapshot(agent_id)
        with self._lock:
            for role in list(base):
                published = self._current.get((agent_id, role))
                if published is not None:
                    base[role] = published
        return base

    def wait_for(self, agent_id: str, role: str, version: int, timeout: float = 30.0) -> bool:
        """Block until the agent's ``role`` prompt is at ``version`` (tests, CLIs)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = self._current.get((agent_id, role))
                if current is not None and current.version == version:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> PromptSubscriber:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
