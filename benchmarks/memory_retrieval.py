"""Memory retrieval (issue 16, item 4, "Similarity: choose and measure"): BM25 (the runtime's
``MemoryIndex``) vs character 3-gram TF-IDF cosine vs embeddings of the SmolLM2 model.

A memory of ``--entries`` entries (built-in training tasks of all families mixed, each an
edit to its reference, made by the memory processor) is queried with fresh tasks of every
family. Per method: precision@3 of "same family, and the same sentence template for
extraction", and lookup latency per query (mean, p99; for embeddings the query's forward
pass is included, the entries' embeddings are computed once beforehand and reported apart).
Then the learning effect of a k=3 memory with each method: accuracy of the student (mode
auto, SmolLM2-135M) on ``--learn-n`` fresh tasks of ``--learn-family``, beside no memory.

    .venv/bin/python benchmarks/memory_retrieval.py [--entries 200] [--queries 60]
        [--learn-family extraction] [--learn-n 60] [--answer-tokens 48]

Caveats: the relevance label is the generator's family/template, a proxy for "a useful
demonstration"; the embedding is a 135M chat model's mean-pooled last hidden state, not a
trained sentence encoder; latencies are single-threaded Python on a 2-core machine, the
embedding's on torch's CPU threads. With n = 60 a difference under 10 points is noise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atlas.settings import PROJECT_CONFIGS, Settings
from benchmarks.learning import SEEDS
from benchmarks.memory_loop import AGENT, MemoryLoop, template_of
from runtime.backends.local import LocalBackend, default_model_dir
from runtime.core import GenerationLimits, Runtime
from runtime.memory import LookupStats, MemoryIndex, MemoryPolicy, MemorySearch
from runtime.prompts import StaticPrompts
from runtime.tasks import FAMILIES, Task, generate, is_correct
from schemas.models import MemoryEntry
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
