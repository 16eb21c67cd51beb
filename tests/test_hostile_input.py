"""Hostile input end to end, on the real broker and store, with the real worker processes.

* Every kind of bad message in ``tests/hostile.py`` (random bytes, empty, another event type,
  truncated, unknown fingerprint, an oversized field, NaN, an infinite rating range, a bad
  replay marker, a blank id, an unknown enum symbol, a key that is not the trace, a year the
  store cannot hold) gets exactly one dead letter, whose reason names what is wrong, while two
  reward workers keep scoring every valid event, also after one of them is killed and its
  state restored.
* Feedback produced right after its interaction, ten thousand times, is merged every time.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from atlas.settings import Settings
from runtime.producer import EventProducer
from store.client import connect
from tests.factories import interaction
from tests.hostile import hostile_messages
from tests.workers import Observed, WorkerProcess, eventually


def test_each_bad_message_gets_one_dead_letter_and_valid_events_flow_on(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"hostile-{run}"
    rng = random.Random(3)
    valid = [interaction(rng, agent) for _ in range(400)]
    bad = hostile_messages(run, 39)
    raw = Producer({**kafka_config, "acks": "all"})
    store = connect(stack_settings.store())

    def stored() -> int:
        return store.query(
            "SELECT count() FROM latest_traces WHERE agent_id = {a:String}", parameters={"a": agent}
        ).result_rows[0][0]

    def lettered() -> int:
        return store.query(
            "SELECT uniqExact(key) FROM dead_letters WHERE startsWith(key, {run:String})",
            parameters={"run": f"{run}-bad-"},
        ).result_rows[0][0]

    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "rewards", "sink")]
    try:

        def send(events: list, hostile: list) -> None:  # type: ignore[type-arg]
            with EventProducer(kafka_config) as producer:
                for i, event in enumerate(events):
                    producer.record_interaction(event)
                    if i % 7 == 0 and i // 7 < len(hostile):
                        message = hostile[i // 7]
                        raw.produce(message.topic, key=message.key, value=message.value)
                assert raw.flush(30) == 0

        send(valid[:200], bad[:26])
        eventually(lambda: Observed(stored(), 200), 180, "200 valid traces stored", interval=2)
        workers[0].kill9()  # its partitions move to the other worker, state from the changelog
        send(valid[200:], bad[26:])
        eventually(lambda: Observed(stored(), 400), 240, "400 valid traces stored", interval=2)
        # Feedback and interactions are separate streams: valid traces all stored says nothing
        # about a bad feedback message still waiting in a partition the killed worker held.
        eventually(lambda: Observed(lettered(), len(bad)), 120, "a letter per bad message")
        alive = [w.process.poll() is None for w in workers[1:]]
    finally:
        for worker in workers:
            worker.stop()
    assert alive == [True, True], "a worker died of hostile input"

    letters = store.query(
        "SELECT key, count(), any(reason), groupUniqArray(processor) FROM dead_letters FINAL"
        " WHERE startsWith(key, {run:String}) GROUP BY key",
        parameters={"run": f"{run}-bad-"},
    ).result_rows
    by_key = {key: (count, reason, processors) for key, count, reason, processors in letters}
    print(f"\n{'kind':<24} processor  reason (as stored in dead_letters)")
    for message in bad[:13]:
        count, reason, processors = by_key.get(message.key.decode(), (0, "", []))
        print(f"{message.kind:<24} {','.join(processors):<10} {reason[:150]}")
    for message in bad:
        count, reason, _ = by_key.get(message.key.decode(), (0, "", []))
        assert count == 1, f"{message.kind}: {count} dead letters"
        assert message.reason in reason, f"{message.kind}: {reason!r}"
    not_finite = store.query(
        "SELECT count() FROM scored_traces WHERE NOT isFinite(reward)"
        " OR startsWith(agent_id, {bad:String})",
        parameters={"bad": f"hostile-{run}-bad-"},
    ).result_rows[0][0]
    assert not_finite == 0


def test_feedback_right_after_its_interaction_is_never_lost(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    """The race that lost 1-2% of fast feedback: the interaction is being judged when its
    feedback arrives. 10,000 pairs, each feedback sent right after its interaction."""
    agent = f"fast-{uuid.uuid4().hex[:8]}"
    rng = random.Random(8)
    events = [interaction(rng, agent) for _ in range(10_000)]
    store = connect(stack_settings.store())
    workers = [WorkerProcess(stack_settings, k, tmp_path) for k in ("rewards", "sink")]
    started = time.monotonic()
    try:
        with EventProducer(kafka_config) as producer:
            for event in events:
                producer.record_interaction(event)
                producer.record_feedback(event.trace_id, "approve", agent_id=agent)

        def merged() -> tuple[int, int]:
            return store.query(
                "SELECT count(), countIf(feedback_count = 1 AND human_score = 1)"
                " FROM latest_traces WHERE agent_id = {a:String}",
                parameters={"a": agent},
            ).result_rows[0]

        try:
            eventually(lambda: Observed(merged(), (10_000, 10_000)), 300, "10,000 merged pairs", 3)
        except AssertionError:
            stored, with_feedback = merged()
            raise AssertionError(
                f"{10_000 - with_feedback} of 10,000 feedback events not merged"
                f" ({stored} traces stored)"
            ) from None
    finally:
        for worker in workers:
            worker.stop()
    counts = merged()
    print(
        f"\n{counts[0]} traces stored, {counts[1]} with their feedback merged,"
        f" {time.monotonic() - started:.0f}s"
    )
