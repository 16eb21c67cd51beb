"""Reading one model call out of GenAI telemetry: which spans (or log events) are calls or
agent runs, and their model, token usage and messages, as OpenAI-shaped chat messages.

Layouts read, first found wins for the messages:

1. the current semantic conventions: ``gen_ai.input.messages``, ``gen_ai.output.messages``,
   ``gen_ai.system_instructions`` (a JSON string on spans, structured on log events), messages
   made of ``parts`` (text, tool calls, tool call responses);
2. the event layout of conventions 1.28-1.30 (``gen_ai.system|user|assistant|tool.message``,
   ``gen_ai.choice``) and the older ``gen_ai.content.prompt|completion`` events carrying
   ``gen_ai.prompt`` / ``gen_ai.completion``, as span events or as log events of the span;
3. indexed attributes: ``gen_ai.prompt.N.role|content`` / ``gen_ai.completion.N.*``
   (OpenLLMetry) and ``llm.input_messages.N.message.*`` / ``llm.output_messages.N.*``
   (OpenInference), with ``input.value`` / ``output.value`` as a last resort.

Token counts come from ``gen_ai.usage.input_tokens|output_tokens``, the older
``gen_ai.usage.prompt_tokens|completion_tokens``, ``llm.usage.*`` or ``llm.token_count.*``.
A value of the wrong type (a string, NaN, a negative or huge count, messages that are not a
list) raises ``InvalidSpan`` with a one-line reason naming the attribute.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from runtime.calls import content_text
from schemas.models import Usage

Role = Literal["call", "agent"]
CALL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
AGENT_OPERATIONS = frozenset({"invoke_agent"})
MAX_TOKENS = 2**31 - 1  # a step's token counts are Avro ints
MAX_ATTRIBUTE_CHARS = 1024 * 1024  # one attribute's text; more is refused, not cut
LEGACY_INPUT_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
INDEXED = (
    (re.compile(r"gen_ai\.prompt\.(\d+)\.(role|content)$"), "input"),
    (re.compile(r"gen_ai\.completion\.(\d+)\.(role|content)$"), "output"),
    (re.compile(r"llm\.input_messages\.(\d+)\.message\.(role|content)$"), "input"),
    (re.compile(r"llm\.output_messages\.(\d+)\.message\.(role|content)$"), "output"),
)
INPUT_TOKENS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.usage.prompt_tokens",
    "llm.token_count.prompt",
)
OUTPUT_TOKENS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
    "llm.token_count.completion",
)
MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
Message = dict[str, Any]


class InvalidSpan(ValueError):
    """A GenAI span or event whose values cannot make an event; the message names them."""


@dataclass
class Conversation:
    """What one call (or agent run) was given and answered."""

    messages: list[Message]  # OpenAI-shaped: {"role", "content": text}, system turns included
    answer: str
    finish_reason: str | None = None

    @property
    def empty(self) -> bool:
        return not self.answer and not any(m["content"] for m in self.messages)


def role_of(attrs: dict[str, Any]) -> Role | None:
    """``call`` for a model call, ``agent`` for an agent run, None for anything else."""
    operation = attrs.get("gen_ai.operation.name")
    if operation in AGENT_OPERATIONS:
        return "agent"
    if operation in CALL_OPERATIONS:
        return "call"
    if operation is not None:
        return None  # embeddings, tools, ...: not a conversation
    kind = str(attrs.get("openinference.span.kind") or attrs.get("traceloop.span.kind") or "")
    if kind.upper() == "LLM" or attrs.get("llm.request.type") in ("chat", "completion"):
        return "call"
    if kind.upper() == "AGENT":
        return "agent"
    return "call" if isinstance(attrs.get("gen_ai.request.model"), str) else None


def check_sizes(attrs: dict[str, Any], where: str) -> None:
    for key, value in attrs.items():
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
            raise InvalidSpan(
                f"{where} attribute {key[:80]} is {len(value):,} characters, over the"
                f" {MAX_ATTRIBUTE_CHARS:,}-character limit"
            )


def _count(attrs: dict[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        if key not in attrs:
            continue
        value = attrs[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidSpan(f"{key} must be a whole number, not {type(value).__name__}")
        if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
            raise InvalidSpan(f"{key} is {value!r}; token counts are whole numbers")
        if not 0 <= value <= MAX_TOKENS:
            raise InvalidSpan(f"{key} is {value}, outside [0, {MAX_TOKENS}]")
        return int(value)
    return 0


def usage_of(attrs: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=_count(attrs, INPUT_TOKENS), completion_tokens=_count(attrs, OUTPUT_TOKENS)
    )


def model_of(attrs: dict[str, Any]) -> str | None:
    for key in MODEL_KEYS:
        value = attrs.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidSpan(f"{key} must be a string, not {type(value).__name__}")
        if value:
            return value
    return None


def _json_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise InvalidSpan(f"{key} is not JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InvalidSpan(f"{key} must be a list of messages, not {type(value).__name__}")
    return value


def _part_text(part: Any) -> str:
    if not isinstance(part, dict):
        return content_text(part)
    kind = part.get("type")
    if kind == "text" or (kind is None and "content" in part):
        return content_text(part.get("content"))
    if kind == "tool_call":
        call = {"name": part.get("name"), "arguments": part.get("arguments")}
        return json.dumps(call, ensure_ascii=False, default=str)
    if kind == "tool_call_response":
        return content_text(part.get("response"))
    return f"[{kind or 'part'}]"


def _message(raw: Any, key: str, default_role: str) -> Message:
    if not isinstance(raw, dict):
        raise InvalidSpan(f"{key} holds a {type(raw).__name__} where a message belongs")
    role = raw.get("role") or default_role
    if not isinstance(role, str):
        raise InvalidSpan(f"{key}: a message's role must be a string")
    if "parts" in raw:
        parts = raw["parts"] if isinstance(raw["parts"], list) else [raw["parts"]]
        text = "\n".join(t for t in map(_part_text, parts) if t)
    else:
        text = content_text(raw.get("content"))
        if raw.get("tool_calls"):
            text = (text + "\n" if text else "") + json.dumps(raw["tool_calls"], default=str)
    return {"role": role, "content": text}


def _answer(outputs: list[Message]) -> str:
    return "\n".join(m["content"] for m in outputs if m["content"])


def _current(attrs: dict[str, Any]) -> Conversation | None:
    if "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs:
        return None
    messages = []
    if "gen_ai.system_instructions" in attrs:
        parts = _json_list(attrs["gen_ai.system_instructions"], "gen_ai.system_instructions")
        messages.append({"role": "system", "content": "\n".join(map(_part_text, parts))})
    for raw in _json_list(attrs.get("gen_ai.input.messages", []), "gen_ai.input.messages"):
        messages.append(_message(raw, "gen_ai.input.messages", "user"))
    outputs = _json_list(attrs.get("gen_ai.output.messages", []), "gen_ai.output.messages")
    answers = [_message(raw, "gen_ai.output.messages", "assistant") for raw in outputs]
    finish = next((o.get("finish_reason") for o in outputs if isinstance(o, dict)), None)
    return Conversation(messages, _answer(answers), str(finish) if finish else None)


def _payload_message(name: str, payload: Any) -> tuple[str, list[Message]]:
    """('input'|'output', messages) of one legacy event; its payload is the span event's
    attributes or the log record's body."""
    if not isinstance(payload, dict):
        payload = {"content": payload}
    if name in LEGACY_INPUT_EVENTS:
        return "input", [_message(payload, name, LEGACY_INPUT_EVENTS[name])]
    if name == "gen_ai.choice":
        message = payload.get("message", payload)
        if isinstance(message, str):  # as a span event attribute: JSON, or the text itself
            parsed = _json_list(message, name) if message.lstrip().startswith("{") else None
            message = parsed[0] if parsed else {"content": message}
        return "output", [_message(message, name, "assistant")]
    side, key = (
        ("input", "gen_ai.prompt") if name.endswith("prompt") else ("output", "gen_ai.completion")
    )
    value = payload.get(key, payload.get("content"))
    if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
        return side, [{"role": "user" if side == "input" else "assistant", "content": value}]
    role = "user" if side == "input" else "assistant"
    return side, [_message(m, key, role) for m in _json_list(value, key)]


