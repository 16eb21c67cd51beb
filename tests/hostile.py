"""Hostile messages for the interactions and feedback topics, one builder per kind, each with
the words its dead letter's reason must contain. Used by the hostile-input test and by
``benchmarks/faults.py``."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import fastavro

from schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, SchemaCatalog
from schemas.limits import EventLimits
from schemas.models import FeedbackEvent, InteractionEvent
from schemas.topics import FEEDBACK, INTERACTIONS
from streams.processor import AFTER_REVISION, RESCORE
from tests.factories import interaction


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    key: bytes
    value: bytes
    reason: str  # what the dead letter's reason must contain


Builder = Callable[[str, random.Random, AvroCodec], tuple[str, bytes, str]]


def _oversized(codec: AvroCodec) -> int:
    return codec.limits.max_field_bytes + 37_856  # 300,000 bytes at the default limit


def _event(key: str, rng: random.Random, **changes: object) -> InteractionEvent:
    event = interaction(rng, f"hostile-{key}")
    event.trace_id = key
    for name, value in changes.items():
        setattr(event, name, value)  # no validation on assignment: as a foreign client would
    return event


def _with_enum_index(codec: AvroCodec, key: str, rng: random.Random) -> bytes:
    """A body whose `mode` enum index is past the symbols, behind the real fingerprint."""
    schema = json.loads(codec.catalog.schema_json(InteractionEvent.schema_name))
    for field in schema["fields"]:
        if field["name"] == "mode":
            field["type"]["symbols"] = [*field["type"]["symbols"], "telepathy"]
    record = _event(key, rng).model_dump()
    record["mode"] = "telepathy"
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    return (
        SINGLE_OBJECT_MAGIC
        + codec.catalog.fingerprint(InteractionEvent.schema_name)
        + (body.getvalue())
    )


BUILDERS: dict[str, Builder] = {
    "random bytes": lambda k, r, c: (INTERACTIONS, r.randbytes(r.randint(1, 300)), "not an atlas"),
    "empty": lambda k, r, c: (FEEDBACK, b"", "empty message"),
    "wrong schema": lambda k, r, c: (
        INTERACTIONS,
        c.encode(FeedbackEvent(trace_id=k, kind="approve")),
        "a FeedbackEvent on atlas.interactions.v1",
    ),
    "truncated": lambda k, r, c: (
        INTERACTIONS,
        c.encode(_event(k, r))[:60],
        "corrupt InteractionEvent body",
    ),
    "wrong fingerprint": lambda k, r, c: (
        FEEDBACK,
        (lambda d: d[:2] + bytes(reversed(range(8))) + d[10:])(
            c.encode(FeedbackEvent(trace_id=k, kind="approve"))
        ),
        "unknown writer schema 0706050403020100",
    ),
    "oversized field": lambda k, r, c: (
        INTERACTIONS,
        AvroCodec(catalog=c.catalog, limits=_no_limits()).encode(
            _event(k, r, task_input="x" * _oversized(c))
        ),
        f"field task_input is {_oversized(c):,} bytes",
    ),
    "NaN": lambda k, r, c: (
        INTERACTIONS,
        c.encode(_event(k, r, latency_ms=float("nan"))),
        "latency_ms: Input should be a finite number",
    ),
    "infinite rating range": lambda k, r, c: (
        FEEDBACK,
        c.encode(
            FeedbackEvent.model_construct(
                **{
                    **FeedbackEvent(trace_id=k, kind="rating", rating=3.0).model_dump(),
                    "rating_min": float("-inf"),
                }
            )
        ),
        "rating_min: Input should be a finite number",
    ),
    "invalid metadata": lambda k, r, c: (
        INTERACTIONS,
        c.encode(_event(k, r, metadata={RESCORE: "r", AFTER_REVISION: "soon"})),
        "metadata atlas.after_revision='soon' is not a revision number",
    ),
    "empty id": lambda k, r, c: (
        FEEDBACK,
        c.encode(
            FeedbackEvent.model_construct(
                **FeedbackEvent(trace_id=k, kind="approve").model_dump() | {"trace_id": " "}
            )
        ),
        "trace_id: Value error, must not be empty or blank",
    ),
    "unknown enum symbol": lambda k, r, c: (
        INTERACTIONS,
        _with_enum_index(c, k, r),
        "enum symbol or union branch index is out of range",
    ),
    "key is not the trace": lambda k, r, c: (
        FEEDBACK,
        c.encode(FeedbackEvent(trace_id=f"{k}-other", kind="approve")),
        "differs from its trace_id",
    ),
    "year 3000": lambda k, r, c: (
        INTERACTIONS,
        c.encode(_event(k, r, created_at=datetime(3000, 1, 1, tzinfo=UTC))),
        "created_at: Value error, 3000-01-01T00:00:00+00:00 is not between 1970 and 2262",
    ),
}


def _no_limits() -> EventLimits:
    return EventLimits(max_field_bytes=10_000_000, max_message_bytes=10_000_000)


def hostile_messages(
    run: str, n: int, seed: int = 5, limits: EventLimits | None = None
) -> list[Hostile]:
    """``n`` hostile messages cycling through every kind, keyed ``<run>-bad-<i>``; the
    oversized ones are just over ``limits`` (the processors' limits)."""
    rng, codec = random.Random(seed), AvroCodec(catalog=SchemaCatalog.load(), limits=limits)
    kinds = list(BUILDERS)
    found = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        key = f"{run}-bad-{i}"
        topic, value, reason = BUILDERS[kind](key, rng, codec)
        found.append(Hostile(kind, topic, key.encode(), value, reason))
    return found
