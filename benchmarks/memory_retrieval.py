"""Memory retrieval (issue 16, item 4, "Similarity: choose and measure"): BM25 (the runtime's
``MemoryIndex``) vs character 3-gram TF-IDF cosine vs embeddings of the SmolLM2 model, and
beside them ClickHouse's own ``ngramDistance`` computed inside ClickHouse (the offline
analysis's similarity, ``store.queries.MEMORY_SIMILAR``; precision and latency only).

A memory of ``--entries`` entries (built-in training tasks of all families mixed, each an
edit to its reference, made by the memory processor) is queried with fresh tasks of every
family. Per method: precision@3 of "same family, and the same sentence template for
extraction", and lookup latency per query (mean, p99; for embeddings the query's forward
pass is included, the entries' embeddings are computed once beforehand and reported apart).
ClickHouse: the entries are inserted into a table of a real local store (the store server
`atlas up` runs, ``deploy/local/store_server.py``, started here on a free port and stopped by
PID) through clickhouse-connect over HTTP, and ranked by ``ngramDistanceCaseInsensitiveUTF8``
(3-grams of code points) and ``ngramDistanceCaseInsensitive`` (4-grams of bytes): once per
query text (latency = one HTTP round trip, query parsed and run by the server), and once as
one batch: the query texts inserted into a table and one query ranking for all of them
(latency = the batch's time, table made + insert + query, / queries). Also the embedded
engine (chdb in this process, no HTTP) per query. None of them is in the learning effect.
Then the learning effect of a k=3 memory with each in-process method: accuracy of the student
(mode auto, SmolLM2-135M) on ``--learn-n`` fresh tasks of ``--learn-family``, beside no memory.

    .venv/bin/python benchmarks/memory_retrieval.py [--entries 200] [--queries 60]
        [--learn-family extraction] [--learn-n 60 (0: skip)] [--answer-tokens 48]

Caveats: the relevance label is the generator's family/template, a proxy for "a useful
demonstration"; the embedding is a 135M chat model's mean-pooled last hidden state, not a
trained sentence encoder; latencies are single-threaded Python on a 2-core machine, the
embedding's on torch's CPU threads. With n = 60 a difference under 10 points is noise.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from clickhouse_connect.driver.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.settings import PROJECT_CONFIGS, Settings
from benchmarks.learning import SEEDS
from benchmarks.memory_loop import AGENT, MemoryLoop, template_of
from deploy.local.processes import free_port, stop_pid
from runtime.backends.local import LocalBackend, default_model_dir
from runtime.core import Runtime
from runtime.memory import LookupStats, MemoryIndex, MemoryPolicy, MemorySearch
from runtime.prompts import StaticPrompts
from runtime.tasks import FAMILIES, Task, generate, is_correct
from runtime.turns import GenerationLimits
from schemas.models import MemoryEntry
from schemas.secrets import ensure_secret
from store.client import StoreTarget, connect
from streams.memory_config import load_memory_config


class VectorSearch:
    """Cosine similarity over unit vectors of the entries' inputs; ``embed`` maps one text
    to a vector (it runs per query, inside the timed search)."""

    def __init__(self, entries: list[MemoryEntry], embed: Callable[[str], np.ndarray]):
        self.entries, self.embed = entries, embed
        self.stats = LookupStats()
        self.matrix = np.stack([unit(embed(e.input)) for e in entries])

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        started = time.perf_counter()
        try:
            scores = self.matrix @ unit(self.embed(text))
            best = np.argsort(-scores, kind="stable")[:k]
            return [self.entries[i] for i in best if scores[i] > min_score]
        finally:
            self.stats.add(time.perf_counter() - started)


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


class CharGrams:
    """Character 3-gram TF-IDF (sublinear tf, smoothed idf) fitted on the entries' inputs."""

    def __init__(self, texts: list[str], n: int = 3):
        self.n = n
        counts = [self.grams(t) for t in texts]
        documents = Counter(g for c in counts for g in c)
        self.vocabulary = {g: i for i, g in enumerate(sorted(documents))}
        size = len(texts)
        self.idf = np.array(
            [math.log((1 + size) / (1 + documents[g])) + 1.0 for g in sorted(documents)]
        )

    def grams(self, text: str) -> Counter[str]:
        padded = f" {' '.join(text.casefold().split())} "
        return Counter(padded[i : i + self.n] for i in range(len(padded) - self.n + 1))

    def __call__(self, text: str) -> np.ndarray:
        vector = np.zeros(len(self.vocabulary))
        for gram, count in self.grams(text).items():
            index = self.vocabulary.get(gram)
            if index is not None:
                vector[index] = (1.0 + math.log(count)) * self.idf[index]
        return vector