LEGACY_EVENTS = frozenset(
    {*LEGACY_INPUT_EVENTS, "gen_ai.choice", "gen_ai.content.prompt", "gen_ai.content.completion"}
)


def legacy_conversation(events: list[tuple[str, Any]]) -> Conversation | None:
    """The conversation told by legacy message events (name, payload), in their order."""
    inputs: list[Message] = []
    outputs: list[Message] = []
    finish = None
    for name, payload in events:
        if name not in LEGACY_EVENTS:
            continue
        side, messages = _payload_message(name, payload)
        (inputs if side == "input" else outputs).extend(messages)
        if name == "gen_ai.choice" and isinstance(payload, dict) and payload.get("finish_reason"):
            finish = str(payload["finish_reason"])
    if not inputs and not outputs:
        return None
    return Conversation(inputs, _answer(outputs), finish)


def _indexed(attrs: dict[str, Any]) -> Conversation | None:
    sides: dict[str, dict[int, Message]] = {"input": {}, "output": {}}
    for key, value in attrs.items():
        for pattern, side in INDEXED:
            match = pattern.match(key)
            if match:
                default = "user" if side == "input" else "assistant"
                slot = sides[side].setdefault(int(match[1]), {"role": default, "content": ""})
                if not isinstance(value, str):
                    raise InvalidSpan(f"{key} must be a string, not {type(value).__name__}")
                slot[match[2]] = value
                break
    if not sides["input"] and not sides["output"]:
        return None
    inputs = [sides["input"][i] for i in sorted(sides["input"])]
    outputs = [sides["output"][i] for i in sorted(sides["output"])]
    return Conversation(inputs, _answer(outputs))


def conversation_of(attrs: dict[str, Any], events: list[tuple[str, Any]]) -> Conversation:
    """The messages of a span (or of a log event's attributes) by the layouts above; an empty
    conversation when it carries no content."""
    for layout in (_current, lambda _: legacy_conversation(events), _indexed):
        found = layout(attrs)  # in turn: a later layout's faults never reject an earlier one
        if found is not None:
            return found
    value_in, value_out = attrs.get("input.value"), attrs.get("output.value")
    messages = [{"role": "user", "content": value_in}] if isinstance(value_in, str) else []
    return Conversation(messages, value_out if isinstance(value_out, str) else "")
