"""Shared by the side processors that the reward worker's engine runs (retrain policy,
memory, alerts): one message at a time, each failure dead-lettered on its own; per-key states
parsed and written once per batch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from confluent_kafka import Message

from schemas.codec import AvroCodec, RegistryUnavailable
from schemas.deadletter import dead_letter_for
from streams.engine import Batch, Handler, Table

log = logging.getLogger(__name__)
S = TypeVar("S")


def each_or_dead_letter(
    one: Callable[[Message, Batch], None],
    codec: AvroCodec,
    processor: str,
    retry: tuple[type[Exception], ...] = (RegistryUnavailable,),
) -> Handler:
    """A handler that runs ``one`` on each message in order. A message it fails on is
    dead-lettered (original bytes + reason) and the batch goes on; ``retry`` (a schema-registry
    outage) is raised, so the engine retries the batch instead. ``one`` must do everything that
    can fail before it writes state or sends, so a failed message leaves neither behind."""

    def handle(messages: Sequence[Message], batch: Batch) -> None:
        for message in messages:
            try:
                one(message, batch)
            except retry:
                raise
            except Exception as exc:
                log.exception("%s failed on %s@%d", processor, message.topic(), message.offset())
                reason = f"{type(exc).__name__}: {exc}"
                letter = dead_letter_for(
                    message, reason, "ProcessingError", processor, codec.limits
                )
                batch.send_dead_letter(message.topic(), "ProcessingError", codec.encode(letter))

    return handle


class BatchStates(Generic[S]):
    """One batch's view of a table's per-key states: a key's state is read and parsed once,
    changed in memory by each event of the batch that touches it, and written (one changelog
    entry) once, by ``write`` at the batch's end. A busy agent's state is parsed and written
    once per batch instead of once per event."""

    def __init__(
        self,
        table: Table,
        load: Callable[[bytes | None], S],
        dump: Callable[[S], bytes],
    ):
        self.table, self.load, self.dump = table, load, dump
        self._states: dict[tuple[int, bytes], S] = {}
        self._changed: set[tuple[int, bytes]] = set()

    def get(self, partition: int, key: bytes) -> S:
        """The key's state as this batch left it (``load`` of the stored bytes, or of None)."""
        state = self._states.get((partition, key))
        if state is None:
            state = self._states[(partition, key)] = self.load(self.table.get(partition, key))
        return state

    def set(self, partition: int, key: bytes, state: S) -> None:
        self._states[(partition, key)] = state
        self._changed.add((partition, key))

    def write(self, batch: Batch) -> None:
        """Put every changed state in the table, once each."""
        for partition, key in self._changed:
            batch.put(self.table, partition, key, self.dump(self._states[(partition, key)]))
