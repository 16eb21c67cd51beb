"""LLM judging at the speed of the model: the naive serial judge vs the batched one, same judge
config, same traces, same model, in one run:

- serial: one trace at one temperature per model call, one call after another;
- per temperature: one batched call per temperature (what the judge did before);
- all at once: every trace at every temperature in one request (`complete_each`): one
  generate call per ``--max-batch`` rows on the in-process backend, concurrent requests through
  the bounded pool of the `openai` backend.

Backends: (a) the in-process transformers backend; (b) llama.cpp's OpenAI-compatible server
through the `openai` backend: llama-cpp-python's server (one request at a time, so concurrency
cannot speed it up) and, when a ``llama-server`` binary is found (``--llama-server``,
``$LLAMA_SERVER`` or ``PATH``), llama.cpp's own server with ``--slots`` parallel slots and
continuous batching. Figures only, no assertions.

    .venv/bin/python benchmarks/judging.py [--traces 8] [--max-tokens 64] [--max-batch 24]
        [--slots 8] [--threads 2] [--llama-server PATH]
        [--only local,llama-cpp-python,llama-server]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atlas.settings import Settings
from deploy.local.llama_server import start_llama_server
from deploy.local.processes import StackError, free_port, log_tail, stop_pid
from rim.judges import LLMJudge, Principle
from runtime.backends.base import (
    ChatResult,
    GenerationParams,
    Message,
    MixedBackend,
    ModelBackend,
)
from runtime.backends.local import LocalBackend, default_model_dir, smollm2_gguf
from runtime.backends.openai_backend import OpenAIBackend
from schemas.models import InteractionEvent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.factories import interaction

TEMPERATURES = (0.2, 0.5, 0.8)
MODES = ("serial", "per temperature", "all at once")


class Metered:
    """The judge's view of ``backend``, counting model calls and completion tokens. It offers
    only ``complete``, so the judge falls back to one call per temperature; with
    ``one_at_a_time`` each of those is split into one call per conversation, in turn."""

    def __init__(self, backend: ModelBackend, one_at_a_time: bool = False):
        self.backend = backend
        self.model_name = backend.model_name
        self.one_at_a_time = one_at_a_time
        self.calls = self.tokens = 0

    def _count(self, results: list[ChatResult]) -> list[ChatResult]:
        self.calls += 1
        self.tokens += sum(r.completion_tokens for r in results)
        return results

    def complete(
        self, conversations: Sequence[Sequence[Message]], params: GenerationParams
    ) -> list[ChatResult]:
        if self.one_at_a_time:
            return [self._count(self.backend.complete([c], params))[0] for c in conversations]
        return self._count(self.backend.complete(conversations, params))


class MeteredMixed(Metered):
    """`Metered`, passing the judge's all-at-once `complete_each` request through."""

    def complete_each(
        self, conversations: Sequence[Sequence[Message]], params: Sequence[GenerationParams]
    ) -> list[ChatResult]:
        mixed: MixedBackend = self.backend  # type: ignore[assignment]
        return self._count(mixed.complete_each(conversations, params))


def metered(backend: ModelBackend, mode: str) -> Metered:
    if mode == "all at once":
        return MeteredMixed(backend)
    return Metered(backend, one_at_a_time=mode == "serial")


@dataclass
class Run:
    mode: str
    seconds: float
    traces: int
    calls: int
    tokens: int
    scored: int  # traces that got a valid judgement (a 135M model rarely manages one)

    @property
    def per_s(self) -> float:
        return self.traces / self.seconds


def judge_with(backend: ModelBackend, max_tokens: int) -> LLMJudge:
    """The judge every mode uses: three temperatures, no retries, no arbiter."""
    return LLMJudge(
        "accuracy",
        [Principle(name="correctness", description="The final answer is right.")],
        backend,
        temperatures=TEMPERATURES,
        retries=0,
        max_tokens=max_tokens,
    )


def sample_traces(count: int) -> list[InteractionEvent]:
    rng = random.Random(3)
    return [interaction(rng) for _ in range(count)]


def compare(
    backend: ModelBackend,
    traces: Sequence[InteractionEvent],
    max_tokens: int,
    modes: Sequence[str] = MODES,
) -> list[Run]:
    """Judge ``traces`` once per mode, after one untimed warm-up call."""
    backend.complete([[{"role": "user", "content": "Hi"}]], GenerationParams(max_tokens=4))
    runs = []
    for mode in modes:
        view = metered(backend, mode)
        judge = judge_with(view, max_tokens)
        started = time.perf_counter()
        scores = judge.judge(traces)
        seconds = time.perf_counter() - started
        scored = sum(s.score is not None for s in scores)
        runs.append(Run(mode, seconds, len(traces), view.calls, view.tokens, scored))
    return runs


