"""The sink on the real broker and store when the store is up but refuses one event: the batch
is split until that event is found, it is dead-lettered with the store's reason, every other
event of the batch is stored, and the partition moves on."""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Producer

from atlas.settings import Settings
from consumers.sink import ClickHouseSink, expiry_warnings
from schemas.codec import AvroCodec
from schemas.topics import DEADLETTER, REWARDS
from store.client import connect
from tests.factories import interaction, scored
from tests.workers import Observed, eventually


class RefusingStore:
    """The real store, except that it refuses any insert holding ``poison`` (as ClickHouse
    refuses a value its column cannot hold)."""

    def __init__(self, client: Any, poison: str):
        self.client, self.poison, self.refusals = client, poison, 0

    def insert(self, data: list[list[Any]], context: Any) -> Any:
        if any(self.poison in row for row in data):
            self.refusals += 1
            raise DatabaseError(f"Code: 53. Type mismatch in a row of {context.table.strip('`')}")
        return self.client.insert(data=data, context=context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_one_event_the_store_refuses_is_dead_lettered_and_the_rest_stored(
    stack_settings: Settings, kafka_config: dict[str, str]
) -> None:
    agent = f"poison-{uuid.uuid4().hex[:8]}"
    rng = random.Random(4)
    traces = [scored(interaction(rng, agent), rng) for _ in range(40)]
    poison = traces[17].trace_id
    codec = AvroCodec()
    producer = Producer({**kafka_config, "acks": "all"})
    for trace in traces:
        producer.produce(REWARDS, key=trace.trace_id.encode(), value=codec.encode(trace))
    assert producer.flush(30) == 0

    url = stack_settings.store()
    store = RefusingStore(connect(url), poison)
    sink = ClickHouseSink(
        kafka_config,
        lambda: store,
        topics=[REWARDS, DEADLETTER],
        group_id=f"poison-{agent}",
        batch_size=1000,
    )
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    check = connect(url)
    try:

        def stored() -> int:
            return check.query(
                "SELECT count() FROM latest_traces WHERE agent_id = {a:String}",
                parameters={"a": agent},
            ).result_rows[0][0]

        eventually(lambda: Observed(stored(), 39), 120, "the 39 other traces stored", interval=1)
        letter = eventually(
            lambda: (
                check.query(
                    "SELECT reason, error_type, processor FROM dead_letters FINAL"
                    " WHERE source_topic = {t:String} AND key = {k:String}",
                    parameters={"t": REWARDS, "k": poison},
                ).result_rows
            ),
            60,
            "the refused trace's dead letter",
        )
    finally:
        stop.set()
        thread.join(30)
    assert letter == [
        (
            "the store refused the event: DatabaseError: Code: 53. Type mismatch in a row of"
            " scored_traces",
            "StoreRefused",
            "sink",
        )
    ]
    assert sink.stats.refused == 1 and store.refusals >= 2  # found by halving the batch


def test_the_sink_says_loudly_before_its_topics_expire_what_it_holds() -> None:
    hour = 3.6e6
    now = 100 * hour
    oldest = {REWARDS: now - 90 * hour, DEADLETTER: now - 2 * hour}
    retention = {REWARDS: int(168 * hour), DEADLETTER: int(720 * hour)}
    assert expiry_warnings(oldest, retention, now) == [
        f"the store is unavailable and the oldest unstored event of {REWARDS} is 90.0h old;"
        " the topic keeps events 168.0h: they start to expire in 78.0h unless the store comes"
        " back"
    ]
    assert expiry_warnings(oldest, {REWARDS: -1}, now) == []  # kept forever


def test_only_a_refusal_of_the_rows_splits_a_batch() -> None:
    """A pooled connection the server closed, an overloaded or misconfigured store: the batch is
    kept and retried whole; only the store refusing a value splits it (and dead-letters one)."""
    from clickhouse_connect.driver.exceptions import OperationalError

    from store.errors import refused_by_store

    assert refused_by_store(DatabaseError("Code: 53. Type mismatch in a row"))
    assert refused_by_store(ValueError("a value the writer cannot convert"))
    for transient in (
        OperationalError("Error RemoteDisconnected executing HTTP request attempt 1"),
        DatabaseError("Received ClickHouse exception, code: 516, server response: auth failed"),
        DatabaseError("Received ClickHouse exception, code: 241, server response: memory"),
        DatabaseError("Received ClickHouse exception, code: 1001, server response: internal"),
        ConnectionResetError(104, "Connection reset by peer"),
    ):
        assert not refused_by_store(transient), transient
