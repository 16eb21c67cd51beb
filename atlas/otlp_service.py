"""The OTLP receiver as a service of the local stack: ``atlas up --otlp PORT`` starts
``atlas worker otlp`` in the background (its log in ``$ATLAS_HOME/workers/otlp.log``, its PID
and address in ``$ATLAS_HOME/otlp.json``), ``atlas down`` stops it by PID first."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from atlas.background import MARKER, start_service
from atlas.settings import Settings
from deploy.local.processes import pid_alive, require_free_port, stop_pid
from schemas.secrets import write_private


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
    url = f"http://127.0.0.1:{port}"
    args, probe = ["worker", "otlp", "--port", str(port)], f"{url}/atlas/stats"
    pid = start_service("the OTLP receiver", args, settings.home, log, probe, timeout)
    state = OtlpState(pid, url, port, str(log))
    write_private(_state_file(settings), json.dumps(asdict(state)))
    return state


def stop(settings: Settings) -> str | None:
    """Stop the receiver by PID; what was stopped, or None."""
    state = read_state(settings)
    if state is None or not stop_pid(state.pid, MARKER):
        return None
    return f"OTLP receiver (pid {state.pid})"
