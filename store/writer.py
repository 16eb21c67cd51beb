"""Batch inserts of events into the store, idempotent under replay.

Each event type maps to one table (a ScoredTrace to two: the trace and its judge scores). A
message of the compacted memory topic is a :class:`MemoryRow`, so that its tombstones (which
carry no event) are stored too, as deleted rows.
Inserts are columnar batches; with a ``dedup_token`` (the sink passes one per Kafka offset
range) a retried batch is dropped by ClickHouse instead of written twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext
from pydantic import TypeAdapter

from schemas.alerts import Alert
from schemas.models import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    JobStatus,
    MemoryEntry,
    PromptVersion,
    RetrainTrigger,
    ScoredTrace,
    Step,
)
from schemas.rollouts import RolloutStatus

# A trace's steps as the JSON of steps_json, written by pydantic's serializer (a third of
# json.dumps' time per trace; readers parse it, so its spacing is free).
STEPS_JSON = TypeAdapter(list[Step])

SCORED_TRACE_COLUMNS = [
    "trace_id",
    "revision",
    "agent_id",
    "created_at",
    "scored_at",
    "task_id",
    "task_family",
    "task_input",
    "reference",
    "mode",
    "prompt_versions",
    "models",
    "steps_json",
    "final_answer",
    "baseline_answer",
    "reward",
    "baseline_reward",
    "human_score",
    "uncertainty",
    "escalated",
    "rationale",
    "feedback_count",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "metadata",
    "event_id",
    "stored_at",
    "memory_entries",
    "memory_held_back",
    "rollouts",
    "rim_version",
    "production_answer",
    "production_reward",
]
JUDGE_SCORE_COLUMNS = [
    "trace_id",
    "revision",
    "agent_id",
    "created_at",
    "judge",
    "score",
    "uncertainty",
    "escalated",
    "samples",
    "error",
    "rationale",
]


MEMORY_COLUMNS = [*MemoryEntry.model_fields, "deleted", "version"]


@dataclass(frozen=True)
class MemoryRow:
    """One message of atlas.memory.v1 as the store keeps it: an entry, or (``entry`` None) the
    tombstone that deleted the entry under that key. ``version`` is the message's Kafka
    timestamp: the producer stamps messages in the topic's order, so the row with the highest
    version of a key is its current state (ReplacingMergeTree(version))."""

    agent_id: str
    role: str
    entry_id: str
    entry: MemoryEntry | None
    version: datetime

    @classmethod
    def of(cls, entry: MemoryEntry, version: datetime | None = None) -> MemoryRow:
        return cls(entry.agent_id, entry.role, entry.entry_id, entry, version or entry.created_at)

    def row(self) -> list[Any]:
        if self.entry is not None:
            return [*self.entry.model_dump().values(), 0, self.version]
        # a tombstone: the key, blank texts, created_at = when it was deleted, no retirement,
        # deleted = 1
        keyed = [self.agent_id, self.role, self.entry_id]
        retirement = [None, 0, None, None]
        return [*keyed, "", "", "", "", 0.0, [], self.version, *retirement, 1, self.version]


Stored = Event | MemoryRow


@dataclass(frozen=True)
class TableBatch:
    table: str
    columns: list[str]
    rows: list[list[Any]]


def _scored_trace_row(trace: ScoredTrace, stored_at: datetime) -> list[Any]:
    event = trace.interaction
    return [
        trace.trace_id,
        trace.revision,
        trace.agent_id,
        event.created_at,
        trace.scored_at,
        event.task_id,
        event.task_family or "",
        event.task_input,
        event.reference,
        event.mode,
        {ref.role: ref.version for ref in event.prompt_versions},
        event.models,
        STEPS_JSON.dump_json(event.steps).decode(),
        event.final_answer,
        event.baseline_answer,
        trace.reward,
        trace.baseline_reward,
        trace.human_score,
        trace.uncertainty,
        trace.escalated,
        trace.rationale,
        trace.feedback_count,
        trace.errors,
        event.usage.prompt_tokens,
        event.usage.completion_tokens,
        event.latency_ms,
        event.metadata,
        event.event_id,
        stored_at,
        event.memory_entries,
        event.memory_held_back,
        [
            (a.role, a.rollout_id, a.arm, a.canary_version, a.production_version)
            for a in event.rollouts
        ],
        trace.rim_version,
        event.production_answer,
        trace.production_reward,
    ]


def _judge_rows(trace: ScoredTrace) -> Iterable[list[Any]]:
    created = trace.interaction.created_at
    for score in trace.judge_scores:
        yield [
            trace.trace_id,
            trace.revision,
            trace.agent_id,
            created,
            score.judge,
            score.score,
            score.uncertainty,
            score.escalated,
            score.samples,
            score.error,
            score.rationale,
        ]


def _fields_row(columns: list[str]) -> Callable[[Event], list[Any]]:
    def row(event: Event) -> list[Any]:
        values = event.model_dump()
        if isinstance(event, FeedbackEvent):
            values["agent_id"] = values["agent_id"] or ""
        return [values[column] for column in columns]

    return row


# Tables whose columns are exactly the event's fields.
PLAIN_TABLES: dict[type[Event], str] = {
    FeedbackEvent: "feedback",
    PromptVersion: "prompt_versions",
    CheckpointEvent: "checkpoints",
    RetrainTrigger: "triggers",
    JobStatus: "jobs",
    DeadLetter: "dead_letters",
    RolloutStatus: "rollout_statuses",
    Alert: "alerts",
}


def batches_for(events: Sequence[Stored], stored_at: datetime | None = None) -> list[TableBatch]:
    """The events as rows per table; a scored trace's ``stored_at`` is the time of the
    insert (now, unless given)."""
    stored_at = stored_at or datetime.now(UTC)
    by_table: dict[str, TableBatch] = {}

    def batch(table: str, columns: list[str]) -> TableBatch:
        if table not in by_table:
            by_table[table] = TableBatch(table, columns, [])
        return by_table[table]

    grouped: dict[type[Stored], list[Stored]] = defaultdict(list)
    for event in events:
        grouped[type(event)].append(event)
    for event_type, group in grouped.items():
        if event_type in (MemoryRow, MemoryEntry):
            memory = batch("memory_entries", MEMORY_COLUMNS)
            for item in group:
                if isinstance(item, MemoryEntry):
                    item = MemoryRow.of(item)
                assert isinstance(item, MemoryRow)
                memory.rows.append(item.row())
        elif event_type is ScoredTrace:
            traces = batch("scored_traces", SCORED_TRACE_COLUMNS)
            judges = batch("judge_scores", JUDGE_SCORE_COLUMNS)
            for trace in group:
                assert isinstance(trace, ScoredTrace)
                traces.rows.append(_scored_trace_row(trace, stored_at))
                judges.rows.extend(_judge_rows(trace))
        elif event_type in PLAIN_TABLES:
            columns = list(event_type.model_fields)
            to_row = _fields_row(columns)
            target = batch(PLAIN_TABLES[event_type], columns)
            target.rows.extend(to_row(event) for event in group)
        else:
            raise TypeError(
                f"no table stores a bare {event_type.__name__}; interactions are stored"
                " inside the ScoredTrace that scores them"
            )
    return [b for b in by_table.values() if b.rows]


class StoreWriter:
    """Writes events in batches of at most ``batch_size`` rows per insert.

    A writer keeps one insert context per table (the column types, asked of the store once):
    without it every insert costs an extra round trip to describe the table."""

    def __init__(self, client: Client, batch_size: int = 50_000):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.client = client
        self.batch_size = batch_size
        self._contexts: dict[str, InsertContext] = {}

    def write(self, events: Sequence[Stored], dedup_token: str | None = None) -> int:
        """Insert the events; with ``dedup_token`` a repeated call with the same events and
        token writes nothing the second time. Returns the number of rows sent."""
        sent = 0
        for table_batch in batches_for(events):
            context = self._context(table_batch)
            for start in range(0, len(table_batch.rows), self.batch_size):
                chunk = table_batch.rows[start : start + self.batch_size]
                # On a cluster the tables written are Distributed: return only once the shards
                # hold the rows (the sink commits offsets after this); one server ignores it.
                context.settings = {"insert_distributed_sync": 1}
                if dedup_token is not None:
                    context.settings["insert_deduplication_token"] = (
                        f"{dedup_token}:{table_batch.table}:{start}"
                    )
                self.client.insert(data=chunk, context=context)
                sent += len(chunk)
        return sent

    def _context(self, table_batch: TableBatch) -> InsertContext:
        context = self._contexts.get(table_batch.table)
        if context is None or context.column_names != table_batch.columns:
            context = self.client.create_insert_context(
                table_batch.table, column_names=table_batch.columns
            )
            self._contexts[table_batch.table] = context
        return context
