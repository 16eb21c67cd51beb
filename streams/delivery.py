"""Acknowledging a source event only after everything it produced is on Kafka.

Faust commits a partition's offset once every earlier event of it is acknowledged, and it
acknowledges an event as soon as the agent's loop moves past it, before the messages the event
caused (its scored trace, its table's changelog entry, its dead letter) are acknowledged by the
broker. ``Deliveries.hold`` takes one more reference on the source message and gives it back
when every one of those sends is confirmed, so a worker killed at any moment leaves the offset
before an event whose effects are not durable, and the next owner of the partition processes
it again (every effect is idempotent downstream).

A send that fails is retried (with backoff, forever, loudly): its partition's commit stops
there, the data keeps flowing, and nothing is acknowledged that did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import faust.streams

log = logging.getLogger(__name__)
Send = Callable[[], Awaitable["asyncio.Future[Any]"]]
MAX_RETRY_DELAY_S = 30.0


class Deliveries:
    def __init__(self) -> None:
        self.failed_sends = 0
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def retrying(self) -> int:
        return len(self._retries)

    async def hold(self, event: Any, sends: Sequence[Send]) -> None:
        """Start ``sends`` and keep ``event`` unacknowledged until each is delivered."""
        if not sends:
            return
        event.message.incref()
        remaining = len(sends)

        def settled() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                event.ack()

        for send in sends:
            try:
                future = await send()
            except Exception as exc:  # not even queued: the retry loop takes it from here
                self._failed(send, settled, repr(exc))
                continue
            self._watch(future, send, settled)

    def _watch(self, future: asyncio.Future[Any], send: Send, settled: Callable[[], None]) -> None:
        def done(finished: asyncio.Future[Any]) -> None:
            if not finished.cancelled() and finished.exception() is None:
                settled()
            else:
                error = "cancelled" if finished.cancelled() else repr(finished.exception())
                self._failed(send, settled, error)

        future.add_done_callback(done)

    def _failed(self, send: Send, settled: Callable[[], None], error: str) -> None:
        self.failed_sends += 1
        log.error("a send was not delivered (%s); retrying, its offset is held", error)
        task = asyncio.ensure_future(self._retry(send, settled))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, send: Send, settled: Callable[[], None]) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await (await send())
            except Exception as exc:  # the broker is away: keep the offset, keep trying
                self.failed_sends += 1
                log.error("retried send failed (%r); next try in %.0fs", exc, delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
            else:
                settled()
                return


@contextlib.contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event, as a table store expects when it is written.

    Inside ``take_events`` the current event is some other event of the batch, possibly of
    another partition; a persistent store (RocksDB keeps one database per partition) would put
    the key in the wrong partition's database."""
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)
