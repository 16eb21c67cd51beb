"""What the tracing SDK adds to each recorded call, in one run: a no-op function called bare
and the same function under ``@traced`` (and in a ``record`` block), interleaved (bare,
traced, bare, ...) so both see the same machine, with p50/p99 of each and of the added time
per pair; sync and async.

    .venv/bin/python benchmarks/sdk.py [--calls 20000] [--kafka]

Recording goes to the local stack's Kafka with ``--kafka`` (`atlas up` first), else to an
in-memory producer; either way events are built and produced on the recorder's thread, which
shares the machine (and the GIL) with the timed calls, as it does in an agent. The queue is
sized to hold every call, so nothing is dropped (the figures would flatter a full queue).
Recording as fast as a loop can call is the worst case for the tail: the recorder's thread
builds events all the time and a timed call may wait for the GIL (up to Python's 5 ms switch
interval), which p99.9 and the mean show; an agent waiting on a model records far fewer,
as the paced run (1 ms between pairs) shows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.proxy import NullProducer, percentile
from runtime.recorder import Recorder, open_recorder
from runtime.tracing import Tracer, trace_event, traced


def row(name: str, micros: list[float]) -> str:
    return (
        f"{name:<32} p50 {percentile(micros, 0.5):7.2f} µs  p99 {percentile(micros, 0.99):7.2f}"
        f" µs  p99.9 {percentile(micros, 0.999):8.1f} µs  mean {statistics.fmean(micros):7.2f} µs"
    )


def interleaved(
    bare: Callable[[], Any], wrapped: Callable[[], Any], n: int, pace_s: float = 0.0
) -> list[list[float]]:
    """Per-call µs of ``bare``, of ``wrapped``, and of each pair's difference; ``pace_s``
    apart (an agent's model call, during which the recorder's thread gets the GIL)."""
    times: list[list[float]] = [[], [], []]
    clock = time.perf_counter
    for _ in range(n):
        if pace_s:
            time.sleep(pace_s)
        started = clock()
        bare()
        middle = clock()
        wrapped()
        ended = clock()
        times[0].append((middle - started) * 1e6)
        times[1].append((ended - middle) * 1e6)
        times[2].append(times[1][-1] - times[0][-1])
    return times


async def interleaved_async(bare: Any, wrapped: Any, n: int) -> list[list[float]]:
    times: list[list[float]] = [[], [], []]
    clock = time.perf_counter
    for _ in range(n):
        started = clock()
        await bare()
        middle = clock()
        await wrapped()
        ended = clock()
        times[0].append((middle - started) * 1e6)
        times[1].append((ended - middle) * 1e6)
        times[2].append(times[1][-1] - times[0][-1])
    return times


def report(title: str, times: list[list[float]]) -> None:
    print(title)
    print(row("  bare function", times[0]))
    print(row("  traced", times[1]))
    print(row("  added per call (traced - bare)", times[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--kafka", action="store_true", help="record to the local stack's Kafka")
    args = parser.parse_args()
    capacity = 4 * args.calls + 10
    if args.kafka:
        from atlas.settings import Settings

        settings = Settings()
        recorder = open_recorder(
            settings.kafka_config("agent"), settings.codec(), capacity=capacity, convert=trace_event
        )
    else:
        recorder = Recorder(NullProducer, capacity, convert=trace_event).start()
    tracer = Tracer("benchmark-sdk", recorder)

    def noop(question: str) -> str:
        return question

    async def anoop(question: str) -> str:
        return question

    traced_noop = traced(noop, lambda: tracer)
    traced_anoop = traced(anoop, lambda: tracer)

    def in_block() -> str:
        with tracer.record("q") as trace:
            trace.output = "a"
        return "a"

    warm = max(100, args.calls // 20)
    interleaved(lambda: noop("q"), lambda: traced_noop("q"), warm)
    print(
        f"{args.calls} calls each, interleaved; recording to {'Kafka' if args.kafka else 'memory'}"
    )
    report(
        "sync @traced no-op", interleaved(lambda: noop("q"), lambda: traced_noop("q"), args.calls)
    )
    report("sync record() block", interleaved(lambda: noop("q"), in_block, args.calls))
    paced = interleaved(lambda: noop("q"), lambda: traced_noop("q"), args.calls // 10, 0.001)
    report(f"sync @traced no-op, {args.calls // 10} pairs 1 ms apart (an agent's pace)", paced)
    report(
        "async @traced no-op",
        asyncio.run(interleaved_async(lambda: anoop("q"), lambda: traced_anoop("q"), args.calls)),
    )
    started = time.perf_counter()
    tracer.close(60)
    stats = tracer.stats()
    print(
        f"recorder: {stats['recorded']} recorded, {stats['delivered']} delivered,"
        f" {stats['dropped']} dropped, {stats['invalid']} invalid;"
        f" close (drain + flush) took {time.perf_counter() - started:.2f}s"
    )


if __name__ == "__main__":
    main()
