"""Read queries over the demonstration memory's rows: the entries as operators list them, and
what one entry does to the tasks like it (ClickHouse's own string similarity)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from store.queries import rows_as_dicts


@dataclass(frozen=True)
class StoredMemoryEntry:
    """A row of ``memory_entries`` in its current state (FINAL): a live entry, or (``deleted``)
    the tombstone that removed it, whose texts are blank and whose ``created_at`` is when it
    was removed."""

    agent_id: str
    role: str
    entry_id: str
    input: str
    output: str
    source: str
    source_trace_id: str
    reward: float
    terms: list[str]
    created_at: Any
    deleted: bool
    # Set when the memory retired the entry (MemoryEntry v2), with the figures that did.
    retired_reason: str | None = None
    uses: int = 0
    reward_when_used: float | None = None
    reward_when_not_used: float | None = None

    @property
    def retired(self) -> bool:
        return self.retired_reason is not None


MEMORY_ENTRIES = """
SELECT agent_id, role, entry_id, input, output, source, source_trace_id, reward, terms,
       created_at, deleted, retired_reason, uses, reward_when_used, reward_when_not_used
FROM memory_entries FINAL
WHERE agent_id = {agent:String}
  AND ({role:String} = '' OR role = {role:String})
  AND startsWith(entry_id, {prefix:String})
  AND ({deleted:UInt8} = 1 OR NOT deleted)
  AND ({retired:UInt8} = 1 OR retired_reason IS NULL)
