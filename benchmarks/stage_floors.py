"""What each worker stage costs per event in its own code, with no Kafka, no store and no
other process: the most one worker can do on one core, whatever the plumbing around it.

    .venv/bin/python benchmarks/stage_floors.py [--events 20000]

(`benchmarks/pipeline.py` prints the same lines beside the stages it measures.)

* reward: decode an interaction (Avro + validation), the programmatic judges over a batch,
  apply the judgement to a fresh trace state, encode the scored trace (reusing the
  interaction's bytes, as the worker does) and the state: the
  reward worker's per-event work for a new trace, without transactions, state-table reads or
  the policy and memory outputs (so a floor of its cost, not all of it);
* sink: decode a scored trace and turn it into its rows (the store's insert is measured
  separately, as the raw insert).

Each part is timed with ``time.process_time`` (this process's CPU), so the figures hold on a
busy machine too; events/s = 1 / (sum of the parts' seconds per event).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from atlas.commands.workers import batch_friendly_gc
from atlas.settings import PROJECT_CONFIGS
from rim.config import build_rim, load_rim_config
from schemas.codec import AvroCodec
from schemas.models import InteractionEvent, ScoredTrace
from store.writer import batches_for
from streams.processor import RewardProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.factories import interaction, scored

BATCH = 500  # the reward worker's default batch


class Parts:
    """CPU seconds per named part, summed over the batches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.process_time()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.process_time() - started

    def per_event_us(self, events: int) -> dict[str, float]:
        return {name: seconds / events * 1e6 for name, seconds in self.seconds.items()}


def reward_floor(events: int) -> dict[str, float]:
    """CPU µs per event of each part of the reward worker's work for a new trace."""
    codec, rng = AvroCodec(), random.Random(7)
    processor = RewardProcessor(build_rim(load_rim_config(PROJECT_CONFIGS)))
    payload = [codec.encode(interaction(rng)) for _ in range(events)]
    parts = Parts()
    for start in range(0, events, BATCH):
        with parts.part("decode"):
            decoded = [codec.decode(d, InteractionEvent) for d in payload[start : start + BATCH]]
        with parts.part("judge"):
            judged = processor.judge(decoded)
        with parts.part("apply"):
            outcomes = [
                processor.on_interaction(e, None, j) for e, j in zip(decoded, judged, strict=True)
            ]
        with parts.part("encode"):
            for data, event, outcome in zip(
                payload[start : start + BATCH], decoded, outcomes, strict=True
            ):
                body = codec.current_body(data, InteractionEvent)  # as the worker reuses it
                codec.encode_reusing(outcome.scored, "interaction", event, body)
                outcome.state.to_bytes()
    return parts.per_event_us(events)


def sink_floor(events: int) -> dict[str, float]:
    """CPU µs per event of the sink's decoding and row building."""
    codec, rng = AvroCodec(), random.Random(8)
    payload = [codec.encode(scored(interaction(rng), rng)) for _ in range(events)]
    parts = Parts()
    for start in range(0, events, BATCH):
        with parts.part("decode"):
            decoded = [codec.decode(d, ScoredTrace) for d in payload[start : start + BATCH]]
        with parts.part("rows"):
            batches_for(decoded)
    return parts.per_event_us(events)


def floor_lines(events: int) -> list[str]:
    """One line per stage: its in-process ceiling in events/s and where the time goes, with
    the garbage collector tuned as in the workers."""
    batch_friendly_gc()
    lines = []
    for stage, parts in (("reward", reward_floor(events)), ("sink", sink_floor(events))):
        total = sum(parts.values())
        split = ", ".join(f"{name} {us:.0f} µs" for name, us in parts.items())
        lines.append(
            f"{stage} work in-process, no Kafka (one core's ceiling): {1e6 / total:9.0f} events/s"
            f"   ({total:.0f} µs/event: {split})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    print("\n".join(floor_lines(args.events)))


if __name__ == "__main__":
    main()
