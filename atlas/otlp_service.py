"""The OTLP receiver as a service of the local stack: ``atlas up --otlp PORT`` starts
``atlas worker otlp`` in the background (its log in ``$ATLAS_HOME/workers/otlp.log``, its PID
and address in ``$ATLAS_HOME/otlp.json``), ``atlas down`` stops it by PID first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from atlas.settings import Settings
from deploy.local.processes import StackError, log_tail, pid_alive, require_free_port, stop_pid
from schemas.secrets import write_private

MARKER = "atlas.cli"  # in the receiver's command line: guards against PID reuse


@dataclass
class OtlpState:
    pid: int
    url: str
    port: int
    log: str


def _state_file(settings: Settings) -> Path:
    return settings.home / "otlp.json"


def read_state(settings: Settings) -> OtlpState | None:
    try:
        return OtlpState(**json.loads(_state_file(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running(settings: Settings) -> OtlpState | None:
    state = read_state(settings)
    return state if state is not None and pid_alive(state.pid, MARKER) else None


def start(settings: Settings, port: int, timeout: float = 60.0) -> OtlpState:
    """Start the receiver on 127.0.0.1:``port``; return once it answers."""
    if (current := running(settings)) is not None:
        return current
    require_free_port(port, "the OTLP receiver")
    log = settings.home / "workers" / "otlp.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        os.chmod(log, 0o600)
        process = subprocess.Popen(
            [sys.executable, "-m", MARKER, "worker", "otlp", "--port", str(port)],
            env={**os.environ, "ATLAS_HOME": str(settings.home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = OtlpState(process.pid, f"http://127.0.0.1:{port}", port, str(log))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the OTLP receiver exited during start-up: {log_tail(log, 3)}")
        try:
            with urllib.request.urlopen(f"{state.url}/atlas/stats", timeout=1) as answer:
                if answer.status == 200:
                    write_private(_state_file(settings), json.dumps(asdict(state)))
                    return state
        except OSError:
            time.sleep(0.2)
    stop_pid(process.pid, MARKER)
    raise StackError(f"the OTLP receiver did not answer within {timeout:.0f}s; see {log}")


def stop(settings: Settings) -> str | None:
    """Stop the receiver by PID; what was stopped, or None."""
    state = read_state(settings)
    if state is None or not stop_pid(state.pid, MARKER):
        return None
    return f"OTLP receiver (pid {state.pid})"
