"""Shared by the side processors that the reward worker's engine runs (retrain policy,
memory): one message at a time, each failure dead-lettered on its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from confluent_kafka import Message

from schemas.codec import AvroCodec, RegistryUnavailable
from schemas.deadletter import dead_letter_for
from streams.engine import Batch, Handler

log = logging.getLogger(__name__)


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
