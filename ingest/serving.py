"""Running the edges: the recording proxy (its API-key file, its recorder on Kafka) and the
OTLP receiver (its acknowledged sender), served by uvicorn in the foreground (``atlas proxy``,
``atlas worker otlp``) or on a thread (tests, benchmarks).

The key file maps agent ids to the API keys their clients send (YAML, ``agent: key`` or
``agent: [key, ...]``); like every secret file it must be readable by its owner only (mode
0600). Only sha256 digests of the keys are kept, and each key is registered with the log
scrubber, so no log line can show one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from ingest.exchange import to_event
from ingest.otlp import AckedSender
from ingest.proxy import ProxyConfig, RecordingProxy, key_digest
from runtime.metrics import WorkerMetrics
from runtime.producer import EventProducer
from runtime.recorder import Recorder
from runtime.recorder import open_recorder as runtime_recorder
from schemas.codec import AvroCodec
from schemas.configfile import ConfigError
from schemas.models import path_component
from schemas.secrets import read_secret, remember

MAX_CONNECTIONS = 1024

PROXY_METRICS = WorkerMetrics("proxy")  # the proxy's recorder and producer
OTLP_METRICS = WorkerMetrics("otlp")  # what the OTLP receiver's producer got acknowledged


def load_agent_keys(path: Path) -> dict[str, str]:
    """{sha256 of a key: agent id} from the key file at ``path``; ConfigError (one line that
    never shows a key) if it is readable by others, not YAML or not such a mapping."""
    text = read_secret(path).get_secret_value()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML (agent: key, or agent: [keys])") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must map agent ids to keys (agent: key, or agent: [keys])")
    digests: dict[str, str] = {}
    for agent, keys in raw.items():
        try:
            path_component(str(agent), "agent id")
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        listed = keys if isinstance(keys, list) else [keys]
        for key in listed:
            if not isinstance(key, str) or len(key) < 8:
                raise ConfigError(f"{path}: agent {agent}: each key must be text of 8+ characters")
            remember(key)
            digest = key_digest(key)
            if digests.get(digest, agent) != agent:
                raise ConfigError(f"{path}: one key is given to {digests[digest]} and {agent}")
            digests[digest] = str(agent)
    return digests


def open_recorder(
    kafka_config: dict[str, str],
    codec: AvroCodec | None = None,
    spill_path: Path | None = None,
    **options: Any,
) -> Recorder:
    """The proxy's started recorder: ``runtime.recorder.open_recorder`` (``options``: its
    delivery timeout and capacity) turning exchanges into interactions, counted as the
    ``proxy`` worker's metrics."""
    return runtime_recorder(
        kafka_config,
        codec,
        spill_path,
        convert=to_event,
        name="proxy-recorder",
        metrics=PROXY_METRICS,
        **options,
    )


def serve(app: Any, host: str, port: int, close: Callable[[], None]) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (requests in flight get 10 s to finish), then
    ``close`` (record what is queued, close the producer). At most ``MAX_CONNECTIONS``
    connections at once: uvicorn answers more with 503."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # a request line names no key, yet the edges log no traffic
        lifespan="on",
        timeout_graceful_shutdown=10,
        limit_concurrency=MAX_CONNECTIONS,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        close()


def open_sender(
    kafka_config: dict[str, str], codec: AvroCodec | None = None, delivery_timeout_s: float = 60.0
) -> AckedSender:
    """The OTLP receiver's sender: ``EventProducer`` (``acks=all``), no spill file (a request
    is answered 200 only once acknowledged, so the exporter keeps what is not), and a send
    never blocking longer than a second on a full buffer."""
    producer = EventProducer(
        kafka_config,
        codec=codec,
        delivery_timeout_s=delivery_timeout_s,
        block_seconds=1.0,
        metrics=OTLP_METRICS,
    )
    return AckedSender(producer)


class ServerThread:
    """``proxy`` (or any ASGI app's owner) served by uvicorn on a thread; ``stop()`` ends it."""

    def __init__(self, app: object, host: str = "127.0.0.1", port: int = 0):
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {host}:{port} did not start")
            time.sleep(0.01)
        sockets = self.server.servers[0].sockets
        self.host, self.port = host, int(sockets[0].getsockname()[1])

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def proxy_on_thread(
    config: ProxyConfig, recorder: Recorder, host: str = "127.0.0.1", port: int = 0
) -> tuple[RecordingProxy, ServerThread]:
    """A proxy served on a thread (port 0: a free one), for tests and benchmarks."""
    proxy = RecordingProxy(config, recorder)
    return proxy, ServerThread(proxy.app, host, port)
