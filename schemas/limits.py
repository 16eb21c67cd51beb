"""Size limits on events, checked at the edge by the codec (when encoding and when decoding).

A text or bytes field may hold at most ``max_field_bytes`` (UTF-8 bytes for text) and a whole
encoded event at most ``max_message_bytes``, which must stay under the topics'
``max.message.bytes`` (Kafka's default is 1,048,588). An event over a limit is refused with an
error that names the field; a stream processor dead-letters such a message instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

KIB = 1024


class EventLimits(BaseModel):
    max_field_bytes: int = Field(
        256 * KIB, ge=1024, description="Largest text or bytes field of an event, in bytes."
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=4 * KIB,
        description="Largest encoded event; keep it under the topics' max.message.bytes.",
    )


class LimitError(ValueError):
    """An event over a size limit; the message names the field and both sizes."""


def _size(value: str | bytes) -> int:
    return len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))


def _sized_fields(record: Any, path: str = "") -> Iterator[tuple[str, int]]:
    """(path, size) of every text or bytes value inside a decoded record."""
    if isinstance(record, str | bytes):
        yield path or "(value)", _size(record)
    elif isinstance(record, dict):
        for key, value in record.items():
            yield from _sized_fields(value, f"{path}.{key}" if path else str(key))
    elif isinstance(record, list | tuple):
        for i, value in enumerate(record):
            yield from _sized_fields(value, f"{path}[{i}]")


def largest_fields(record: Any, n: int = 3) -> list[tuple[str, int]]:
    return sorted(_sized_fields(record), key=lambda item: -item[1])[:n]


def check_fields(record: Any, encoded_size: int, limits: EventLimits, what: str) -> None:
    """Raise LimitError if a field of ``record`` (whose encoding is ``encoded_size`` bytes) is
    over the field cap or the whole is over the message cap. A message no larger than the
    field cap cannot hold an oversized field, so the common case costs one comparison."""
    if encoded_size > limits.max_message_bytes:
        biggest = ", ".join(f"{p} {s:,} bytes" for p, s in largest_fields(record))
        raise LimitError(
            f"{what} is {encoded_size:,} bytes encoded, over the {limits.max_message_bytes:,}-byte"
            f" message limit (largest fields: {biggest})"
        )
    if encoded_size <= limits.max_field_bytes:
        return
    for path, size in _sized_fields(record):
        if size > limits.max_field_bytes:
            raise LimitError(
                f"{what} field {path} is {size:,} bytes, over the {limits.max_field_bytes:,}-byte"
                " field limit"
            )


def truncated(original: bytes, cap: int) -> tuple[bytes, str]:
    """``original`` cut to ``cap`` bytes, and a note for a dead letter's reason ('' if whole):
    the original's size and sha256 let a person match it with the producer's copy."""
    if len(original) <= cap:
        return original, ""
    digest = hashlib.sha256(original).hexdigest()
    note = f" [original truncated to its first {cap:,} of {len(original):,} bytes, sha256 {digest}]"
    return original[:cap], note
