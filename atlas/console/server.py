"""Running the console: in the foreground (`atlas console`), or as a process of the local stack
(`atlas up --console`), recorded in stack.json and stopped by PID with the stack.

It listens on 127.0.0.1 only; the password (user ``atlas``) is ATLAS_CONSOLE_PASSWORD or the
0600 file ``$ATLAS_HOME/secrets/console.password``; neither is ever printed.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas.background import MARKER, start_service
from atlas.settings import Settings
from deploy.local.processes import pid_alive, require_free_port, stop_pid

HOST = "127.0.0.1"


@dataclass
class ConsoleState:
    pid: int
    url: str
    port: int
    log: str


def serve(settings: Settings, port: int) -> None:
    """Serve the console in this process until SIGINT or SIGTERM."""
    import uvicorn

    from atlas.console.app import console_password, create_app

    require_free_port(port, "the console")
    app = create_app(settings, console_password(settings))
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def password_source(settings: Settings) -> str:
    """Where the password is, for people (never the password itself)."""
    if settings.console_password:
        return "ATLAS_CONSOLE_PASSWORD"
    return str(settings.secrets_dir / "console.password")


def start_console(settings: Settings, port: int, timeout: float = 60.0) -> ConsoleState:
    """Start `atlas console` as a process of its own for the stack of ``settings``; return once
    it answers /ping."""
    from atlas.console.app import console_password

    require_free_port(port, "the console")
    console_password(settings)  # made now, so the caller can say where it is
    log = settings.home / "console.out"
    url = f"http://{HOST}:{port}"
    pid = start_service(
        "the console", ["console", "--port", str(port)], settings.home, log, f"{url}/ping", timeout
    )
    return ConsoleState(pid, url, port, str(log))


def stop_console(state: ConsoleState) -> bool:
    """Stop the console process by its PID; False if it was not running."""
    return stop_pid(state.pid, MARKER)


def console_running(state: ConsoleState) -> bool:
    return pid_alive(state.pid, MARKER)