class Embedder:
    """Mean-pooled last hidden state of the causal model's base (no generation head)."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()

    def __call__(self, text: str) -> np.ndarray:
        with self.torch.inference_mode():
            encoded = self.tokenizer(text, return_tensors="pt")
            hidden = self.model(**encoded).last_hidden_state[0]
            return hidden.mean(dim=0).float().numpy()


STORE_MAIN = "deploy.local.store_server"
TABLE = "bench_memory_retrieval"
# ClickHouse's string distances compared: 3-grams of code points (the offline analysis's) and
# 4-grams of bytes, both case-insensitive.
NGRAM_FUNCTIONS = ("ngramDistanceCaseInsensitiveUTF8", "ngramDistanceCaseInsensitive")
# Rank the entries by distance to one query text: nearest first, ties by entry id.
NEAREST_SQL = """
SELECT entry_id FROM {table}
ORDER BY {function}(input, {{text:String}}), entry_id
LIMIT {{k:UInt32}}
"""
# The same for every query text in one query, the texts being rows of QUERY_TABLE: (query
# number from 1, entry id), k per query. (Not an Array(String) parameter: clickhouse-connect
# sends large parameters form-encoded, which the local store server does not read.)
QUERY_TABLE = "bench_memory_queries"
NEAREST_BATCH_SQL = """
SELECT q.i, m.entry_id
FROM {queries} AS q CROSS JOIN {table} AS m
ORDER BY q.i, {function}(m.input, q.text), m.entry_id
LIMIT {{k:UInt32}} BY q.i
"""


@contextmanager
def local_store(directory: Path) -> Iterator[Client]:
    """A fresh local store server (as `atlas up` starts it) on a free port, over ``directory``,
    and a clickhouse-connect HTTP client to it; the server is stopped by its PID at the end."""
    password_file = directory / "store.password"
    password = ensure_secret(password_file)
    port = free_port()
    command = [sys.executable, "-m", STORE_MAIN, "--path", str(directory / "store")]
    command += ["--port", str(port), "--password-file", str(password_file)]
    with (directory / "store.out").open("ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no store; see {directory / 'store.out'}") from None
                time.sleep(0.1)
        yield connect(StoreTarget.parse(f"http://127.0.0.1:{port}", password=password))
    finally:
        stop_pid(server.pid, STORE_MAIN)


def fill_table(client: Client, entries: list[MemoryEntry]) -> None:
    """The entries' ids and inputs as table ``TABLE`` (made anew) in the store."""
    client.command(f"DROP TABLE IF EXISTS {TABLE}")
    client.command(f"CREATE TABLE {TABLE} (entry_id String, input String) ORDER BY entry_id")
    client.insert(TABLE, [[e.entry_id, e.input] for e in entries], ["entry_id", "input"])


