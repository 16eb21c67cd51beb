"""Finding secrets in everything the product wrote: every message on every topic (keys, values,
headers), files under a folder, every table of the store."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition


def everything_on(kafka_config: dict[str, str], topics: list[str]) -> bytes:
    consumer = Consumer({**kafka_config, "group.id": f"grep-{uuid.uuid4().hex}"})
    metadata = consumer.list_topics(timeout=10).topics
    assigned, ends = [], {}
    for topic in topics:
        for partition in metadata[topic].partitions:
            tp = TopicPartition(topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > low:
                assigned.append(TopicPartition(topic, partition, low))
                ends[(topic, partition)] = high
    consumer.assign(assigned)
    seen: list[bytes] = []
    deadline = time.monotonic() + 120
    while ends and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            seen += [message.key() or b"", message.value() or b""]
            seen += [value or b"" for _, value in message.headers() or []]
        # positions, not the last message's offset: transaction markers take offsets too
        for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
            if tp.offset >= ends[(tp.topic, tp.partition)]:
                ends.pop((tp.topic, tp.partition))
    consumer.close()
    assert not ends, f"could not read every topic to its end: {sorted(ends)}"
    return b"\n".join(seen)


def files_under(root: Path, skip: set[str]) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] not in skip:
            found[str(relative)] = path.read_bytes()
    return found


def tables_of(store: Any) -> dict[str, bytes]:
    return {
        f"table {table}": store.raw_query(f"SELECT * FROM {table} FORMAT TSVRaw")
        for (table,) in store.query("SHOW TABLES").result_rows
    }


def leaks_of(secrets: list[str], written: dict[str, bytes]) -> list[str]:
    """Where (which output) any of ``secrets`` appears."""
    return [where for where, data in written.items() for s in secrets if s.encode() in data]
