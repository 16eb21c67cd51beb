"""The agent's side of the demonstration memory: follow ``atlas.memory.v1``, keep an
in-process BM25 index of this agent's entries, and find the entries most similar to a task.

* :class:`MemoryIndex` is pure (no Kafka): BM25 over each entry's ``terms``, tokenised as the
  memory processor tokenises them (``schemas/terms.py``, one definition for both sides).
  Every method is thread-safe; a search sees the index before or after an update, never
  half of one.
* :class:`MemorySubscriber` follows the compacted topic like the prompts subscriber: replays it
  from the beginning at start (so it holds the current entries), then applies entries and
  tombstones live on a background thread. Only entries of its agent and role are kept; a
  retired entry (``retired_reason`` set) is removed as a tombstone is; an unreadable message
  is skipped and counted, never fatal.
* :class:`~schemas.models.MemoryPolicy` is the runtime's knob set: a component of the student's
  prompt version (the seed's is ``memory:`` in ``configs/agent.yaml``), so it is gated and
  rolled out like a prompt; :class:`LookupStats` is the running cost of searches, reported
  beside generation time.
* :func:`held_back` is the randomized holdout: a hashed share of an entry's matches does not
  get it, so the entry's reward when used is compared with tasks like it that went without
  it (the retirement rule), not with easier or harder tasks elsewhere.
* :class:`OtherInputs` is a memory as a held-out evaluation must see it: never an entry for
  the very input being graded.

Why BM25 over terms and not embeddings: it needs no model on the agent's path, costs
microseconds at the memory's bound (200 entries per agent by default), and the entries'
terms are already on the topic; an agent wanting embeddings computes them from ``input``.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from runtime.follow import TopicFollower
from runtime.rollout import unit_hash
from schemas.codec import AvroCodec, DecodeError
from schemas.models import MemoryEntry, MemoryPolicy, split_memory_key
from schemas.terms import normalised, query_terms, rough_tokens, terms_of
from schemas.topics import MEMORY

log = logging.getLogger(__name__)
# Bounds on what one entry or one query may cost: a hostile entry with thousands of terms, or
# a huge task, is cut here rather than slowing every later search.
MAX_ENTRY_TERMS = 256
MAX_QUERY_TERMS = 256


class LookupStats:
    """Running count, total and maximum of search times; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        with self._lock:
            self.count += 1
            self.total_s += seconds
            self.max_s = max(self.max_s, seconds)

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0

    def summary(self) -> str:
        """One line for people: lookups, mean and max in microseconds."""
        return (
            f"{self.count} lookups, mean {self.mean_s * 1e6:.0f} µs,"
            f" max {self.max_s * 1e6:.0f} µs, total {self.total_s * 1e3:.1f} ms"
        )


class MemorySearch(Protocol):
    """What the runtime needs of a memory (the index, or a subscriber holding one)."""

    stats: LookupStats

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        """The at most ``k`` entries most similar to ``text`` with a score above
        ``min_score``, best first."""
        ...


def entry_terms(entry: MemoryEntry) -> list[str]:
    """The distinct terms an entry is indexed by: its ``terms`` re-tokenised (so a writer that
    did not lower-case or split them still matches), else the input's, at most
    ``MAX_ENTRY_TERMS``."""
    return terms_of(" ".join(entry.terms) or entry.input, MAX_ENTRY_TERMS)


