"""Relaying one streamed (SSE) answer from the upstream to the agent while keeping it to
record."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ingest.exchange import Exchange

log = logging.getLogger(__name__)
DONE = b"data: [DONE]"


class StreamRelay:
    """Each upstream chunk is passed on as it comes (decoded, if it came compressed), the
    stream kept up to ``cap`` bytes to record. ``finish`` hands the exchange to ``record``
    once, whichever comes first: the stream's end, or the response's background task (a client
    that closes the connection right after ``data: [DONE]`` cancels the relay, so having sent
    ``[DONE]`` counts as complete). A stream that broke off or that the client left early is
    not recorded: ``incomplete`` is called instead."""

    def __init__(
        self,
        upstream: httpx.Response,
        exchange: Exchange | None,
        started: float,
        cap: int,
        record: Callable[[Exchange], Any],
        incomplete: Callable[[], None],
    ):
        self.upstream, self.exchange, self.started, self.cap = upstream, exchange, started, cap
        self.record, self.incomplete = record, incomplete
        self.kept, self.truncated, self.complete = bytearray(), False, False
        self.first: float | None = None
        self.finished = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.upstream.aiter_bytes():
                if self.first is None:
                    self.first = time.perf_counter()
                if len(self.kept) + len(chunk) <= self.cap:
                    self.kept += chunk
                else:
                    self.truncated = True
                if chunk.rstrip().endswith(DONE):
                    self.complete = True  # the client may leave as soon as it has this
                yield chunk
            self.complete = True
        except httpx.HTTPError as exc:
            log.warning("upstream stream broke off: %s", type(exc).__name__)
        finally:
            self.finish()
            await self.upstream.aclose()

    def finish(self) -> None:
        """Record the exchange (or count it incomplete), once."""
        if self.finished or self.exchange is None:
            return
        self.finished = True
        if not self.complete:
            self.incomplete()
            return
        exchange = self.exchange
        exchange.body, exchange.streamed = bytes(self.kept), True
        exchange.truncated_body = self.truncated
        exchange.latency_ms = (time.perf_counter() - self.started) * 1000
        if self.first is not None:
            exchange.extra["time_to_first_chunk_ms"] = f"{(self.first - self.started) * 1000:.1f}"
        self.record(exchange)