class ClickHouseSearch:
    """The entries nearest to a query text by one of ClickHouse's n-gram distances, computed
    in the store (one query per search); an entry matches when its distance is below 1."""

    def __init__(self, client: Client, entries: list[MemoryEntry], function: str):
        assert function in NGRAM_FUNCTIONS  # spliced into the SQL: a name of ours only
        self.client, self.function = client, function
        self.by_id = {e.entry_id: e for e in entries}
        self.stats = LookupStats()

    def search(self, text: str, k: int, min_score: float = 0.0) -> list[MemoryEntry]:
        started = time.perf_counter()
        try:
            sql = NEAREST_SQL.format(table=TABLE, function=self.function)
            rows = self.client.query(sql, parameters={"text": text, "k": k}).result_rows
            return [self.by_id[entry_id] for (entry_id,) in rows]
        finally:
            self.stats.add(time.perf_counter() - started)

    def search_batch(self, texts: list[str], k: int) -> list[list[MemoryEntry]]:
        """``search`` of every text, as one insert of the texts and one query."""
        self.client.command(f"DROP TABLE IF EXISTS {QUERY_TABLE}")
        self.client.command(f"CREATE TABLE {QUERY_TABLE} (i UInt32, text String) ORDER BY i")
        self.client.insert(QUERY_TABLE, [[i, t] for i, t in enumerate(texts, 1)], ["i", "text"])
        sql = NEAREST_BATCH_SQL.format(queries=QUERY_TABLE, table=TABLE, function=self.function)
        rows = self.client.query(sql, parameters={"k": k}).result_rows
        found: list[list[MemoryEntry]] = [[] for _ in texts]
        for i, entry_id in rows:
            found[i - 1].append(self.by_id[entry_id])
        return found


def batch_precision_and_latency(
    memory: ClickHouseSearch, queries: list[Task], labels: dict[str, str]
) -> tuple[float, float, int]:
    """Precision@3 of the same template, the batch's time per query text in ms, and for how
    many queries the batch's top 3 is the per-query search's (checked after the timing)."""
    started = time.perf_counter()
    found = memory.search_batch([task.input for task in queries], 3)
    elapsed = time.perf_counter() - started
    hits = [
        sum(labels[e.entry_id] == template_of(task) for e in entries) / 3
        for task, entries in zip(queries, found, strict=True)
    ]
    same = sum(memory.search(t.input, 3) == f for t, f in zip(queries, found, strict=True))
    return float(np.mean(hits)), 1e3 * elapsed / len(queries), same


