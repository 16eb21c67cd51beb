"""Feedback arriving at an edge (the proxy's ``/v1/feedback`` body, an OTLP span event) as a
``FeedbackEvent``, under the same rules as ``EventProducer.record_feedback``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from schemas.models import FeedbackEvent

FEEDBACK_FIELDS = frozenset(FeedbackEvent.model_fields) - {"event_id", "agent_id", "created_at"}


class BodyTooLarge(ValueError):
    """A request body over its cap; the message gives the sizes."""


async def read_capped(request: Request, cap: int) -> bytes:
    """The request's body, read no further than ``cap`` bytes: BodyTooLarge as soon as its
    declared length or what arrived goes over it (a chunked body declares none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge(f"the body is {int(declared):,} bytes, over the {cap:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"the body is over the {cap:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def feedback_from(
    fields: dict[str, Any], agent_id: str | None, event_id: str | None = None
) -> FeedbackEvent:
    """A FeedbackEvent from ``fields`` (those of ``FeedbackEvent`` less event_id, agent_id and
    created_at); ValueError with a one-line reason for unknown fields, wrong types, a kind
    without what it needs, or a rating outside its range."""
    unknown = sorted(set(fields) - FEEDBACK_FIELDS)
    if unknown:
        raise ValueError(f"unknown feedback field(s) {unknown}; known: {sorted(FEEDBACK_FIELDS)}")
    extra = {"event_id": event_id} if event_id else {}
    try:
        event = FeedbackEvent(**fields, **extra, agent_id=agent_id)
    except ValueError as exc:  # pydantic's ValidationError
        errors = getattr(exc, "errors", lambda: [])()
        reason = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3]
        ) or str(exc)
        raise ValueError(f"invalid feedback: {reason}"[:300]) from None
    needs = {"edit": "edited_text", "rating": "rating", "tool_outcome": "tool_success"}
    if event.kind in needs and getattr(event, needs[event.kind]) is None:
        raise ValueError(f"feedback kind {event.kind!r} needs {needs[event.kind]}")
    if event.rating is not None and not event.rating_min <= event.rating <= event.rating_max:
        raise ValueError(f"rating {event.rating} outside [{event.rating_min}, {event.rating_max}]")
    return event
