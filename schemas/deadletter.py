"""Building dead letters that always fit on the dead-letter topic.

A dead letter keeps the original message byte for byte, so a person can inspect or replay it
(except where the processor redacts PII, ``runtime/redaction_events.py``: then the original is
the event redacted and encoded again, or, if it never decoded, its bytes with the PII replaced).
An original larger than the field limit is kept truncated; the reason then says so and gives
the original's size and sha256. Keys and reasons are bounded too: a hostile message can never
make its own dead letter undeliverable.
"""

from __future__ import annotations

from typing import Any

from schemas.limits import EventLimits, truncated
from schemas.models import DeadLetter

MAX_KEY_BYTES = 1024
MAX_REASON_CHARS = 2000


def dead_letter_for(
    message: Any, reason: str, error_type: str, processor: str, limits: EventLimits | None = None
) -> DeadLetter:
    """The dead letter of a consumed message (confluent-kafka's ``Message``)."""
    return make_dead_letter(
        source_topic=message.topic(),
        source_partition=message.partition(),
        source_offset=message.offset(),
        key=message.key(),
        original=message.value() or b"",
        reason=reason,
        error_type=error_type,
        processor=processor,
        limits=limits,
    )


def make_dead_letter(
    *,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    key: bytes | None,
    original: bytes,
    reason: str,
    error_type: str,
    processor: str,
    limits: EventLimits | None = None,
) -> DeadLetter:
    limits = limits or EventLimits()
    # Room for the other fields inside one field's worth of bytes.
    kept, note = truncated(original, limits.max_field_bytes - 8 * 1024)
    reason = " ".join(reason.split())[:MAX_REASON_CHARS] or "(no reason given)"
    return DeadLetter(
        source_topic=source_topic[:249],  # Kafka's longest topic name
        source_partition=source_partition,
        source_offset=source_offset,
        key=None if key is None else key[:MAX_KEY_BYTES],
        original=kept,
        reason=reason + note,
        error_type=error_type[:100],
        processor=processor,
    )
