"""One OTLP export request's spans or log records as InteractionEvents and FeedbackEvents.

The grouping rule, within one export request (the receiver keeps no state between requests,
so a 200 means all of a request is on Kafka):

* A GenAI span is a model call (``gen_ai.operation.name`` chat, text_completion,
  generate_content; OpenInference/OpenLLMetry LLM spans) or an agent run (``invoke_agent``;
  OpenInference AGENT). Other spans are ignored and counted, GenAI ones of other operations
  (embeddings, tools) included.
* Each top-level GenAI span, one with no GenAI ancestor in the request, becomes one
  InteractionEvent. A call's event holds its messages and answer. An agent run's event groups
  every GenAI span below it: one step per model call (by start time), its input and answer
  from the agent span's own messages, else from its first call's input and last call's answer;
  usage is the agent's, else the calls' sum. Spans inside a top-level one make no event of
  their own. Calls exported in an earlier request than their agent span were recorded alone;
  keep a run in one batch (the SDK's BatchSpanProcessor does when it ends within the
  schedule delay) to have it grouped.
* A GenAI span without message content makes no event (counted ``no_content``): turn content
  capture on, or send the ``gen_ai.client.inference.operation.details`` log events.
* The trace id is ``<OTel trace id>-<span id>`` (hex) of the top-level span; the event id is a
  UUID derived from it, so an exporter's retry, or the same call arriving as a span and as a
  log event, is one event downstream (the reward processor keeps the first and replays).
* The agent is the span's ``atlas.agent_id`` attribute, else its resource's, else the
  receiver's default; ``atlas.task_id`` and ``atlas.task_family`` name the task.
* Feedback is a span event named ``atlas.feedback`` with attributes ``atlas.feedback.<field>``
  (kind, rating, rating_min, rating_max, edited_text, comment, user_id, tool_name,
  tool_success), for the trace named by its ``atlas.trace_id`` attribute, else for the GenAI
  span it sits in (or under).
* A GenAI span or feedback event whose values cannot make an event is rejected with a reason
  (``InvalidSpan``), its own protobuf bytes kept for the dead letter; the rest still count.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ingest.feedback import FEEDBACK_FIELDS, feedback_from
from ingest.genai import (
    LEGACY_EVENTS,
    Conversation,
    InvalidSpan,
    check_sizes,
    conversation_of,
    model_of,
    role_of,
    usage_of,
)
from ingest.otlp_decode import LogView, SpanView
from runtime.calls import ModelCall, interaction_event, task_input_of
from schemas.models import (
    EARLIEST,
    LATEST,
    Event,
    InteractionEvent,
    Usage,
    path_component,
    utcnow,
)

NAMESPACE = uuid.UUID("5b0f6c53-6a4e-4f0e-9a63-0c7d1e2f7a11")  # ids of OTLP-made events
SOURCE = "otlp"
AGENT_KEY = "atlas.agent_id"
TASK_KEY = "atlas.task_id"
FAMILY_KEY = "atlas.task_family"
TARGET_KEY = "atlas.trace_id"
FEEDBACK_EVENT = "atlas.feedback"
FEEDBACK_PREFIX = "atlas.feedback."
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
META_CAP = 512


@dataclass
class Rejected:
    reason: str
    original: bytes


@dataclass
class Converted:
    """What a request made: events to produce, rejections, and counts."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    items: int = 0  # spans or log records read
    ignored: int = 0  # spans or records that are no GenAI call or agent run
    no_content: int = 0
    grouped: int = 0  # GenAI spans inside a top-level one

    @property
    def interactions(self) -> int:
        return sum(1 for e in self.events if isinstance(e, InteractionEvent))


def trace_id_of(otel_trace_id: str, span_id: str) -> str:
    return f"{otel_trace_id}-{span_id}"


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, ":".join(map(str, parts))))


