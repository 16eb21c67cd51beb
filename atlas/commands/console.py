"""`atlas console`: the web console in the foreground, until SIGINT or SIGTERM."""

from __future__ import annotations

from typing import Annotated

import typer

from atlas.commands.common import clear_errors, configure_logging, console, get_settings

app = typer.Typer()
PortOption = Annotated[
    int | None,
    typer.Option(min=1, max=65535, help="Port on 127.0.0.1 (default: ATLAS_CONSOLE_PORT, 8770)."),
]


@app.command("console")
@clear_errors
def console_command(ctx: typer.Context, port: PortOption = None) -> None:
    """The web console on 127.0.0.1: agents with their reward trend and alerts, traces
    (searchable by agent, time, reward and prompt version, each with its closed loop, judges
    and feedback), jobs with live progress and lineage, prompt and checkpoint versions with
    diffs, labels, and rollback and retrain buttons (each publishes what the CLI command
    publishes, after a confirmation). Sign in as user `atlas` with the password in
    ATLAS_CONSOLE_PASSWORD or $ATLAS_HOME/secrets/console.password (made on first use, 0600).
    `atlas up` starts it too (--no-console to not)."""
    import logging

    from atlas.console.server import HOST, password_source, serve

    settings = get_settings(ctx)
    port = port or settings.console_port
    configure_logging(logging.INFO, quiet=("uvicorn.error",))
    where = password_source(settings)
    console.print(f"atlas console on http://{HOST}:{port} (user atlas, password: {where})")
    serve(settings, port)
