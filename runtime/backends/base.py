"""The one seam for language models: a backend turns chat conversations into completions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class BackendError(Exception):
    """A model call failed for a reason a person must fix (auth, missing model, bad URL)."""


@dataclass(frozen=True)
class GenerationParams:
    temperature: float = 0.0
    max_tokens: int = 128
    n: int = 1
    json_output: bool = False
    seed: int | None = None
    logprobs: bool = False  # ask for each answer's mean token log-probability (the probe)


@dataclass
class ChatResult:
    """The ``n`` sampled answers to one conversation and what they cost."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    model: str
    mean_logprobs: list[float | None] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[0]


@runtime_checkable
class ModelBackend(Protocol):
    model_name: str

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        """One result per conversation, in order; batching is the backend's business."""
        ...


def chat(backend: ModelBackend, messages: Sequence[Message], **params: object) -> ChatResult:
    """Convenience for one conversation: ``chat(backend, msgs, temperature=0.5, n=3)``."""
    return backend.complete([messages], GenerationParams(**params))[0]  # type: ignore[arg-type]
