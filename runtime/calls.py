"""Model calls as an ``InteractionEvent``, for every edge that records calls it did not make
itself: the recording proxy (``ingest/exchange.py``: HTTP bodies) and the SDK
(``runtime/tracing.py``: the ``openai`` client's objects, or a plain function's arguments).

Pure functions, run on a recorder's thread, never on the agent's path. Text fields are cut to
fixed caps (each cut is marked in ``metadata``) so an event always fits the codec's limits.
Completions are read as OpenAI's JSON shapes (a chat completion, or its stream's chunks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.models import InteractionEvent, PromptRef, RolloutArm, Step, Usage, new_id, utcnow

TEXT_CAP = 64 * 1024  # characters of the task input, of the answer and of each step kept
SYSTEM_CAP = 16 * 1024  # characters of the system prompt kept in metadata
REQUEST_PARAMETERS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed")


@dataclass(frozen=True)
class ModelCall:
    """One completion as recorded: its text (tool calls as JSON after it), model and usage."""

    answer: str
    model: str
    usage: Usage
    latency_ms: float
    finish_reason: str | None = None


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


def cut(text: str, cap: int, name: str, metadata: dict[str, str]) -> str:
    """``text`` within ``cap`` characters; a cut is marked as ``<name>_truncated_from``."""
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


def answer_of(message: dict[str, Any]) -> str:
    """An assistant message as text: its content, then its tool calls as JSON."""
    text = content_text(message.get("content"))
    calls = message.get("tool_calls")
    if calls:
        text = (text + "\n" if text else "") + json.dumps(calls, ensure_ascii=False)
    return text


def usage_of(usage: Any) -> Usage:
    usage = usage if isinstance(usage, dict) else {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def completion_call(answer: dict[str, Any], latency_ms: float) -> ModelCall:
    """A chat completion (JSON) as a call; KeyError, IndexError, TypeError, ValueError or
    AttributeError when it holds no choice."""
    choice = answer["choices"][0]
    return ModelCall(
        answer_of(choice.get("message") or {}),
        str(answer.get("model") or ""),
        usage_of(answer.get("usage")),
        latency_ms,
        choice.get("finish_reason"),
    )


def chunks_call(chunks: Iterable[Any], latency_ms: float) -> ModelCall | None:
    """A stream's chunks (JSON objects; others are skipped) as a call: the first choice's
    content deltas (and tool-call argument deltas) joined, usage from the chunk that has it;
    None if no chunk was a chunk."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    model, finish, usage = "", None, Usage()
    seen = 0
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        seen += 1
        model = str(chunk.get("model") or model)
        if isinstance(chunk.get("usage"), dict):
            usage = usage_of(chunk["usage"])
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
    if not seen:
        return None
    answer = "".join(text)
    if calls:
        tool_calls = [calls[i] for i in sorted(calls)]
        answer = (answer + "\n" if answer else "") + json.dumps(tool_calls, ensure_ascii=False)
    return ModelCall(answer, model, usage, latency_ms, finish)


def request_metadata(request: dict[str, Any]) -> dict[str, str]:
    """The sampling parameters of a chat request worth keeping (``request_<name>``)."""
    return {
        f"request_{name}": str(request[name])
        for name in REQUEST_PARAMETERS
        if isinstance(request.get(name), int | float) and not isinstance(request[name], bool)
    }


def interaction_event(
    *,
    trace_id: str,
    agent_id: str,
    task_id: str,
    task_input: str,
    final_answer: str,
    calls: Sequence[ModelCall],
    latency_ms: float,
    metadata: dict[str, str],
    system: str = "",
    task_family: str | None = None,
    model: str = "unknown",
    prompt_versions: Sequence[PromptRef] = (),
    rollouts: Sequence[RolloutArm] = (),
    event_id: str | None = None,
    created_at: datetime | None = None,
) -> InteractionEvent:
    """The calls of one task as an ``InteractionEvent`` (mode ``auto``: each call a student
    step; without calls, one step holding the answer under ``model``); usage summed, the last
    call's model and finish reason kept, the system prompt in ``metadata``. ``event_id`` and
    ``created_at`` default to new ones (an edge that may send the same call twice derives
    the id, so the copies collapse downstream)."""
    metadata = dict(metadata)
    if calls and calls[-1].finish_reason:
        metadata["finish_reason"] = str(calls[-1].finish_reason)
    if system:
        metadata["system_prompt"] = cut(system, SYSTEM_CAP, "system_prompt", metadata)
    task_input = cut(task_input, TEXT_CAP, "task_input", metadata)
    final_answer = cut(final_answer, TEXT_CAP, "answer", metadata)
    made = list(calls) or [ModelCall(final_answer, model, Usage(), latency_ms)]
    steps = [
        Step(
            index=i,
            role="student",
            kind="answer",
            content=cut(call.answer, TEXT_CAP, f"step_{i}", metadata) if calls else final_answer,
            model=call.model or model,
            prompt_tokens=call.usage.prompt_tokens,
            completion_tokens=call.usage.completion_tokens,
            latency_ms=call.latency_ms,
        )
        for i, call in enumerate(made)
    ]
    usage = Usage(
        prompt_tokens=sum(c.usage.prompt_tokens for c in made),
        completion_tokens=sum(c.usage.completion_tokens for c in made),
    )
    return InteractionEvent(
        event_id=event_id or new_id(),
        trace_id=trace_id,
        agent_id=agent_id,
        created_at=created_at or utcnow(),
        task_id=task_id,
        task_family=task_family,
        task_input=task_input,
        mode="auto",
        prompt_versions=list(prompt_versions),
        models={"student": made[-1].model or model},
        steps=steps,
        final_answer=final_answer,
        usage=usage,
        latency_ms=latency_ms,
        metadata=metadata,
        rollouts=list(rollouts),
    )
