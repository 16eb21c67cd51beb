"""Starting, finding and stopping the local stack's processes: free ports, PIDs, logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


class StackError(Exception):
    """Something about the local stack a person has to act on; the message says what."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """No one listens on the port (connections in TIME_WAIT from a stopped server do not
    count, as servers bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def require_free_port(port: int, what: str) -> int:
    if not port_is_free(port):
        raise StackError(f"port {port} on 127.0.0.1 is already taken; choose another for {what}")
    return port


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker`` (guards PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


def stop_pid(pid: int, marker: str, timeout: float = 30.0) -> bool:
    """SIGTERM the process, SIGKILL it after ``timeout``; False if it was not running."""
    if not pid_alive(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            _reap(pid)
            return True
        time.sleep(0.1)
    return kill_pid(pid, marker)


def kill_pid(pid: int, marker: str) -> bool:
    """SIGKILL the process at once (a crash, for fault tests); False if it was not running."""
    if not pid_alive(pid, marker):
        return False
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid, marker):
        time.sleep(0.05)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
