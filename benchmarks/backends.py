"""Tokens per second of the model backends on this machine, in one run:
the in-process transformers backend at batch 1 and batch 8, and llama.cpp's OpenAI-compatible
server (same GGUF) through the `openai` backend, serially and with 8 concurrent requests.

    .venv/bin/python benchmarks/backends.py [--tokens 64] [--prompts 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from atlas.settings import Settings
from deploy.local.llama_server import start_llama_server
from runtime.backends.base import GenerationParams, ModelBackend
from runtime.backends.local import LocalBackend, default_model_dir, smollm2_gguf
from runtime.backends.openai_backend import OpenAIBackend
from runtime.tasks import generate


def measure(
    backend: ModelBackend, conversations: list, params: GenerationParams, batch: int
) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(conversations), batch):
        tokens += sum(
            r.completion_tokens for r in backend.complete(conversations[i : i + batch], params)
        )
    return tokens / (time.perf_counter() - started), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    tasks = generate("arithmetic", "test", args.prompts)
    conversations = [[{"role": "user", "content": t.input}] for t in tasks]
    params = GenerationParams(max_tokens=args.tokens)
    rows = []
    local = LocalBackend(default_model_dir(Settings().cache_dir), max_batch=8, threads=2)
    local.complete(conversations[:1], GenerationParams(max_tokens=4))  # warm-up
    rows.append(("transformers, batch 1", *measure(local, conversations, params, 1)))
    rows.append(("transformers, batch 8", *measure(local, conversations, params, 8)))
    with tempfile.TemporaryDirectory() as tmp:
        server = start_llama_server(smollm2_gguf(), Path(tmp) / "llama.log", threads=2)
        try:
            remote = OpenAIBackend("smollm2", base_url=server.base_url, concurrency=8)
            remote.complete(conversations[:1], GenerationParams(max_tokens=4))
            rows.append(
                ("llama.cpp server via openai, serial", *measure(remote, conversations, params, 1))
            )
            rows.append(
                (
                    "llama.cpp server via openai, 8 concurrent",
                    *measure(remote, conversations, params, 8),
                )
            )
        finally:
            server.stop()
    baseline = rows[0][1]
    print(f"{'backend':45} {'tokens/s':>9} {'tokens':>7} {'vs batch 1':>10}")
    for name, rate, tokens in rows:
        print(f"{name:45} {rate:9.1f} {tokens:7d} {rate / baseline:9.2f}x")


if __name__ == "__main__":
    main()