def _instant(ns: int) -> datetime:
    try:
        at = datetime.fromtimestamp(ns / 1e9, UTC)
    except (OverflowError, OSError, ValueError):
        return utcnow()
    return (
        at.replace(microsecond=at.microsecond // 1000 * 1000)
        if EARLIEST < at < LATEST
        else utcnow()
    )


def _text(attrs: dict[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    return value[:128] if isinstance(value, str) and value else None


def agent_of(
    attrs: dict[str, Any], resource: dict[str, Any], default: str | None, required: bool = True
) -> str | None:
    """The span's ``atlas.agent_id``, else its resource's, else ``default``; InvalidSpan if it
    cannot name a file, or if there is none and ``required``."""
    agent = attrs.get(AGENT_KEY, resource.get(AGENT_KEY, default))
    if agent is None and not required:
        return None
    if agent is None:
        raise InvalidSpan(f"no agent: set the {AGENT_KEY} resource or span attribute")
    try:
        return path_component(str(agent), AGENT_KEY)
    except ValueError as exc:
        raise InvalidSpan(str(exc)) from None


@dataclass
class Call:
    """A GenAI span (or details log event) read: its conversation, model and usage."""

    trace_id: str
    otel_trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    resource: dict[str, Any]
    conversation: Conversation
    model: str | None
    usage: Usage
    name: str = ""

    @property
    def latency_ms(self) -> float:
        return max(0.0, (self.end_ns - self.start_ns) / 1e6) if self.start_ns else 0.0


def read_call(
    otel_trace_id: str,
    span_id: str,
    start_ns: int,
    end_ns: int,
    attrs: dict[str, Any],
    resource: dict[str, Any],
    events: list[tuple[str, Any]],
    name: str = "",
) -> Call:
    check_sizes(attrs, "span")
    for name, payload in events:
        check_sizes(payload if isinstance(payload, dict) else {"body": payload}, name[:80])
    return Call(
        trace_id_of(otel_trace_id, span_id),
        otel_trace_id,
        span_id,
        start_ns,
        end_ns,
        attrs,
        resource,
        conversation_of(attrs, events),
        model_of(attrs),
        usage_of(attrs),
        name,
    )


def interaction(call: Call, default_agent: str | None, members: list[Call] | None = None) -> Event:
    """The InteractionEvent of a top-level call, or of an agent run over its ``members``."""
    members = members or []
    conversation, usage, model = call.conversation, call.usage, call.model
    metadata = {
        "source": SOURCE,
        "otel_trace_id": call.otel_trace_id,
        "otel_span_id": call.span_id,
        "operation": str(call.attrs.get("gen_ai.operation.name") or "")[:META_CAP],
        "span_name": call.name[:META_CAP],
        "service_name": str(call.resource.get("service.name") or "")[:META_CAP],
    }
    if members:
        metadata["calls"] = str(len(members))
        if conversation.empty:
            first, last = members[0].conversation, members[-1].conversation
            conversation = Conversation(first.messages, last.answer, last.finish_reason)
        model = model or next((m.model for m in members if m.model), None)
        calls = [
            ModelCall(
                m.conversation.answer,
                m.model or "unknown",
                m.usage,
                m.latency_ms,
                m.conversation.finish_reason,
            )
            for m in members
        ]
    else:
        calls = [
            ModelCall(
                conversation.answer,
                model or "unknown",
                usage,
                call.latency_ms,
                conversation.finish_reason,
            )
        ]
    if conversation.finish_reason:
        calls[-1] = replace(calls[-1], finish_reason=conversation.finish_reason[:META_CAP])
    task_input, system = task_input_of(conversation.messages)
    return interaction_event(
        trace_id=call.trace_id,
        agent_id=str(agent_of(call.attrs, call.resource, default_agent)),
        task_id=_text(call.attrs, TASK_KEY) or SOURCE,
        task_input=task_input,
        final_answer=conversation.answer,
        calls=calls,
        latency_ms=call.latency_ms,
        metadata={k: v for k, v in metadata.items() if v},
        system=system,
        task_family=_text(call.attrs, FAMILY_KEY),
        model=model or "unknown",
        event_id=derived_id("interaction", call.trace_id),
        created_at=_instant(call.end_ns or call.start_ns),
    )


def _feedback(
    span: SpanView, index: int, attrs: dict[str, Any], target: str | None, agent: str | None
) -> Event:
    target = attrs.get(TARGET_KEY, target)
    if not isinstance(target, str) or not target:
        raise InvalidSpan(f"an {FEEDBACK_EVENT} event needs {TARGET_KEY} or a GenAI span to sit in")
    fields = {
        k[len(FEEDBACK_PREFIX) :]: v for k, v in attrs.items() if k.startswith(FEEDBACK_PREFIX)
    }
    if set(fields) - FEEDBACK_FIELDS:
        unknown = sorted(set(fields) - FEEDBACK_FIELDS)
        raise InvalidSpan(f"unknown {FEEDBACK_PREFIX}* attribute(s) {unknown}")
    try:
        return feedback_from(
            {**fields, "trace_id": target},
            agent,
            event_id=derived_id("feedback", span.trace_id, span.span_id, index),
        )
    except ValueError as exc:
        raise InvalidSpan(str(exc)) from None


def _top_of(
    span: SpanView, by_id: dict[tuple[str, str], SpanView], roles: dict[tuple[str, str], Any]
) -> SpanView | None:
    """The outermost GenAI span among ``span`` and its ancestors in the request."""
    top, seen = None, set()
    current: SpanView | None = span
    while current is not None and (current.trace_id, current.span_id) not in seen:
        key = (current.trace_id, current.span_id)
        seen.add(key)
        if roles.get(key):
            top = current
        current = by_id.get((current.trace_id, current.parent_id)) if current.parent_id else None
    return top


def from_spans(spans: list[SpanView], default_agent: str | None) -> Converted:
    out = Converted(items=len(spans))
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    roles = {key: role_of(s.attributes) for key, s in by_id.items()}
    groups: dict[tuple[str, str], list[SpanView]] = {}
    for span in spans:
        top = _top_of(span, by_id, roles)
        if roles[(span.trace_id, span.span_id)] is None:
            out.ignored += 1
        elif top is not None:
            groups.setdefault((top.trace_id, top.span_id), []).append(span)
    for key, members in groups.items():
        top = by_id[key]
        try:
            calls = {
                (s.trace_id, s.span_id): read_call(
                    s.trace_id,
                    s.span_id,
                    s.start_ns,
                    s.end_ns,
                    s.attributes,
                    s.resource,
                    [(n, a) for n, _t, a in s.events],
                    s.name,
                )
                for s in members
            }
            head = calls[key]
            inner = sorted(
                (c for k, c in calls.items() if k != key and roles[k] == "call"),
                key=lambda c: c.start_ns,
            )
            out.grouped += len(members) - 1
            if roles[key] == "call":
                inner = []
            if head.conversation.empty and not any(not c.conversation.empty for c in inner):
                out.no_content += 1
                continue
            out.events.append(interaction(head, default_agent, inner))
        except (InvalidSpan, ValueError) as exc:
            out.rejected.append(
                Rejected(f"span {key[0]}-{key[1]}: {exc}", top.proto.SerializeToString())
            )
    for span in spans:
        out.events.extend(_span_feedback(span, by_id, roles, default_agent, out))
    return out


def _span_feedback(
    span: SpanView,
    by_id: dict[tuple[str, str], SpanView],
    roles: dict[tuple[str, str], Any],
    default_agent: str | None,
    out: Converted,
) -> Iterable[Event]:
    for index, (name, _time, attrs) in enumerate(span.events):
        if name != FEEDBACK_EVENT:
            continue
        top = _top_of(span, by_id, roles)
        target = trace_id_of(top.trace_id, top.span_id) if top is not None else None
        try:
            agent = agent_of({**span.attributes, **attrs}, span.resource, default_agent, False)
            yield _feedback(span, index, attrs, target, agent)
        except InvalidSpan as exc:
            out.rejected.append(
                Rejected(
                    f"span {span.trace_id}-{span.span_id}: {exc}", span.proto.SerializeToString()
                )
            )


def from_logs(records: list[LogView], default_agent: str | None) -> Converted:
    """Details events (``gen_ai.client.inference.operation.details``: a whole call in its
    attributes), each on its own, and legacy message events joined per (trace, span) within
    the request; other records are ignored."""
    out = Converted(items=len(records))
    groups: dict[tuple[str, str, int], list[LogView]] = {}
    for i, record in enumerate(records):
        if record.event_name in LEGACY_EVENTS:
            key = (record.trace_id, record.span_id, -1)
        elif record.event_name == DETAILS_EVENT or "gen_ai.output.messages" in record.attributes:
            key = (record.trace_id, record.span_id, i)
        else:
            out.ignored += 1
            continue
        groups.setdefault(key, []).append(record)
    for (trace, span_id, _), group in groups.items():
        try:
            if not span_id:
                raise InvalidSpan("a GenAI log event needs the trace and span ids of its call")
            legacy = [(r.event_name, r.body) for r in group if r.event_name in LEGACY_EVENTS]
            first, end = group[0], max(r.time_ns for r in group)
            call = read_call(trace, span_id, 0, end, first.attributes, first.resource, legacy)
            if call.conversation.empty:
                out.no_content += 1
                continue
            out.events.append(interaction(call, default_agent))
        except (InvalidSpan, ValueError) as exc:
            original = b"".join(r.proto.SerializeToString() for r in group)
            out.rejected.append(Rejected(f"log event(s) of {trace}-{span_id}: {exc}", original))
    return out
