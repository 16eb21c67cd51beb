"""What the recording proxy adds to a chat completion's latency, in one run: the same requests
sent directly to an upstream and through the proxy, interleaved (direct, proxied, direct, ...)
so both see the same machine, non-streamed (time to the whole answer) and streamed (time to
the last chunk), with p50/p99 of each and of the added time per pair.

    .venv/bin/python benchmarks/proxy.py [--requests 300] [--llama 40] [--kafka]

Upstreams: a tiny fake OpenAI server (tests/fake_openai.py: answers at once, so the figure is
the proxy's own cost) and, with ``--llama N`` (0 skips it), llama.cpp's server on the offline
GGUF (4 new tokens at temperature 0: a real model, whose own variance is part of the figure).
Recording goes to the local stack's Kafka with ``--kafka`` (`atlas up` first), else to an
in-memory producer; either way it happens on the recorder's thread. The time the request
handler spends handing an exchange to the recorder (``submit``) is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.exchange import to_event
from ingest.proxy import AGENT_HEADER, ProxyConfig
from ingest.serving import ServerThread, open_recorder, proxy_on_thread
from runtime.recorder import Recorder
from tests.fake_openai import FakeUpstream


class NullProducer:
    delivered = 0
    spilled = 0

    def send(self, _event: Any) -> None:
        self.delivered += 1

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(client: httpx.Client, url: str, body: dict[str, Any], stream: bool) -> float:
    started = time.perf_counter()
    if stream:
        with client.stream("POST", url, json={**body, "stream": True}) as answer:
            for _ in answer.iter_raw():
                pass
            answer.raise_for_status()
    else:
        client.post(url, json=body).raise_for_status()
    return (time.perf_counter() - started) * 1000


def compare(name: str, direct_url: str, proxy_url: str, body: dict[str, Any], n: int, key: str):
    headers = {"Authorization": f"Bearer {key}", AGENT_HEADER: "bench"}
    rows = []
    with httpx.Client(headers=headers, timeout=120) as client:
        for stream in (False, True):
            for _ in range(3):  # warm both paths (connections, caches)
                timed(client, direct_url, body, stream)
                timed(client, proxy_url, body, stream)
            direct, proxied = [], []
            for _ in range(n):
                direct.append(timed(client, direct_url, body, stream))
                proxied.append(timed(client, proxy_url, body, stream))
            added = [p - d for p, d in zip(proxied, direct, strict=True)]
            rows.append(
                (f"{name}, {'streamed' if stream else 'not streamed'}", direct, proxied, added)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per path, fake upstream")
    parser.add_argument("--llama", type=int, default=40, help="per path, llama.cpp; 0 skips")
    parser.add_argument("--kafka", action="store_true", help="record to the local stack's Kafka")
    args = parser.parse_args()

    if args.kafka:
        from atlas.settings import Settings

        recorder = open_recorder(Settings().kafka_config("agent"))
        sink = "the local stack's Kafka (acks=all)"
    else:
        recorder = Recorder(NullProducer, convert=to_event).start()
        sink = "an in-memory producer"
    submits: list[float] = []
    submit = recorder.submit

    def timed_submit(item: Any) -> bool:
        started = time.perf_counter()
        try:
            return submit(item)
        finally:
            submits.append((time.perf_counter() - started) * 1e6)

    recorder.submit = timed_submit  # type: ignore[method-assign]
    body = {"model": "echo-1", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    rows = []
    fake = FakeUpstream()
    upstream = ServerThread(fake.app)
    _proxy, server = proxy_on_thread(ProxyConfig(f"{upstream.url}/v1"), recorder)
    try:
        rows += compare(
            "fake upstream",
            f"{upstream.url}/v1/chat/completions",
            f"{server.url}/v1/chat/completions",
            body,
            args.requests,
            "k",
        )
    finally:
        server.stop()
        upstream.stop()
    if args.llama:
        from deploy.local.llama_server import start_llama_server
        from runtime.backends.local import smollm2_gguf

        with tempfile.TemporaryDirectory() as tmp:
            llama = start_llama_server(smollm2_gguf(), Path(tmp) / "llama.log", threads=2)
            _proxy, server = proxy_on_thread(ProxyConfig(llama.base_url), recorder)
            try:
                rows += compare(
                    "llama.cpp, 4 tokens",
                    f"{llama.base_url}/chat/completions",
                    f"{server.url}/v1/chat/completions",
                    {**body, "temperature": 0, "max_tokens": 4},
                    args.llama,
                    "k",
                )
            finally:
                server.stop()
                llama.stop()
    deadline = time.monotonic() + 30
    while recorder.stats()["queued"] and time.monotonic() < deadline:
        time.sleep(0.1)
    recorder.close()
    print(f"recording to {sink}; {len(rows[0][1])} requests per path (fake upstream)")
    print(
        f"{'upstream, mode':34} {'direct p50/p99 ms':>19} {'proxied p50/p99 ms':>19}"
        f" {'added p50/p99 ms':>17}"
    )
    for name, direct, proxied, added in rows:
        print(
            f"{name:34} {percentile(direct, 0.5):8.2f} /{percentile(direct, 0.99):8.2f}"
            f" {percentile(proxied, 0.5):8.2f} /{percentile(proxied, 0.99):8.2f}"
            f" {percentile(added, 0.5):7.2f} /{percentile(added, 0.99):7.2f}"
        )
    print(
        f"handing an exchange to the recorder (submit, on the request's path): median"
        f" {statistics.median(submits):.1f} µs, max {max(submits):.1f} µs over {len(submits)}"
    )
    print(f"recorder: {recorder.stats()}")


if __name__ == "__main__":
    main()
