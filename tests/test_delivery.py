"""An event is acknowledged only once everything it produced is delivered, and after every
earlier event of its partition; a failed send is retried and holds the acknowledgement until it
succeeds (the Kafka path is in the stream e2e and fault tests)."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.delivery import Deliveries


class Message:
    def __init__(self, partition: int = 0) -> None:
        self.refs, self.tp = 1, ("atlas.interactions.v1", partition)

    def incref(self) -> None:
        self.refs += 1


class Event:
    def __init__(self, partition: int = 0) -> None:
        self.message, self.acks = Message(partition), 0

    def ack(self) -> None:
        self.acks += 1


def test_ack_waits_for_every_send_and_retries_a_failed_one() -> None:
    async def scenario() -> tuple[list[int], int, int]:
        loop = asyncio.get_running_loop()
        first, second, retried = loop.create_future(), loop.create_future(), loop.create_future()
        attempts = {"second": 0}

        async def send_first() -> asyncio.Future[Any]:
            return first

        async def send_second() -> asyncio.Future[Any]:
            attempts["second"] += 1
            return second if attempts["second"] == 1 else retried

        event, deliveries = Event(), Deliveries()
        await deliveries.hold(event, [send_first, send_second])
        seen = [event.acks]
        first.set_result("ok")
        await asyncio.sleep(0)
        seen.append(event.acks)  # one of two delivered: not yet
        second.set_exception(RuntimeError("broker away"))
        await asyncio.sleep(0.6)  # the retry runs after its backoff
        seen.append(event.acks)  # the retry's send is still in flight
        retried.set_result("ok")
        await asyncio.sleep(0.01)
        seen.append(event.acks)
        return seen, event.message.refs, deliveries.failed_sends

    seen, refs, failures = asyncio.run(scenario())
    assert seen == [0, 0, 0, 1]
    assert refs == 2 and failures == 1


def test_a_send_that_raises_before_queueing_is_retried() -> None:
    async def scenario() -> int:
        calls = {"n": 0}

        async def flaky() -> asyncio.Future[Any]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BufferError("queue full")
            done = asyncio.get_running_loop().create_future()
            done.set_result("ok")
            return done

        event = Event()
        await Deliveries().hold(event, [flaky])
        await asyncio.sleep(0.7)
        return event.acks

    assert asyncio.run(scenario()) == 1


def test_acknowledgements_keep_each_partitions_order() -> None:
    """Faust would commit past an unacknowledged head of a partition with no committed offset:
    a later event delivered first waits for the earlier one; other partitions do not."""

    async def scenario() -> list[tuple[int, int, int]]:
        loop = asyncio.get_running_loop()
        slow = loop.create_future()

        async def send_slow() -> asyncio.Future[Any]:
            return slow

        first, second, other = Event(0), Event(0), Event(1)
        deliveries = Deliveries()
        await deliveries.hold(first, [send_slow])
        await deliveries.hold(second, [])  # nothing to send: still after `first`
        await deliveries.hold(other, [])
        seen = [(first.acks, second.acks, other.acks)]
        slow.set_result("ok")
        await asyncio.sleep(0)
        seen.append((first.acks, second.acks, other.acks))
        return seen

    assert asyncio.run(scenario()) == [(0, 0, 1), (1, 1, 1)]
