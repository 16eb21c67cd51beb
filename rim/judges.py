"""Judges: each scores a batch of interactions in [0, 1], behind one small protocol.

Programmatic judges check what code can check (reference match, bare-answer format, tool
success). LLM judges ask a model for JSON ``{principles, score, rationale, uncertainty}`` at
several temperatures, validate it, retry malformed output, and escalate to an arbiter model when
the samples disagree, are unsure, or none parsed. A batch of traces at all temperatures is one
backend request (`complete_each`): the local backend generates it in one batch, an
OpenAI-compatible one sends it concurrently. A judge never raises on bad model output: the
failure becomes the score's ``error``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Protocol

from pydantic import BaseModel, Field, ValidationError

from runtime.backends.base import GenerationParams, Message, ModelBackend, complete_each
from runtime.tasks import FAMILIES, is_bare_value, last_integer, matches_reference
from schemas.models import InteractionEvent, JudgeScore


class Judge(Protocol):
    name: str

    def judge(self, traces: Sequence[InteractionEvent]) -> list[JudgeScore]:
        """One score per trace, in order. ``score=None`` means abstained or failed."""
        ...


def _format_of(trace: InteractionEvent) -> str:
    """The shape of a bare answer to the trace's task: its family's, else free text."""
    family = FAMILIES.get(trace.task_family or "")
    return family[1] if family is not None else "text"


class ReferenceMatchJudge:
    """1 if the final answer matches the reference (numbers: within ``tolerance``), else 0;
    abstains when the task has no reference."""

    programmatic = True

    def __init__(self, name: str = "reference_match", tolerance: float = 0.0):
        self.name = name
        self.tolerance = tolerance

    def _score(self, trace: InteractionEvent) -> JudgeScore:
        if trace.reference is None:
            return JudgeScore(judge=self.name, rationale="no reference: abstained")
        answer_format = _format_of(trace)
        if answer_format == "integer" and self.tolerance > 0:
            found = last_integer(trace.final_answer)
            ok = found is not None and abs(float(found) - float(trace.reference)) <= self.tolerance
        else:
            ok = matches_reference(trace.reference, answer_format, trace.final_answer)
        rationale = "matches the reference" if ok else f"expected {trace.reference}"
        return JudgeScore(judge=self.name, score=1.0 if ok else 0.0, rationale=rationale)

    def judge(self, traces: Sequence[InteractionEvent]) -> list[JudgeScore]:
        return [self._score(t) for t in traces]


class FormatJudge:
    """1 if the whole answer is the bare value the task asks for (a number, a word)."""

    programmatic = True

    def __init__(self, name: str = "format"):
        self.name = name

    def judge(self, traces: Sequence[InteractionEvent]) -> list[JudgeScore]:
        scores = []
        for trace in traces:
            answer_format = _format_of(trace)
            if answer_format == "text":
                scores.append(JudgeScore(judge=self.name, rationale="free text: abstained"))
                continue
            bare = is_bare_value(answer_format, trace.final_answer)
            scores.append(
                JudgeScore(
                    judge=self.name,
                    score=1.0 if bare else 0.0,
                    rationale="bare answer" if bare else f"not a bare {answer_format}",
                )
            )
        return scores


class ToolSuccessJudge:
    """Share of successful tool calls, from the event's ``tool_calls``/``tool_failures``
    metadata; abstains when no tool was called."""

    programmatic = True

    def __init__(self, name: str = "tool_success"):
        self.name = name

    def judge(self, traces: Sequence[InteractionEvent]) -> list[JudgeScore]:
        scores = []
        for trace in traces:
            calls = int(trace.metadata.get("tool_calls", "0") or 0)
            if calls <= 0:
                scores.append(JudgeScore(judge=self.name, rationale="no tool calls: abstained"))
                continue
            failures = int(trace.metadata.get("tool_failures", "0") or 0)
            ok = max(calls - failures, 0)
            scores.append(
                JudgeScore(
                    judge=self.name,
                    score=ok / calls,
                    rationale=f"{ok}/{calls} tool calls succeeded",
                )
            )
        return scores


class Principle(BaseModel):
    name: str
    weight: float = Field(1.0, ge=0)
    description: str


class JudgeOutput(BaseModel):
    """What an LLM judge must return."""

    principles: list[Principle] = Field(default_factory=list)
    score: float = Field(ge=0, le=1)
    rationale: str = ""
    uncertainty: float = Field(0.0, ge=0, le=1)


JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_judge_output(text: str) -> JudgeOutput:
    """The JSON object in the model's text, validated; raises ValueError with the reason."""
    found = JSON_OBJECT.search(text or "")
    if found is None:
        raise ValueError("no JSON object in the judge's reply")
    try:
        return JudgeOutput.model_validate(json.loads(found.group(0)))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON from the judge: {exc.msg}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(
            f"judge JSON fails validation: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        ) from exc


SYSTEM = (
    "You are an impartial judge of an AI agent's work. Score it against the principles, "
    "from 0 (fails them) to 1 (fully meets them). Reply with one JSON object: "
    '{"principles": [{"name": str, "weight": float, "description": str}], '
    '"score": float, "rationale": str, "uncertainty": float}. '
    "uncertainty is 0 when you are sure and 1 when you are guessing."
)


def render_trace(trace: InteractionEvent) -> str:
    lines = [f"Task: {trace.task_input}"]
    if trace.reference is not None:
        lines.append(f"Reference answer: {trace.reference}")
    for step in trace.steps:
        if step.kind != "baseline" or len(trace.steps) == 1:
            lines.append(f"[{step.role} / {step.kind}] {step.content}")
    lines.append(f"Final answer: {trace.final_answer}")
    return "\n".join(lines)


class LLMJudge:
    """Scores traces by sampling a model at each of ``temperatures`` (all traces and
    temperatures in one backend request), escalating to ``arbiter`` when needed."""

    def __init__(
        self,
        name: str,
        principles: Sequence[Principle],
        backend: ModelBackend,
        arbiter: ModelBackend | None = None,
        temperatures: Sequence[float] = (0.2, 0.5, 0.8),
        spread_threshold: float = 0.15,
        uncertainty_threshold: float = 0.3,
        retries: int = 1,
        max_tokens: int = 256,
    ):
        if not temperatures:
            raise ValueError(f"judge {name}: at least one sampling temperature is needed")
        self.name = name
        self.principles = list(principles)
        self.backend = backend
        self.arbiter = arbiter
        self.temperatures = tuple(temperatures)
        self.spread_threshold = spread_threshold
        self.uncertainty_threshold = uncertainty_threshold
        self.retries = retries
        self.max_tokens = max_tokens

    def _conversation(self, trace: InteractionEvent) -> list[Message]:
        principles = "\n".join(
            f"- {p.name} (weight {p.weight}): {p.description}" for p in self.principles
        )
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Principles:\n{principles}\n\n{render_trace(trace)}"},
        ]

    def _sample(
        self,
        backend: ModelBackend,
        traces: Sequence[InteractionEvent],
        temperatures: Sequence[float],
    ) -> list[list[JudgeOutput | str]]:
        """For each temperature, one parsed output (or the last parse error) per trace.

        Every trace at every temperature goes to the backend in one `complete_each` call (rows
        ordered temperature by temperature), and the malformed replies of all of them are
        retried together in one more such call, up to ``retries`` times.
        """
        conversations = [self._conversation(trace) for trace in traces]
        rows = [(t, i) for t in range(len(temperatures)) for i in range(len(traces))]
        params = [
            GenerationParams(temperature=t, max_tokens=self.max_tokens, json_output=True)
            for t in temperatures
        ]
        results: list[list[JudgeOutput | str]] = [["not asked"] * len(traces) for _ in params]
        todo = rows
        for _attempt in range(self.retries + 1):
            if not todo:
                break
            replies = complete_each(
                backend, [conversations[i] for _, i in todo], [params[t] for t, _ in todo]
            )
            still = []
            for (t, i), reply in zip(todo, replies, strict=True):
                try:
                    results[t][i] = parse_judge_output(reply.text)
                except ValueError as exc:
                    results[t][i] = str(exc)
                    still.append((t, i))
            todo = still
        return results

    def judge(self, traces: Sequence[InteractionEvent]) -> list[JudgeScore]:
        """One backend request (`complete_each`) for all traces at all temperatures, plus
        batched retries; then one arbiter request at the first temperature for the traces that
        need escalation."""
        samples = self._sample(self.backend, traces, self.temperatures)
        per_trace = [[s[i] for s in samples] for i in range(len(traces))]
        escalate = [i for i, outs in enumerate(per_trace) if self._needs_arbiter(outs)]
        arbiter_outputs: dict[int, JudgeOutput | str] = {}
        if escalate and self.arbiter is not None:
            [decided] = self._sample(
                self.arbiter, [traces[i] for i in escalate], self.temperatures[:1]
            )
            arbiter_outputs = dict(zip(escalate, decided, strict=True))
        return [
            self._decide(per_trace[i], arbiter_outputs.get(i), i in escalate)
            for i in range(len(traces))
        ]

    def _needs_arbiter(self, outputs: list[JudgeOutput | str]) -> bool:
        parsed = [o for o in outputs if isinstance(o, JudgeOutput)]
        if not parsed:
            return True
        spread = max(o.score for o in parsed) - min(o.score for o in parsed)
        unsure = any(o.uncertainty > self.uncertainty_threshold for o in parsed)
        return spread > self.spread_threshold or unsure

    def _decide(
        self,
        outputs: list[JudgeOutput | str],
        arbiter: JudgeOutput | str | None,
        escalated: bool,
    ) -> JudgeScore:
        parsed = [o for o in outputs if isinstance(o, JudgeOutput)]
        errors = [o for o in outputs if isinstance(o, str)]
        samples = len(outputs) + (arbiter is not None)
        if isinstance(arbiter, JudgeOutput):
            return JudgeScore(
                judge=self.name,
                score=arbiter.score,
                rationale=arbiter.rationale,
                uncertainty=arbiter.uncertainty,
                escalated=True,
                samples=samples,
            )
        if parsed:
            best = min(parsed, key=lambda o: o.uncertainty)
            note = (
                None
                if not escalated
                else (
                    f"escalation wanted but the arbiter failed: {arbiter}"
                    if arbiter
                    else "escalation wanted but no arbiter is configured"
                )
            )
            return JudgeScore(
                judge=self.name,
                score=best.score,
                rationale=best.rationale,
                uncertainty=best.uncertainty,
                escalated=False,
                samples=samples,
                error=note,
            )
        reason = errors[-1] if errors else "no output"
        if isinstance(arbiter, str):
            reason = f"{reason}; arbiter: {arbiter}"
        return JudgeScore(
            judge=self.name,
            score=None,
            rationale="",
            escalated=escalated,
            samples=samples,
            error=f"no valid judgement: {reason}",
        )


def text_similarity(a: str, b: str) -> float:
    """0..1 similarity of two answers, whitespace- and case-insensitive."""
    left, right = " ".join(a.lower().split()), " ".join(b.lower().split())
    if not left and not right:
        return 1.0
    return SequenceMatcher(None, left, right).ratio()
