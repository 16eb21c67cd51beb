"""An `atlas` command run as a background service of the local stack (the web console, the
OTLP receiver): its own session (Ctrl-C in the starting terminal does not reach it), its output
in a 0600 log file, started only once it answers, and stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.local.processes import StackError, log_tail, stop_pid

MARKER = "atlas.cli"  # in each service's command line: guards against PID reuse


def start_service(
    what: str, args: list[str], home: Path, log: Path, probe: str, timeout: float = 60.0
) -> int:
    """Start ``python -m atlas.cli *args`` for the stack in ``home`` and return its PID once
    ``probe`` (a URL) answers 200. StackError, with the log's last lines, if it exits first; if
    it does not answer within ``timeout`` it is stopped by PID and StackError says so."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        os.chmod(log, 0o600)
        process = subprocess.Popen(
            [sys.executable, "-m", MARKER, *args],
            env={**os.environ, "ATLAS_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited during start-up: {log_tail(log, 3)}")
        try:
            with urllib.request.urlopen(probe, timeout=1) as answer:
                if answer.status == 200:
                    return process.pid
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    stop_pid(process.pid, MARKER)
    raise StackError(f"{what} did not answer within {timeout:.0f}s; see {log}")
