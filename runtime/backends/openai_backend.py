"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server) through the `openai` client."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from runtime.backends.base import (
    BackendError,
    ChatResult,
    GenerationParams,
    Message,
    MixedBackend,
)


class OpenAIBackend(MixedBackend):
    """Retries with exponential backoff on 429, 5xx, timeouts and dropped connections (the
    client's own policy, ``max_retries`` times, each try bounded by ``timeout`` seconds); fails
    at once, clearly, on auth errors and unknown models. The conversations of one ``complete``
    or ``complete_each`` call (each with its own temperature) run concurrently, at most
    ``concurrency`` requests in flight: that is what lets vLLM or llama.cpp's server with
    parallel slots batch them. Servers that ignore ``n`` (llama.cpp) are topped up with extra
    requests."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 8,
    ):
        self.model_name = model
        self.base_url = base_url
        self.concurrency = concurrency
        self._client = openai.OpenAI(
            base_url=base_url,
            # like the openai client: the argument, else OPENAI_API_KEY; local servers need none
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        """One request per conversation with its own parameters, all through one pool of
        ``concurrency`` threads; results in order. The first failure is raised once the
        requests already in flight are done."""
        if len(conversations) != len(params):
            raise ValueError(f"{len(conversations)} conversations but {len(params)} parameter rows")
        if len(conversations) <= 1:
            return [self._one(c, p) for c, p in zip(conversations, params, strict=True)]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)))
        try:
            futures = [
                pool.submit(self._one, c, p) for c, p in zip(conversations, params, strict=True)
            ]
            return [future.result() for future in futures]
        finally:  # after a failure, requests not yet sent are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, messages: Sequence[Message], params: GenerationParams) -> ChatResult:
        started = time.perf_counter()
        texts: list[str] = []
        logprobs: list[float | None] = []
        prompt_tokens = completion_tokens = 0
        while len(texts) < params.n:
            response = self._request(messages, params, params.n - len(texts))
            usage = response.usage
            prompt_tokens += usage.prompt_tokens if usage else 0
            completion_tokens += usage.completion_tokens if usage else 0
            for choice in response.choices:
                texts.append(choice.message.content or "")
                logprobs.append(_mean_logprob(choice))
        return ChatResult(
            texts=texts[: params.n],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
            model=self.model_name,
            mean_logprobs=logprobs[: params.n],
        )

    def _request(self, messages: Sequence[Message], params: GenerationParams, n: int) -> Any:
        extra: dict[str, Any] = {}
        if params.json_output:
            extra["response_format"] = {"type": "json_object"}
        if params.seed is not None:
            extra["seed"] = params.seed
        try:
            return self._client.chat.completions.create(
                model=self.model_name,
                messages=list(messages),  # type: ignore[arg-type]
                temperature=params.temperature,
                max_tokens=params.max_tokens,
                n=n,
                logprobs=params.logprobs,
                **extra,
            )
        except openai.AuthenticationError as exc:
            raise BackendError(
                f"authentication failed at {self.base_url or 'api.openai.com'}: check the API key"
                f" (ATLAS_OPENAI_API_KEY): {exc.message}"
            ) from exc
        except openai.NotFoundError as exc:
            raise BackendError(
                f"model {self.model_name!r} or endpoint not found at {self.base_url}: {exc.message}"
            ) from exc
        except openai.APIConnectionError as exc:
            raise BackendError(
                f"cannot reach the model endpoint {self.base_url} after retries: {exc}"
            ) from exc


def _mean_logprob(choice: Any) -> float | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return sum(token.logprob for token in content) / len(content)
