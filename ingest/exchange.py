"""One proxied chat completion as an ``InteractionEvent``: what the agent asked, what the
upstream answered (a JSON body, or the SSE chunks of a stream put back together), its usage
and timing.

Pure functions, run on the recorder's thread, never on the request's path. Text fields are cut
to fixed caps (the cut is marked in ``metadata``) so an event always fits the codec's limits;
an answer that cannot be read back (not JSON, no choices) yields no event, and says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.models import (
    InteractionEvent,
    PromptRef,
    RolloutArm,
    Step,
    Usage,
    new_id,
    utcnow,
)

TEXT_CAP = 64 * 1024  # characters of the task input and of the answer kept in the event
SYSTEM_CAP = 16 * 1024  # characters of the system prompt kept in metadata
SOURCE = "openai-proxy"


class UnreadableExchange(ValueError):
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


def content_text(content: Any) -> str:
    """A message's content as text: a string as it is, a list of parts as their text parts
    joined (images and audio are named, not kept)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False)


def cut_text(text: str, cap: int, name: str, metadata: dict[str, str]) -> str:
    """``text`` cut to ``cap`` characters; a cut is noted in ``metadata`` as
    ``<name>_truncated_from`` (the original length)."""
    if len(text) <= cap:
        return text
    metadata[f"{name}_truncated_from"] = str(len(text))
    return text[:cap]


def task_input_of(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(task input, system prompt): a lone user turn as it is; a longer conversation as a
    transcript, one ``role: text`` block per turn; system turns apart."""
    system = "\n\n".join(content_text(m.get("content")) for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return content_text(turns[0].get("content")), system
    return "\n\n".join(f"{m['role']}: {content_text(m.get('content'))}" for m in turns), system


def _answer_of(message: dict[str, Any]) -> str:
    text = content_text(message.get("content"))
    calls = message.get("tool_calls")
    if calls:
        text = (text + "\n" if text else "") + json.dumps(calls, ensure_ascii=False)
    return text


def parse_json_answer(body: bytes) -> tuple[str, str, str | None, Usage]:
    """(answer, model, finish reason, usage) of a non-streamed completion."""
    try:
        answer = json.loads(body)
        choice = answer["choices"][0]
        message = choice.get("message") or {}
        usage = answer.get("usage") or {}
        return (
            _answer_of(message),
            str(answer.get("model") or ""),
            choice.get("finish_reason"),
            Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            ),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UnreadableExchange(f"the answer is no chat completion: {exc!r}"[:300]) from None


def parse_sse_answer(body: bytes) -> tuple[str, str, str | None, Usage]:
    """(answer, model, finish reason, usage) of a streamed completion: the first choice's
    content deltas (and tool-call argument deltas) joined; usage from the chunk that has it."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    model, finish, usage = "", None, Usage()
    chunks = 0
    for line in body.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if not data or data == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue  # a comment or a torn last line
        if not isinstance(chunk, dict):
            continue
        chunks += 1
        model = str(chunk.get("model") or model)
        if isinstance(chunk.get("usage"), dict):
            u = chunk["usage"]
            usage = Usage(
                prompt_tokens=int(u.get("prompt_tokens") or 0),
                completion_tokens=int(u.get("completion_tokens") or 0),
            )
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    if not chunks:
        raise UnreadableExchange("the stream held no chat completion chunk")
    answer = "".join(text)
    if calls:
        tool_calls = [calls[i] for i in sorted(calls)]
        answer = (answer + "\n" if answer else "") + json.dumps(tool_calls, ensure_ascii=False)
    return answer, model, finish, usage


def to_event(exchange: Exchange) -> InteractionEvent:
    """The exchange as an ``InteractionEvent`` (mode ``auto``: one student step, the answer
    as given); UnreadableExchange if the answer holds no completion."""
    parse = parse_sse_answer if exchange.streamed else parse_json_answer
    answer, model, finish, usage = parse(exchange.body)
    request = exchange.request
    metadata = {"source": SOURCE, "streamed": str(exchange.streamed).lower(), **exchange.extra}
    if finish:
        metadata["finish_reason"] = str(finish)
    if exchange.truncated_body:
        metadata["answer_incomplete"] = "the stream outgrew the proxy's record buffer"
    for name in ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed"):
        if isinstance(request.get(name), int | float) and not isinstance(request[name], bool):
            metadata[f"request_{name}"] = str(request[name])
    return chat_event(
        trace_id=exchange.trace_id,
        agent_id=exchange.agent_id,
        messages=request["messages"],
        answer=answer,
        model=model or str(request.get("model") or "unknown"),
        usage=usage,
        latency_ms=exchange.latency_ms,
        metadata=metadata,
        task_id=exchange.task_id,
        task_family=exchange.task_family,
        prompt_versions=exchange.prompt_versions,
        rollouts=exchange.rollouts,
    )


def chat_event(
    *,
    trace_id: str,
    agent_id: str,
    messages: list[dict[str, Any]],
    answer: str,
    model: str,
    usage: Usage,
    latency_ms: float,
    metadata: dict[str, str],
    task_id: str,
    task_family: str | None = None,
    steps: list[Step] | None = None,
    event_id: str | None = None,
    created_at: datetime | None = None,
    prompt_versions: list[PromptRef] | None = None,
    rollouts: list[RolloutArm] | None = None,
) -> InteractionEvent:
    """A chat (OpenAI-shaped ``messages`` and the ``answer`` they got) as an
    ``InteractionEvent`` in mode ``auto``: the task input from the non-system turns, the system
    prompt in ``metadata``, texts cut to fixed caps (the cut marked in ``metadata``), and one
    student step with the answer unless ``steps`` are given. ``event_id`` and ``created_at``
    default to new ones."""
    metadata = dict(metadata)
    task_input, system = task_input_of(messages)
    if system:
        metadata["system_prompt"] = cut_text(system, SYSTEM_CAP, "system_prompt", metadata)
    task_input = cut_text(task_input, TEXT_CAP, "task_input", metadata)
    answer = cut_text(answer, TEXT_CAP, "answer", metadata)
    if steps is None:
        steps = [
            Step(
                index=0,
                role="student",
                kind="answer",
                content=answer,
                model=model,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                latency_ms=latency_ms,
            )
        ]
    return InteractionEvent(
        event_id=event_id or new_id(),
        trace_id=trace_id,
        agent_id=agent_id,
        created_at=created_at or utcnow(),
        task_id=task_id,
        task_family=task_family,
        task_input=task_input,
        mode="auto",
        prompt_versions=prompt_versions or [],
        models={"student": model},
        steps=steps,
        final_answer=answer,
        usage=usage,
        latency_ms=latency_ms,
        metadata=metadata,
        rollouts=rollouts or [],
    )