def report(title: str, runs: Sequence[Run], note: str | None = None) -> list[str]:
    """The runs side by side, each with its ratio to the serial one."""
    serial = next((r for r in runs if r.mode == "serial"), runs[0])
    lines = [
        title,
        f"  {'mode':16} {'seconds':>8} {'traces/s':>9} {'calls':>6} {'tokens':>7}"
        f" {'tokens/s':>9} {'scored':>6} {'vs serial':>10}",
    ]
    for run in runs:
        lines.append(
            f"  {run.mode:16} {run.seconds:8.1f} {run.per_s:9.3f} {run.calls:6d}"
            f" {run.tokens:7d} {run.tokens / run.seconds:9.1f} {run.scored:6d}"
            f" {run.per_s / serial.per_s:9.2f}x"
        )
    if note:
        lines.append(f"  note: {note}")
    return lines


def judge_local(
    traces: int, max_tokens: int = 64, max_batch: int = 24, threads: int = 2
) -> list[str]:
    """Serial vs batched judging on the in-process transformers backend, as printed lines."""
    backend = LocalBackend(
        default_model_dir(Settings().cache_dir), max_batch=max_batch, threads=threads
    )
    runs = compare(backend, sample_traces(traces), max_tokens)
    return report(
        f"LLM judge, in-process transformers ({backend.model_name}, {threads} threads,"
        f" max_batch {max_batch} rows), {traces} traces x {len(TEMPERATURES)} temperatures:",
        runs,
    )


def find_llama_server(explicit: str | None) -> Path | None:
    found = explicit or os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    return Path(found) if found else None


@contextmanager
def llama_server(binary: Path, slots: int, threads: int, log: Path) -> Iterator[str]:
    """llama.cpp's own server on a free port with ``slots`` parallel slots (2048 tokens of
    context each) and continuous batching; yields its base URL, stops it by PID."""
    port = free_port()
    command = [
        str(binary),
        "--model",
        str(smollm2_gguf()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--parallel",
        str(slots),
        "--ctx-size",
        str(2048 * slots),
        "--cont-batching",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise StackError(f"llama-server exited during start-up: {log_tail(log, 5)}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):  # 503 while it loads the model
                if time.monotonic() > deadline:
                    raise StackError(f"llama-server did not answer: {log_tail(log, 5)}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_pid(process.pid, binary.name)


def judge_servers(
    traces: int,
    max_tokens: int,
    slots: int,
    binary: Path | None,
    only: Sequence[str],
    threads: int = 2,
) -> list[str]:
    """Serial vs concurrent judging through the `openai` backend against llama.cpp's
    servers (``slots`` requests in flight), as printed lines."""
    batch, lines = sample_traces(traces), []
    modes = ("serial", "all at once")
    with tempfile.TemporaryDirectory() as tmp:
        if "llama-cpp-python" in only:
            server = start_llama_server(smollm2_gguf(), Path(tmp) / "py.log", threads=threads)
            try:
                backend = OpenAIBackend(
                    "smollm2", base_url=server.base_url, timeout=600, concurrency=slots
                )
                runs = compare(backend, batch, max_tokens, modes)
            finally:
                server.stop()
            lines += report(
                f"LLM judge, llama-cpp-python's server via openai ({threads} threads,"
                f" {slots} requests in flight):",
                runs,
                "llama-cpp-python's server serves one request at a time (no parallel slots):"
                " concurrent requests queue, so concurrency cannot speed it up there.",
            )
        if "llama-server" in only:
            if binary is None:
                lines.append(
                    "llama.cpp's llama-server (parallel slots): no binary found (--llama-server,"
                    " $LLAMA_SERVER, PATH); not measured."
                )
                return lines
            with llama_server(binary, slots, threads, Path(tmp) / "cpp.log") as url:
                backend = OpenAIBackend("smollm2", base_url=url, timeout=600, concurrency=slots)
                runs = compare(backend, batch, max_tokens, modes)
            lines += report(
                f"LLM judge, llama.cpp's llama-server via openai ({threads} threads, {slots}"
                f" parallel slots, continuous batching, {slots} requests in flight):",
                runs,
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64, help="per judge sample")
    parser.add_argument(
        "--max-batch", type=int, default=24, help="rows per generate call (in-process)"
    )
    parser.add_argument("--slots", type=int, default=8, help="llama-server parallel slots")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each model")
    parser.add_argument("--llama-server", help="path of llama.cpp's llama-server binary")
    parser.add_argument("--only", default="local,llama-cpp-python,llama-server")
    args = parser.parse_args()
    only = args.only.split(",")
    print(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    if "local" in only:
        lines = judge_local(args.traces, args.max_tokens, args.max_batch, args.threads)
        print("\n".join(lines), flush=True)
    binary = find_llama_server(args.llama_server)
    lines = judge_servers(args.traces, args.max_tokens, args.slots, binary, only, args.threads)
    print("\n".join(lines), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
