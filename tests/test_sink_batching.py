"""How the sink closes a batch: at ``batch_size`` messages, or ``linger_s`` after the first
message, so an event at a low rate waits at most the linger, not a fixed batch period."""

from __future__ import annotations

import threading
import time
from typing import Any

from consumers.sink import ClickHouseSink


class Arriving:
    """A message that is not an error."""

    def error(self) -> None:
        return None


class ScriptedConsumer:
    """Hands out the scripted message counts, one per consume() call, then nothing (waiting
    out the timeout, as Kafka's consumer does); records how long each call could wait."""

    def __init__(self, script: list[int]):
        self.script, self.timeouts, self.asked = list(script), [], []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.timeouts.append(timeout)
        self.asked.append(num_messages)
        count = min(self.script.pop(0), num_messages) if self.script else 0
        if count == 0:
            time.sleep(timeout)
        return [Arriving() for _ in range(count)]

    def assignment(self) -> list[Any]:  # the sink notes it for its lag metric
        return []

    def memberid(self) -> str:  # joined its group, for /ready
        return "member-1"


def sink_with(kafka_config: dict[str, str], consumer: ScriptedConsumer, **options: Any) -> Any:
    sink = ClickHouseSink(kafka_config, lambda: None, **options)  # type: ignore[arg-type,return-value]
    sink._consumer.close()
    sink._consumer = consumer  # type: ignore[assignment]
    return sink


def test_a_lone_event_waits_only_the_linger(kafka_config: dict[str, str]) -> None:
    consumer = ScriptedConsumer([0, 0, 1])  # two idle polls, then one event, then quiet
    sink = sink_with(kafka_config, consumer, batch_size=5000, linger_s=0.05)
    batch = sink._poll_batch(threading.Event())
    assert len(batch) == 1
    idle, after_first = consumer.timeouts[:3], consumer.timeouts[3:]
    assert idle == [0.5, 0.5, 0.5]  # no batch open: plain polls that watch for a stop
    # ... for one message: consume(n) would wait out its timeout for n of them
    assert consumer.asked[:3] == [1, 1, 1]
    assert after_first and sum(after_first) <= 0.05  # then at most the linger, in total


def test_a_busy_topic_fills_whole_batches(kafka_config: dict[str, str]) -> None:
    consumer = ScriptedConsumer([1, 1000, 1000, 499] * 2)
    sink = sink_with(kafka_config, consumer, batch_size=2500, linger_s=60)
    assert len(sink._poll_batch(threading.Event())) == 2500
    assert len(sink._poll_batch(threading.Event())) == 2500
    assert consumer.asked == [1, 1000, 1000, 499] * 2  # size closed both
