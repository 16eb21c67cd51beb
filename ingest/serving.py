"""Running the recording proxy: its API-key file, its recorder on Kafka, and uvicorn, in the
foreground (``atlas proxy``) or on a thread (tests, benchmarks).

The key file maps agent ids to the API keys their clients send (YAML, ``agent: key`` or
``agent: [key, ...]``); like every secret file it must be readable by its owner only (mode
0600). Only sha256 digests of the keys are kept, and each key is registered with the log
scrubber, so no log line can show one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import uvicorn
import yaml

from ingest.proxy import ProxyConfig, RecordingProxy, key_digest
from ingest.recorder import PROXY_METRICS, Recorder
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.configfile import ConfigError
from schemas.models import path_component
from schemas.secrets import read_secret, remember


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
    delivery_timeout_s: float = 60.0,
    capacity: int = 10_000,
) -> Recorder:
    """A started recorder producing with ``EventProducer`` (``acks=all``, spilling to
    ``spill_path``: an earlier run's spill is sent first, on the recorder's thread)."""

    def producer() -> EventProducer:
        return EventProducer(
            kafka_config,
            codec=codec,
            delivery_timeout_s=delivery_timeout_s,
            block_seconds=1.0,
            spill_path=spill_path,
            metrics=PROXY_METRICS,
        )

    return Recorder(producer, capacity=capacity, spill_path=spill_path).start()


def uvicorn_config(proxy: RecordingProxy, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        proxy.app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # a request line names no key, yet the proxy logs no traffic
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def serve(proxy: RecordingProxy, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then record what is queued and close the producer."""
    try:
        uvicorn.Server(uvicorn_config(proxy, host, port)).run()
    finally:
        proxy.recorder.close()


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