class MemoryIndex:
    """BM25 (k1, b; Lucene's non-negative idf) over entries' distinct terms, keyed by
    entry id; a put replaces the entry of the same id. Thread-safe."""

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.stats = LookupStats()
        self._lock = threading.Lock()
        self._entries: dict[str, MemoryEntry] = {}
        self._lengths: dict[str, int] = {}
        self._postings: dict[str, set[str]] = {}
        self._total_length = 0
        # entry id -> (k1 + 1) / (1 + k1 * length norm): depends on the mean length, so it is
        # rebuilt (O(entries)) on the first search after a change, not per (term, entry) pair
        self._weights: dict[str, float] | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock:
            return entry_id in self._entries

    def entries(self) -> list[MemoryEntry]:
        with self._lock:
            return list(self._entries.values())

    def put(self, entry: MemoryEntry) -> None:
        terms = entry_terms(entry)
        with self._lock:
            self._remove(entry.entry_id)
            self._weights = None
            self._entries[entry.entry_id] = entry
            self._lengths[entry.entry_id] = len(terms)
            self._total_length += len(terms)
            for term in terms:
                self._postings.setdefault(term, set()).add(entry.entry_id)

    def remove(self, entry_id: str) -> bool:
        """Whether an entry was removed."""
        with self._lock:
            return self._remove(entry_id)

    def _remove(self, entry_id: str) -> bool:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return False
        self._weights = None
        self._total_length -= self._lengths.pop(entry_id)
        for term in entry_terms(entry):
            holders = self._postings.get(term)
            if holders is not None:
                holders.discard(entry_id)
                if not holders:
                    del self._postings[term]
        return True

    def scored(self, text: str, k: int, min_score: float = 0.0) -> list[tuple[float, MemoryEntry]]:
        """(score, entry) of the at most ``k`` best entries scoring above ``min_score``, best
        first; ties go to the smaller entry id, so results are deterministic."""
        query = list(dict.fromkeys(query_terms(text)))[:MAX_QUERY_TERMS]
        if k <= 0 or not query:
            return []
        scores: dict[str, float] = {}
        with self._lock:
            count = len(self._entries)
            if not count:
                return []
            weights = self._weights if self._weights is not None else self._weigh()
            for term in query:
                holders = self._postings.get(term)
                if not holders:
                    continue
                idf = math.log(1.0 + (count - len(holders) + 0.5) / (len(holders) + 0.5))
                for entry_id in holders:
                    scores[entry_id] = scores.get(entry_id, 0.0) + idf * weights[entry_id]
            best = heapq.nsmallest(
                k,
                ((-s, entry_id) for entry_id, s in scores.items() if s > min_score),
            )
            return [(-negative, self._entries[entry_id]) for negative, entry_id in best]

    def _weigh(self) -> dict[str, float]:
        """BM25's term weight per entry; each term occurs once in an entry's distinct terms,
        so tf = 1 and the weight depends only on the entry's length. Called under the lock."""
        mean_length = self._total_length / len(self._entries) or 1.0
        k1, b = self.k1, self.b
        self._weights = {
            entry_id: (k1 + 1) / (1.0 + k1 * (1.0 - b + b * length / mean_length))
            for entry_id, length in self._lengths.items()
        }
        return self._weights

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        """The entries of :meth:`scored`; the time taken (lock wait included: that is what
        the agent pays) goes into ``stats``."""
        started = time.perf_counter()
        try:
            return [entry for _, entry in self.scored(text, k, min_score)]
        finally:
            self.stats.add(time.perf_counter() - started)


@dataclass(frozen=True)
class Recall:
    """The entries chosen for one task, in the order shown, their rough token cost, and the
    ids of those that matched but the holdout kept back."""

    entries: tuple[MemoryEntry, ...] = ()
    tokens: int = 0
    held_back: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        return [entry.entry_id for entry in self.entries]


def held_back(trace_id: str, entry_id: str, share: float) -> bool:
    """Whether the randomized holdout keeps ``entry_id`` from the task of ``trace_id``: a hash
    of both ids below ``share``, so a replay decides the same and each entry is kept back from
    about ``share`` of the tasks it matches, independently of how hard they are."""
    return share > 0.0 and unit_hash(trace_id, entry_id) < share


