"""The one seam for language models: a backend turns chat conversations into completions.

``complete`` takes one set of generation parameters for the whole batch. ``complete_each`` takes
one per conversation (the LLM judge sends every trace at every temperature at once): a backend
that can mix them in one batch implements ``complete_each`` itself, and any other backend gets
one ``complete`` call per distinct parameter set. A backend that subclasses `MixedBackend`
inherits ``complete`` as ``complete_each`` with the same parameters on every row.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

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


@runtime_checkable
class MixedBackend(ModelBackend, Protocol):
    """A backend that serves rows with different parameters (temperatures) in one batch.
    Subclassing it explicitly (rather than only matching it) provides ``complete``."""

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        """``complete_each`` with ``params`` on every row: one batched path per backend."""
        return self.complete_each(conversations, [params] * len(conversations))

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        """One result per conversation, each generated with its own ``params`` row, in order."""
        ...


K = TypeVar("K", bound=Hashable)


def group_rows(
    params: Sequence[GenerationParams], key: Callable[[GenerationParams], K]
) -> dict[K, list[int]]:
    """Row indices grouped by ``key(params[i])``, groups and rows in first-seen order."""
    groups: dict[K, list[int]] = {}
    for i, row in enumerate(params):
        groups.setdefault(key(row), []).append(i)
    return groups


def complete_each(
    backend: ModelBackend,
    conversations: Sequence[Sequence[Message]],
    params: Sequence[GenerationParams],
) -> list[ChatResult]:
    """One result per conversation, each generated with its own ``params`` row, in order.

    A backend with its own ``complete_each`` (local: one generate call with a temperature per
    row; OpenAI-compatible: every row concurrently) gets all rows in one call. Any other
    backend gets one ``complete`` call per distinct parameter set, and the results are put
    back in row order.
    """
    if len(conversations) != len(params):
        raise ValueError(f"{len(conversations)} conversations but {len(params)} parameter rows")
    if not conversations:
        return []
    if isinstance(backend, MixedBackend):
        return backend.complete_each(conversations, params)
    results: list[ChatResult | None] = [None] * len(conversations)
    for same, rows in group_rows(params, lambda p: p).items():
        replies = backend.complete([conversations[i] for i in rows], same)
        for i, reply in zip(rows, replies, strict=True):
            results[i] = reply
    return results  # type: ignore[return-value]  # every row was filled


def chat(backend: ModelBackend, messages: Sequence[Message], **params: object) -> ChatResult:
    """Convenience for one conversation: ``chat(backend, msgs, temperature=0.5, n=3)``."""
    return backend.complete([messages], GenerationParams(**params))[0]  # type: ignore[arg-type]
