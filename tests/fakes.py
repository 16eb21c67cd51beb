"""In-memory stand-ins for unit tests of control flow (never for the capabilities themselves,
which are proven against the real broker, store and model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime.backends.base import ChatResult, GenerationParams, Message


class ScriptedBackend:
    """Answers each conversation with ``respond(conversation)``; records every batch."""

    def __init__(
        self, name: str, respond: Callable[[Sequence[Message]], str], logprob: float = -0.5
    ):
        self.model_name = name
        self.respond = respond
        self.logprob = logprob
        self.batches: list[list[Sequence[Message]]] = []
        self.params: list[GenerationParams] = []

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        self.batches.append(list(conversations))
        self.params.append(params)
        results = []
        for conversation in conversations:
            texts = [self.respond(conversation) for _ in range(params.n)]
            results.append(
                ChatResult(
                    texts=texts,
                    prompt_tokens=sum(len(m["content"].split()) for m in conversation),
                    completion_tokens=sum(len(t.split()) for t in texts),
                    latency_ms=1.0,
                    model=self.model_name,
                    mean_logprobs=[self.logprob] * params.n,
                )
            )
        return results

    @property
    def calls(self) -> int:
        return sum(len(batch) for batch in self.batches)


def last_user(conversation: Sequence[Message]) -> str:
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


class ScriptedTaskWorld:
    """A scripted student for learning tests: it answers a built-in task correctly when its
    system prompt holds ``keyword`` (and always wrongly on inputs ``fails_with_keyword`` names), and
    otherwise only when the reference is a multiple of 3. The reflection model proposes a
    prompt with the keyword, so GEPA has something real to find."""

    def __init__(
        self,
        keyword: str = "MAGIC",
        fails_with_keyword: Callable[[str], bool] = lambda _input: False,
        family: str = "arithmetic",
    ):
        from runtime.tasks import generate

        self.keyword = keyword
        self.fails_with_keyword = fails_with_keyword
        self.references = {
            t.input: t.reference or ""
            for split in ("train", "validation", "test")
            for seed in (0, 5)
            for t in generate(family, split, 200, seed)  # type: ignore[arg-type]
        }
        self.student = ScriptedBackend("scripted-student", self._answer)
        self.reflection = ScriptedBackend(
            "scripted-reflection",
            lambda _c: f"```\nSolve it and reply with the number. {keyword}\n```",
        )

    def _answer(self, conversation: Sequence[Message]) -> str:
        system, task = conversation[0]["content"], last_user(conversation)
        reference = self.references.get(task)
        if reference is None:
            return "I do not know."
        if self.keyword in system:
            return str(int(reference) + 1) if self.fails_with_keyword(task) else reference
        return reference if int(reference) % 3 == 0 else str(int(reference) + 1)


@dataclass
class Msg:
    """Enough of confluent-kafka's Message for a handler: a value, a key, an offset, on
    ``topic_`` partition 0."""

    value_: bytes | None
    key_: bytes | None
    offset_: int = 0
    topic_: str = "atlas-rewards-memory-candidates"

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_
