"""One proxied chat completion as an ``InteractionEvent``: what the agent asked, what the
upstream answered (a JSON body, or the SSE chunks of a stream put back together), its usage
and timing.

Pure functions, run on the recorder's thread, never on the request's path; the event is built
by ``runtime/calls.py`` (text cut to fixed caps, each cut marked in ``metadata``), as the
SDK's are. An answer that cannot be read back (not JSON, no choices) yields no event, and says
why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.calls import (
    ModelCall,
    chunks_call,
    completion_call,
    interaction_event,
    request_metadata,
    task_input_of,
)
from runtime.recorder import Unrecordable
from schemas.models import InteractionEvent, PromptRef, RolloutArm

SOURCE = "openai-proxy"


class UnreadableExchange(Unrecordable):
    """The upstream's answer holds no completion we can record; the message says why."""


@dataclass
class Exchange:
    """What the proxy saw of one successful chat completion, as it saw it."""

    trace_id: str
    agent_id: str
    request: dict[str, Any]
    body: bytes  # the JSON answer, or the raw SSE stream
    streamed: bool
    latency_ms: float
    task_id: str = "proxy"
    task_family: str | None = None
    truncated_body: bool = False  # the stream outgrew what the proxy keeps to record
    extra: dict[str, str] = field(default_factory=dict)
    prompt_versions: list[PromptRef] = field(default_factory=list)  # managed prompts only
    rollouts: list[RolloutArm] = field(default_factory=list)


def parse_json_answer(body: bytes, latency_ms: float = 0.0) -> ModelCall:
    """The call of a non-streamed completion."""
    try:
        return completion_call(json.loads(body), latency_ms)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UnreadableExchange(f"the answer is no chat completion: {exc!r}"[:300]) from None


def _sse_chunks(body: bytes) -> list[Any]:
    chunks = []
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        try:
            chunks.append(json.loads(data))
        except ValueError:
            continue  # a comment or a torn last line
    return chunks


def parse_sse_answer(body: bytes, latency_ms: float = 0.0) -> ModelCall:
    """The call of a streamed completion: its chunks' deltas joined (``chunks_call``)."""
    call = chunks_call(_sse_chunks(body), latency_ms)
    if call is None:
        raise UnreadableExchange("the stream held no chat completion chunk")
    return call


def to_event(exchange: Exchange) -> InteractionEvent:
    """The exchange as an ``InteractionEvent`` (mode ``auto``: one student step, the answer
    as given); UnreadableExchange if the answer holds no completion."""
    parse = parse_sse_answer if exchange.streamed else parse_json_answer
    call = parse(exchange.body, exchange.latency_ms)
    request = exchange.request
    model = call.model or str(request.get("model") or "unknown")
    metadata = {"source": SOURCE, "streamed": str(exchange.streamed).lower(), **exchange.extra}
    if exchange.truncated_body:
        metadata["answer_incomplete"] = "the stream outgrew the proxy's record buffer"
    metadata.update(request_metadata(request))
    task_input, system = task_input_of(request["messages"])
    return interaction_event(
        trace_id=exchange.trace_id,
        agent_id=exchange.agent_id,
        task_id=exchange.task_id,
        task_family=exchange.task_family,
        task_input=task_input,
        system=system,
        final_answer=call.answer,
        calls=[ModelCall(call.answer, model, call.usage, call.latency_ms, call.finish_reason)],
        latency_ms=exchange.latency_ms,
        metadata=metadata,
        model=model,
        prompt_versions=exchange.prompt_versions,
        rollouts=exchange.rollouts,
    )
