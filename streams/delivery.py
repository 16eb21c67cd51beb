"""Acknowledging a source event only after everything it produced is on Kafka, in order.

Faust commits a partition's offset once the events before it are acknowledged, and it
acknowledges an event as soon as the agent's loop moves past it, before the messages the event
caused (its scored trace, its table's changelog entry, its dead letter) are acknowledged by the
broker. ``Deliveries.hold`` takes one more reference on every source message and gives it back
when every one of its sends is confirmed, so a worker killed at any moment leaves the offset
before an event whose effects are not durable, and the next owner of the partition processes
it again (every effect is idempotent downstream).

Acknowledgements are given back in each partition's order: Faust does not look for a gap at
the head of a partition that has no committed offset yet, so acknowledging offset 3 while 0
is still in flight would let it commit past 0.

A send that fails is retried (with backoff, forever, loudly): its partition's commit stops
there, the data keeps flowing, and nothing is acknowledged that did not happen.

The other way Faust loses events (skipping messages around a rebalance) is closed by
``streams/contiguity.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import faust.streams

from schemas.codec import RegistryUnavailable

log = logging.getLogger(__name__)
Send = Callable[[], Awaitable["asyncio.Future[Any]"]]
MAX_RETRY_DELAY_S = 30.0
T = TypeVar("T")


@dataclass
class _Held:
    event: Any
    remaining: int


class Deliveries:
    def __init__(self) -> None:
        self.failed_sends = 0
        self._retries: set[asyncio.Task[None]] = set()
        self._held: dict[Any, deque[_Held]] = defaultdict(deque)  # per topic-partition

    @property
    def retrying(self) -> int:
        return len(self._retries)

    async def hold(self, event: Any, sends: Sequence[Send]) -> None:
        """Start ``sends`` and keep ``event`` unacknowledged until each is delivered and every
        earlier event of its partition is acknowledged. Call it for every event, also those
        that send nothing, so their acknowledgements keep their place in the order."""
        event.message.incref()
        tp = event.message.tp
        held = _Held(event, len(sends))
        self._held[tp].append(held)

        def settled() -> None:
            held.remaining -= 1
            if held.remaining == 0:
                self._release(tp)

        if not sends:
            self._release(tp)

        for send in sends:
            try:
                future = await send()
            except Exception as exc:  # not even queued: the retry loop takes it from here
                self._failed(send, settled, repr(exc))
                continue
            self._watch(future, send, settled)

    def _release(self, tp: Any) -> None:
        queue = self._held[tp]
        while queue and queue[0].remaining == 0:
            queue.popleft().event.ack()

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


async def patiently(step: Callable[[], T]) -> T:
    """``step()``, run again (with backoff, loudly) for as long as it raises
    RegistryUnavailable: a registry outage holds the stream, it never dead-letters the events
    that happened to arrive during it. ``step`` must be safe to repeat (it reads state afresh)."""
    delay = 0.5
    while True:
        try:
            return step()
        except RegistryUnavailable as exc:
            log.error("%s; retrying in %.1fs, the partition waits", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)


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
