"""The contiguity guard finds the offsets a consumer skipped and reads them (the Kafka path is
proven by tests/test_faults.py and the fault suite)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.contiguity import ContiguityGuard, RawMessage


@dataclass
class Seen:
    topic: str
    partition: int
    offset: int
    generation_id: int


class FakeReader:
    def __init__(self, committed: int):
        self.committed, self.reads = committed, []  # type: ignore[var-annotated]

    def start_of(self, topic: str, partition: int) -> int:
        return self.committed

    def read(self, topic: str, partition: int, start: int, stop: int) -> list[RawMessage]:
        self.reads.append((partition, start, stop))
        return [RawMessage(topic, partition, o, b"k", b"v%d" % o) for o in range(start, stop)]


def test_gaps_are_read_back_in_order_and_only_once() -> None:
    reader = FakeReader(committed=0)
    guard = ContiguityGuard(reader)

    def missed(offset: int, partition: int = 0, generation: int = 1) -> list[int]:
        found = asyncio.run(guard.missed(Seen("t", partition, offset, generation)))
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
