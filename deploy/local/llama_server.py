"""llama.cpp's OpenAI-compatible server (llama-cpp-python) on 127.0.0.1, as a process we own.

A real OpenAI-API peer for the ``openai`` backend, serving the offline GGUF model ~6x faster
than transformers on CPU.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import StackError, free_port, log_tail, stop_pid

MAIN = "llama_cpp.server"


@dataclass
class LlamaServer:
    pid: int
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop_pid(self.pid, MAIN)


def start_llama_server(
    gguf: Path,
    log: Path,
    port: int | None = None,
    api_key: str | None = None,
    threads: int = 2,
    timeout: float = 120.0,
) -> LlamaServer:
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        MAIN,
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        str(threads),
    ]
    if api_key:
        command += ["--api_key", api_key]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LlamaServer(process.pid, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:  # not the PID's cmdline: right after fork it is ours
            raise StackError(f"llama.cpp server exited during start-up: {log_tail(log, 5)}")
        try:
            urllib.request.urlopen(f"{server.base_url}/models", timeout=1).close()
            return server
        except urllib.error.HTTPError:
            return server  # it answers (401 when a key is required): it is up
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise StackError(f"llama.cpp server did not answer within {timeout:.0f}s; see {log}")
