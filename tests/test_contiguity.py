"""The contiguity guard finds the offsets a consumer skipped and reads them (the Kafka path is
proven by tests/test_faults.py and the fault suite)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.contiguity import ContiguityGuard, RawMessage, Stall


@dataclass
class Seen:
    topic: str
    partition: int
    offset: int
    generation_id: int


class FakeReader:
    def __init__(self, committed: int, end: int = 0):
        self.committed, self.end, self.reads = committed, end, []  # type: ignore[var-annotated]
        self.lookups = 0

    def end_of(self, topic: str, partition: int) -> int:
        return self.end

    def start_of(self, topic: str, partition: int) -> int:
        self.lookups += 1
        return self.committed

    def read(self, topic: str, partition: int, start: int, stop: int) -> list[RawMessage]:
        self.reads.append((partition, start, stop))
        return [RawMessage(topic, partition, o, b"k", b"v%d" % o) for o in range(start, stop)]


def test_gaps_are_read_back_in_order_and_only_once() -> None:
    reader = FakeReader(committed=0)
    guard = ContiguityGuard(reader)

    def missed(offset: int, partition: int = 0, generation: int = 1) -> list[int]:
        found = asyncio.run(guard.missed(Seen("t", partition, offset, generation))).missed
        return [e.message.offset for e in found]

    assert missed(5) == [0, 1, 2, 3, 4]  # a fresh partition's head, skipped
    assert missed(6) == []
    assert missed(9) == [7, 8]  # a jump within a generation
    assert missed(3) == []  # a redelivery after a seek back: processed again, no gap
    assert missed(10) == []
    assert missed(0, partition=1) == []  # another partition starts at its committed offset
    reader.committed = 12
    assert missed(12, generation=2) == []  # a new generation starts from the committed offset
    assert reader.reads == [(0, 0, 5), (0, 7, 9)] and guard.recovered == 7


def test_a_tail_never_delivered_is_swept_once_and_its_late_delivery_is_a_repeat() -> None:
    reader = FakeReader(committed=0, end=8)
    now = [100.0]
    guard = ContiguityGuard(reader, clock=lambda: now[0])
    ours = [("t", 0)]

    def arrive(offset: int, generation: int = 1) -> tuple[list[int], bool]:
        arrival = asyncio.run(guard.missed(Seen("t", 0, offset, generation)))
        return [e.message.offset for e in arrival.missed], arrival.repeat

    def stalled(generation: int = 1) -> list[Stall]:
        return asyncio.run(guard.stalled(ours, generation, quiet_s=10))

    for offset in range(6):  # Faust delivers 0..5, then never 6 and 7
        assert arrive(offset) == ([], False)
    assert stalled() == []  # behind: the quiet period starts now
    now[0] += 9.9
    assert stalled() == []
    now[0] += 0.1
    [stall] = stalled()
    assert (stall.tp, stall.start, stall.end) == (("t", 0), 6, 8)
    swept = asyncio.run(guard.sweep(stall, limit=1))  # bounded by the limit
    assert [e.message.offset for e in swept] == [6] and reader.reads == [(0, 6, 7)]
    assert arrive(6) == ([], True)  # Faust delivers it late after all: acknowledged only
    assert stalled() == []  # 7 is still missing: a new quiet period
    now[0] += 10
    [stall] = stalled()
    assert [e.message.offset for e in asyncio.run(guard.sweep(stall, limit=64))] == [7]
    reader.end = 12  # more arrive and Faust delivers nothing: each pass reads on, no new wait
    [stall] = stalled()
    assert [e.message.offset for e in asyncio.run(guard.sweep(stall, limit=2))] == [8, 9]
    [stall] = stalled()
    assert [e.message.offset for e in asyncio.run(guard.sweep(stall, limit=2))] == [10, 11]
    assert arrive(7) == ([], True) and arrive(6) == ([], True) and arrive(11) == ([], True)
    assert stalled() == []  # caught up
    assert guard.recovered == 6 and guard.repeats == 4

    reader.end = 14  # two more arrive; Faust delivers one before the quiet period ends
    assert stalled() == []
    assert arrive(12) == ([], False)
    now[0] += 10
    assert stalled() == []  # it moved: the quiet period starts again at 13
    now[0] += 10
    [stall] = stalled()
    assert arrive(13) == ([], False)  # delivered between the stall and its sweep
    assert asyncio.run(guard.sweep(stall, limit=64)) == []  # nothing read twice

    reader.committed = 6  # a new generation: what was swept before is processed again
    assert arrive(6, generation=2) == ([], False)
    assert reader.reads[-1] == (0, 10, 12)


def test_a_partition_nothing_was_delivered_of_looks_up_its_committed_offset_once() -> None:
    reader = FakeReader(committed=5, end=5)
    guard = ContiguityGuard(reader)
    for _ in range(3):
        assert asyncio.run(guard.stalled([("t", 0)], generation=1, quiet_s=10)) == []
    assert reader.lookups == 1
    asyncio.run(guard.stalled([("t", 0)], generation=2, quiet_s=10))
    assert reader.lookups == 2  # a new generation starts from the committed offset again
