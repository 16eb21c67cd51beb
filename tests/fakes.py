"""In-memory stand-ins for unit tests of control flow (never for the capabilities themselves,
which are proven against the real broker, store and model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