def clickhouse_rows(
    entries: list[MemoryEntry], queries: list[Task], labels: dict[str, str]
) -> list[str]:
    """The table's ClickHouse rows: per function, per query over HTTP, one batch over HTTP, and
    per query in the embedded engine (chdb, this process)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        with local_store(Path(directory)) as client:
            begun = time.perf_counter()
            fill_table(client, entries)
            build = time.perf_counter() - begun
            for function in NGRAM_FUNCTIONS:
                search = ClickHouseSearch(client, entries, function)
                precision, mean_ms, p99_ms = precision_and_latency(search, queries, labels)
                rows.append(
                    f"| clickhouse {function}, store over HTTP, 1 query per text | {precision:.3f}"
                    f" | {mean_ms:.3f} | {p99_ms:.3f} | {build:.1f} |"
                )
                batch_precision, per_query_ms, same = batch_precision_and_latency(
                    search, queries, labels
                )
                rows.append(
                    f"| clickhouse {function}, store over HTTP, texts inserted + 1 query for all"
                    f" {len(queries)} (top 3 as per query: {same}/{len(queries)})"
                    f" | {batch_precision:.3f} | {per_query_ms:.3f} (batch / {len(queries)})"
                    f" | - | {build:.1f} |"
                )
        client = connect(f"chdb://{Path(directory) / 'chdb'}")
        begun = time.perf_counter()
        fill_table(client, entries)
        build = time.perf_counter() - begun
        search = ClickHouseSearch(client, entries, NGRAM_FUNCTIONS[0])
        precision, mean_ms, p99_ms = precision_and_latency(search, queries, labels)
        rows.append(
            f"| clickhouse {NGRAM_FUNCTIONS[0]}, embedded chdb, 1 query per text"
            f" | {precision:.3f} | {mean_ms:.3f} | {p99_ms:.3f} | {build:.1f} |"
        )
        client.close()
    return rows


def memory_of(tasks: list[Task]) -> MemoryIndex:
    """The memory made by one edit (to the reference) of each task."""
    loop = MemoryLoop(load_memory_config(PROJECT_CONFIGS))
    for task in tasks:
        loop.teach(task)
    return loop.index


def precision_and_latency(
    memory: MemorySearch, queries: list[Task], labels: dict[str, str]
) -> tuple[float, float, float]:
    """Precision@3 of the same template, mean and p99 lookup time in ms."""
    hits, times = [], []
    for task in queries:
        started = time.perf_counter()
        found = memory.search(task.input, 3)
        times.append(time.perf_counter() - started)
        hits.append(sum(labels[e.entry_id] == template_of(task) for e in found) / 3)
    return float(np.mean(hits)), 1e3 * float(np.mean(times)), 1e3 * float(np.quantile(times, 0.99))


def learning_effect(
    backend: LocalBackend, memory: MemorySearch | None, tasks: list[Task], args: argparse.Namespace
) -> tuple[float, int]:
    """Accuracy of the student with this memory (k=3), and how many tasks were shown any entry."""
    runtime = Runtime(
        AGENT,
        backend,
        backend,
        StaticPrompts(SEEDS),
        limits=GenerationLimits(answer_tokens=args.answer_tokens),
        memory=memory,
        memory_policy=MemoryPolicy(enabled=True) if memory is not None else None,
    )
    events = [
        e for i in range(0, len(tasks), 8) for e in runtime.run_many(tasks[i : i + 8], "auto")
    ]
    right = sum(is_correct(t, e.final_answer) for t, e in zip(tasks, events, strict=True))
    return right / len(tasks), sum(bool(e.memory_entries) for e in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200, help="memory size (mixed families)")
    parser.add_argument("--queries", type=int, default=60, help="fresh queries per family")
    parser.add_argument("--learn-family", default="extraction")
    parser.add_argument("--learn-n", type=int, default=60, help="0: skip the learning effect")
    parser.add_argument("--answer-tokens", type=int, default=48)
    args = parser.parse_args()
    started = time.perf_counter()
    families = list(FAMILIES)
    stored = [
        t
        for family in families
        for t in generate(family, "train", args.entries // len(families) + 1, seed=900)  # type: ignore[arg-type]
    ]
    stored = stored[: args.entries]
    queries = [t for f in families for t in generate(f, "train", args.queries, seed=901)]  # type: ignore[arg-type]
    bm25 = memory_of(stored)
    entries = bm25.entries()
    labels = {
        e.entry_id: template_of(next(t for t in stored if t.input == e.input)) for e in entries
    }
    model_dir = default_model_dir(Settings().cache_dir)
    methods: dict[str, MemorySearch] = {"bm25 (MemoryIndex)": bm25}
    build: dict[str, float] = {"bm25 (MemoryIndex)": 0.0}
    for name, make in (
        ("char 3-gram tf-idf", lambda: CharGrams([e.input for e in entries])),
        ("SmolLM2 embedding", lambda: Embedder(model_dir)),
    ):
        begun = time.perf_counter()
        methods[name] = VectorSearch(entries, make())
        build[name] = time.perf_counter() - begun
    mix = Counter(labels.values())
    print(f"{len(entries)} entries ({dict(sorted(mix.items()))}), {len(queries)} queries")
    print("| method | precision@3 same template | mean ms/query | p99 ms/query | build s |")
    print("|---|---|---|---|---|")
    for name, memory in methods.items():
        precision, mean_ms, p99_ms = precision_and_latency(memory, queries, labels)
        print(f"| {name} | {precision:.3f} | {mean_ms:.3f} | {p99_ms:.3f} | {build[name]:.1f} |")
    for row in clickhouse_rows(entries, queries, labels):
        print(row)
    if args.learn_n:
        backend = LocalBackend(model_dir, max_batch=8)
        tasks = generate(args.learn_family, "train", args.learn_n, seed=902)  # type: ignore[arg-type]
        print(
            f"\nlearning effect, {args.learn_family}, n={len(tasks)}, k=3, {len(entries)} entries"
        )
        print("| memory | accuracy | lift vs none (pts) | ≥10 pts? | shown an entry |")
        print("|---|---|---|---|---|")
        base, _ = learning_effect(backend, None, tasks, args)
        print(f"| none | {base:.3f} | - | - | 0/{len(tasks)} |")
        for name, memory in methods.items():
            accuracy, shown = learning_effect(backend, memory, tasks, args)
            points = 100 * (accuracy - base)
            print(
                f"| {name} | {accuracy:.3f} | {points:+.1f} | {'yes' if points >= 10 else 'no'}"
                f" | {shown}/{len(tasks)} |"
            )
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