def recall(
    memory: MemorySearch,
    policy: MemoryPolicy,
    task_input: str,
    trace_id: str = "",
    holdout: float = 0.0,
) -> Recall:
    """The entries to show before ``task_input``: the ``policy.k`` best, best first, each
    taken only while the running rough token count stays within ``policy.token_budget`` (one
    too large is passed over for a smaller one after it); of those, the ones
    :func:`held_back` keeps from the task of ``trace_id`` (a ``holdout`` share of matches)
    are named in ``held_back`` instead of shown. The held-back tasks are what an entry's
    reward when used is compared with (``streams/memory_retirement.py``)."""
    if not policy.enabled or policy.k <= 0:
        return Recall()
    chosen: list[MemoryEntry] = []
    kept_back: list[str] = []
    spent = 0
    for entry in memory.search(task_input, policy.k, policy.min_score):
        cost = rough_tokens(entry.input, entry.output)
        if spent + cost > policy.token_budget:
            continue
        if held_back(trace_id, entry.entry_id, holdout):
            kept_back.append(entry.entry_id)
            continue
        chosen.append(entry)
        spent += cost
    return Recall(tuple(chosen), spent, tuple(kept_back))


class OtherInputs:
    """``memory`` without the entry for the searched input itself (entries are one per
    normalised input): what a held-out evaluation may show. A graded task's own entry is its
    reference answer, whichever trace made it, so showing it would measure recall of the
    answer, not the policy; a new task asked again in production does get its entry."""

    def __init__(self, memory: MemorySearch):
        self.memory = memory
        self.stats = memory.stats

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        query = normalised(text)
        found = self.memory.search(text, k + 1, min_score)
        return [entry for entry in found if normalised(entry.input) != query][:k]


class MemorySubscriber(TopicFollower[MemoryEntry]):
    """Follows ``atlas.memory.v1`` for one agent and role (see the module's docstring);
    ``search`` and ``stats`` are the index's."""

    def __init__(
        self,
        kafka_config: dict[str, str],
        agent_id: str,
        role: str = "student",
        codec: AvroCodec | None = None,
        topic: str = MEMORY,
    ):
        super().__init__(kafka_config, topic, MemoryEntry, codec)
        self.agent_id, self.role = agent_id, role
        self.index = MemoryIndex()
        self.stats = self.index.stats

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        return self.index.search(text, k, min_score)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            agent_id, role, entry_id = split_memory_key((key or b"").decode())
        except (UnicodeDecodeError, ValueError):
            self.skipped += 1
            log.warning("skipping a message on %s without a memory key", self.topic)
            return
        if (agent_id, role) != (self.agent_id, self.role):
            return  # another agent's memory: not ours to show, not worth decoding
        if value is None:
            self.index.remove(entry_id)
            self._notify()
            return
        try:
            entry = self.codec.decode(value, MemoryEntry)
        except DecodeError as exc:
            self.skipped += 1
            log.warning("skipping an unreadable memory entry on %s: %s", self.topic, exc)
            return
        if (entry.agent_id, entry.role, entry.entry_id) != (agent_id, role, entry_id):
            # the key decides compaction and tombstones: an entry claiming another key could
            # never be removed by its tombstone, so it is not kept
            self.skipped += 1
            log.warning("skipping a memory entry whose key does not name it: %s", key)
            return
        if entry.retired:
            # retired by the memory (its use correlates with lower reward): removed, like a
            # tombstone, though the topic and the store keep it with its figures
            self.index.remove(entry_id)
        else:
            self.index.put(entry)
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, entry_id: str, present: bool = True, timeout: float = 30.0) -> bool:
        """Block until ``entry_id`` is held (``present``) or gone; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (entry_id in self.index) != present:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


def current_memory(
    kafka_config: dict[str, str], agent_id: str, role: str, codec: AvroCodec | None = None
) -> MemoryIndex:
    """The entries the agent's runtime holds right now (the compacted topic, replayed), as an
    index of its own: what a held-out evaluation measures a memory policy with."""
    with MemorySubscriber(kafka_config, agent_id, role, codec).start() as subscriber:
        return subscriber.index
