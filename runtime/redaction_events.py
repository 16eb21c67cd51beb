"""Redacting whole events: every free-text field of an interaction, a feedback event, a scored
trace or a dead letter, under the policy of the event's agent (``runtime/redaction.py``).

What is redacted (everything a person or a model wrote):
* InteractionEvent: ``task_input``, ``reference``, ``final_answer``, ``baseline_answer``,
  ``production_answer``, each step's ``content``, and ``metadata`` values (except the
  system's own ``atlas.*`` keys).
* FeedbackEvent: ``edited_text``, ``comment``, and ``user_id`` (masked, never dropped: an
  e-mail used as a user id becomes ``<EMAIL>``, an opaque id is left as it is).
* ScoredTrace: its interaction as above, its ``rationale`` and ``errors``, and each judge's
  ``rationale`` and ``error`` (a judge may quote the text it judged).
* DeadLetter: its ``reason`` (errors may quote values), and its ``original`` bytes: decoded as
  the source topic's event, redacted and encoded again when they decode (so the letter stays
  replayable); otherwise redacted as UTF-8 text, invalid bytes kept as they were.

Ids (trace, event, task, agent), model names, tool names, numbers and timestamps are kept: they
carry no free text. Guarantee: the functions never mutate their input; they return a copy (or
the same object where nothing changed) and the per-kind counts of what was replaced.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from pydantic import BaseModel

from runtime.redaction import DROPPED, Policy, Redaction, Redactor
from schemas.codec import AvroCodec
from schemas.models import (
    DeadLetter,
    FeedbackEvent,
    InteractionEvent,
    JudgeScore,
    ScoredTrace,
)
from schemas.topics import TOPICS

SYSTEM_METADATA = "atlas."
M = TypeVar("M", bound=BaseModel)


class _Text:
    """Applies one redactor under one policy and sums the counts."""

    def __init__(self, redactor: Redactor, policy: Policy):
        self.redactor, self.policy, self.counts = redactor, policy, Counter[str]()
        self._done: dict[tuple[str, Policy], Redaction] = {}  # a text repeated: scanned once

    def __call__(self, text: str | None, policy: Policy | None = None) -> str | None:
        if text is None:
            return None
        key = (text, policy or self.policy)
        result = self._done.get(key)
        if result is None:
            result = self._done[key] = self.redactor.redact(text, policy=key[1])
        self.counts.update(result.counts)
        return result.text


def _updated(model: M, update: dict[str, Any]) -> M:
    """``model`` itself when ``update`` changes nothing, else a copy with it (copies are most
    of the cost of redacting an event that holds no PII)."""
    if all(
        (now := getattr(model, name)) is value or now == value for name, value in update.items()
    ):
        return model
    return model.model_copy(update=update)


def _interaction(event: InteractionEvent, text: _Text) -> InteractionEvent:
    steps = [_updated(s, {"content": text(s.content)}) for s in event.steps]
    metadata = {
        k: v if k.startswith(SYSTEM_METADATA) else text(v) or "" for k, v in event.metadata.items()
    }
    return _updated(
        event,
        {
            "task_input": text(event.task_input),
            "reference": text(event.reference),
            "final_answer": text(event.final_answer),
            "baseline_answer": text(event.baseline_answer),
            "production_answer": text(event.production_answer),
            "steps": steps,
            "metadata": metadata,
        },
    )


def redact_interaction(
    redactor: Redactor, event: InteractionEvent, policy: Policy | None = None
) -> tuple[InteractionEvent, Counter[str]]:
    """The interaction with its free text redacted under its agent's policy (or ``policy``)."""
    policy = policy or redactor.policy_for(event.agent_id)
    if policy == "off":
        return event, Counter()
    text = _Text(redactor, policy)
    return _interaction(event, text), text.counts


def redact_feedback(
    redactor: Redactor, event: FeedbackEvent, policy: Policy | None = None
) -> tuple[FeedbackEvent, Counter[str]]:
    """The feedback event with its edit, comment and user id redacted."""
    policy = policy or redactor.policy_for(event.agent_id)
    if policy == "off":
        return event, Counter()
    text = _Text(redactor, policy)
    update = {
        "edited_text": text(event.edited_text),
        "comment": text(event.comment),
        "user_id": text(event.user_id, "mask"),
    }
    return _updated(event, update), text.counts


def redact_scored_trace(
    redactor: Redactor, trace: ScoredTrace, policy: Policy | None = None
) -> tuple[ScoredTrace, Counter[str]]:
    """The scored trace with every free-text field redacted under its agent's policy."""
    policy = policy or redactor.policy_for(trace.agent_id)
    if policy == "off":
        return trace, Counter()
    text = _Text(redactor, policy)
    judges: list[JudgeScore] = [
        _updated(j, {"rationale": text(j.rationale) or "", "error": text(j.error)})
        for j in trace.judge_scores
    ]
    redacted = _updated(
        trace,
        {
            "interaction": _interaction(trace.interaction, text),
            "rationale": text(trace.rationale) or "",
            "judge_scores": judges,
            "errors": [text(e) or "" for e in trace.errors],
        },
    )
    return redacted, text.counts


def redact_dead_letter(
    redactor: Redactor, letter: DeadLetter, codec: AvroCodec
) -> tuple[DeadLetter, Counter[str]]:
    """The dead letter with its reason and original redacted (see the module docstring)."""
    counts: Counter[str] = Counter()
    original, agent_id = letter.original, None
    contract = TOPICS.get(letter.source_topic)
    decoded = None
    if contract is not None and contract.event_type in (InteractionEvent, FeedbackEvent):
        try:
            decoded = codec.decode(letter.original, contract.event_type)
        except Exception:  # undecodable is why many letters exist: redact the bytes instead
            decoded = None
    if isinstance(decoded, InteractionEvent | FeedbackEvent):
        agent_id = decoded.agent_id
    policy = redactor.policy_for(agent_id)
    if policy == "off":
        return letter, counts
    if isinstance(decoded, InteractionEvent):
        event, counts = redact_interaction(redactor, decoded, policy)
        original = codec.encode(event)
    elif isinstance(decoded, FeedbackEvent):
        feedback, counts = redact_feedback(redactor, decoded, policy)
        original = codec.encode(feedback)
    elif policy == "drop":
        original, counts = redactor.config.drop_marker.encode(), Counter({DROPPED: 1})
    elif original:
        result = redactor.redact(original.decode("utf-8", "surrogateescape"), policy="mask")
        original = result.text.encode("utf-8", "surrogateescape")
        counts.update(result.counts)
    reason = redactor.redact(letter.reason, policy="mask")
    counts.update(reason.counts)
    updated = letter.model_copy(update={"original": original, "reason": reason.text or "-"})
    return updated, counts
