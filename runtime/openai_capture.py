"""Capturing the ``openai`` client's chat completions inside a trace (``runtime/tracing.py``).

:func:`install` wraps ``Completions.create`` and ``AsyncCompletions.create`` of the installed
``openai`` package once per process (as OpenTelemetry's instrumentations do). Outside a trace
the wrapper calls the original at the cost of one context-variable read. Inside one it keeps
references to the request and the answer (the message list is copied: agents append to it
after the call) and reads them later, on the recorder's thread (:func:`model_call`).

Guarantees: what the client returns or raises is exactly what the original returns or raises
(a stream comes back as a wrapper that yields the same chunks, and delegates everything else
to the stream); a call that raises is not captured; capturing never raises into the agent.
A stream is captured when it is exhausted or closed; one left unfinished when its trace ends
is not part of the event.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from runtime.calls import ModelCall, chunks_call, completion_call
from runtime.tracing import CapturedCall, Trace, current_trace

_installed = False
_install_lock = threading.Lock()


def install() -> bool:
    """Wrap the ``openai`` client's chat completions (once); False if it is not installed."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        try:
            from openai.resources.chat.completions import AsyncCompletions, Completions
        except ImportError:
            return False
        Completions.create = _sync(Completions.create)  # type: ignore[method-assign]
        AsyncCompletions.create = _async(AsyncCompletions.create)  # type: ignore[method-assign]
        _installed = True
        return True


def _captured(trace: Trace, kwargs: dict[str, Any], response: Any, started: float) -> None:
    messages = kwargs.get("messages")
    trace.calls.append(
        CapturedCall(
            dict(kwargs),
            list(messages) if isinstance(messages, list | tuple) else [],
            response,
            (time.perf_counter() - started) * 1000,
        )
    )


def _kept(trace: Trace, kwargs: dict[str, Any], response: Any, started: float) -> Any:
    """What the client returns: the response, captured; a stream wrapped to be captured."""
    if _is_stream(response):
        return CapturedStream(response, trace, kwargs, started)
    _captured(trace, kwargs, response, started)
    return response


def _sync(original: Any) -> Any:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        trace = current_trace()
        if trace is None:
            return original(self, *args, **kwargs)
        started = time.perf_counter()
        return _kept(trace, kwargs, original(self, *args, **kwargs), started)

    return create


def _async(original: Any) -> Any:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        trace = current_trace()
        if trace is None:
            return await original(self, *args, **kwargs)
        started = time.perf_counter()
        return _kept(trace, kwargs, await original(self, *args, **kwargs), started)

    return create


def _is_stream(response: Any) -> bool:
    from openai import AsyncStream, Stream

    return isinstance(response, Stream | AsyncStream)


class CapturedStream:
    """A client stream (sync or async) that keeps its chunks and, once exhausted or closed,
    adds them to its trace as one call; everything else goes to the stream itself."""

    def __init__(self, stream: Any, trace: Trace, kwargs: dict[str, Any], started: float):
        self._stream, self._trace, self._kwargs, self._started = stream, trace, kwargs, started
        self._chunks: list[Any] = []
        self._done = False

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            _captured(self._trace, self._kwargs, self._chunks, self._started)
            self._trace.calls[-1].streamed = True

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._stream:
            self._chunks.append(chunk)
            yield chunk
        self._finish()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            self._chunks.append(chunk)
            yield chunk
        self._finish()

    def __next__(self) -> Any:
        try:
            chunk = self._stream.__next__()
        except StopIteration:
            self._finish()
            raise
        self._chunks.append(chunk)
        return chunk

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._finish()
            raise
        self._chunks.append(chunk)
        return chunk

    def close(self) -> None:
        self._stream.close()
        self._finish()

    async def aclose(self) -> None:
        await self._stream.close()
        self._finish()

    def __enter__(self) -> CapturedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CapturedStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _as_json(value: Any) -> Any:
    if hasattr(value, "parse") and not hasattr(value, "model_dump"):
        value = value.parse()  # a raw response (``with_raw_response``): parsed once, cached
    return value.model_dump() if hasattr(value, "model_dump") else value


def model_call(call: CapturedCall) -> ModelCall | None:
    """What ``call`` answered, read on the recorder's thread; None when it holds no
    completion (a chunk-less stream, or an answer without choices)."""
    model = str(call.request.get("model") or "")
    try:
        if call.streamed:
            found = chunks_call([_as_json(chunk) for chunk in call.response], call.latency_ms)
        else:
            found = completion_call(_as_json(call.response), call.latency_ms)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if found is not None and not found.model:
        found = ModelCall(found.answer, model, found.usage, found.latency_ms, found.finish_reason)
    return found