ORDER BY created_at DESC, entry_id
LIMIT {limit:UInt32}
"""


def memory_entries(
    client: Client,
    agent: str,
    role: str = "",
    *,
    prefix: str = "",
    include_deleted: bool = False,
    include_retired: bool | None = None,
    limit: int = 10_000,
) -> list[StoredMemoryEntry]:
    """The agent's memory entries as the store has them now, newest first: live ones (every
    role if ``role`` is empty), with ``include_deleted`` also the tombstoned, with
    ``include_retired`` (by default as ``include_deleted``) the retired; with ``prefix``
    only those whose entry id starts with it (callers validate it: it is a parameter, never
    spliced into the SQL)."""
    parameters = {
        "agent": agent,
        "role": role,
        "prefix": prefix,
        "deleted": int(include_deleted),
        "retired": int(include_deleted if include_retired is None else include_retired),
        "limit": limit,
    }
    return [
        StoredMemoryEntry(
            **{
                **row,
                "reward": float(row["reward"]),
                "deleted": bool(row["deleted"]),
                "uses": int(row["uses"]),
            }
        )
        for row in rows_as_dicts(client, MEMORY_ENTRIES, parameters)
    ]


@dataclass(frozen=True)
class SimilarTrace:
    """A trace near a memory entry: its task input's distance to the entry's input (0 to 1,
    ClickHouse's ``ngramDistanceCaseInsensitiveUTF8``), its reward, and whether the entry was
    ``shown`` to it, ``held back`` from it, or ``neither``."""

    trace_id: str
    created_at: Any
    task_input: str
    distance: float
    reward: float
    status: str


@dataclass(frozen=True)
class StatusMean:
    """The similar traces of one status: how many, their mean distance and mean reward (both
    None when there are none)."""

    status: str
    traces: int
    mean_distance: float | None
    mean_reward: float | None


# The statuses of ``MEMORY_SIMILAR``, in the order a summary gives them.
SIMILAR_STATUSES = ("shown", "held back", "neither")


@dataclass(frozen=True)
class SimilarTraces:
    """``MEMORY_SIMILAR``'s answer: the nearest traces, nearest first, and one mean per
    status in ``SIMILAR_STATUSES`` order (every status, with 0 traces where none)."""

    traces: list[SimilarTrace]
    means: list[StatusMean]


# What one memory entry does to tasks like it (the operator's offline view, issue 16): the
# {limit:UInt32} traces of the entry's agent whose task input is nearest to the entry's input
# by ClickHouse's own string similarity, each with its distance, reward and status, then one
# 'mean' row per status present among them: how many, their mean distance and mean reward.
# distance: ngramDistanceCaseInsensitiveUTF8(task_input, entry input), in [0, 1], 0 for the
#   same 3-grams: case-folded 3-grams of code points (so non-ASCII text is compared by
#   character). On the built-in tasks it ranks as well as the 4-gram byte version
#   (ngramDistanceCaseInsensitive), precision@3 1.000 both (benchmarks/memory_retrieval.py).
#   A text over 32 KiB gets distance 1 (measured): such traces come last, and an entry's
#   input that long leaves the order to recency.
# status, from the trace's latest revision:
#   'shown'     the agent put the entry before the task (has(memory_entries, id));
#   'held back' it matched the task but the randomized holdout kept it from it
#               (has(memory_held_back, id));
#   'neither'   neither: the entry did not match, memory was off, or the trace is older than
#               the entry. So 'held back' is the fair comparison for 'shown'.
# The entry is the key's current row in memory_entries (retired entries included, tombstones
# not); its source trace is left out (distance 0, and it made the entry). No rows at all when
# the agent has no such entry. Ties in distance: newest trace first, then trace id.
# Parameters: {agent:String}, {role:String} ('' = any role), {entry_id:String} (the full id),
# {limit:UInt32}.
MEMORY_SIMILAR = """
WITH
    entry AS (
        SELECT entry_id, input, source_trace_id
        FROM memory_entries FINAL
        WHERE agent_id = {agent:String} AND entry_id = {entry_id:String}
          AND ({role:String} = '' OR role = {role:String}) AND NOT deleted
        LIMIT 1
    ),
    nearest AS (
        SELECT t.trace_id AS trace_id, t.created_at AS created_at, t.task_input AS task_input,
               ngramDistanceCaseInsensitiveUTF8(t.task_input, e.input) AS distance,
               t.reward AS reward,
               multiIf(has(t.memory_entries, e.entry_id), 'shown',
                       has(t.memory_held_back, e.entry_id), 'held back',
                       'neither') AS status
        FROM latest_traces AS t
        CROSS JOIN entry AS e
        WHERE t.agent_id = {agent:String} AND t.trace_id != e.source_trace_id
        ORDER BY distance, created_at DESC, trace_id
        LIMIT {limit:UInt32}
    )
SELECT row, trace_id, created_at, task_input, distance, reward, status, traces
FROM (
    SELECT 'trace' AS row, trace_id, created_at, task_input, toFloat64(distance) AS distance,
           reward, status, toUInt64(1) AS traces
    FROM nearest
    UNION ALL
    SELECT 'mean', '', NULL, '', avg(toFloat64(distance)), avg(reward), status, count()
    FROM nearest
    GROUP BY status
)
ORDER BY row = 'mean', distance, created_at DESC, trace_id, status
"""


def similar_traces(
    client: Client, agent: str, entry_id: str, role: str = "", limit: int = 10
) -> SimilarTraces:
    """The ``limit`` traces of ``agent`` whose task input is nearest to memory entry
    ``entry_id``'s input (by ClickHouse's n-gram distance, computed in the store; the entry's
    own source trace excluded), with the mean reward of those shown the entry, held back from
    it, and neither. No traces and every mean empty when the agent has no such entry (or no
    other traces). ``entry_id`` is the full id; every value is a bound query parameter.
    ValueError if ``limit`` is not a UInt32 (the parameter's type)."""
    if limit not in range(2**32):
        raise ValueError(f"limit must be between 0 and 2**32 - 1, not {limit}")
    parameters = {"agent": agent, "role": role, "entry_id": entry_id, "limit": limit}
    rows = rows_as_dicts(client, MEMORY_SIMILAR, parameters) if limit > 0 else []
    traces = [
        SimilarTrace(
            trace_id=r["trace_id"],
            created_at=r["created_at"],
            task_input=r["task_input"],
            distance=float(r["distance"]),
            reward=float(r["reward"]),
            status=r["status"],
        )
        for r in rows
        if r["row"] == "trace"
    ]
    found = {r["status"]: r for r in rows if r["row"] == "mean"}
    means = [
        StatusMean(
            status=status,
            traces=int(found[status]["traces"]) if status in found else 0,
            mean_distance=float(found[status]["distance"]) if status in found else None,
            mean_reward=float(found[status]["reward"]) if status in found else None,
        )
        for status in SIMILAR_STATUSES
    ]
    return SimilarTraces(traces, means)
