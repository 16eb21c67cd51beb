"""`atlas checkpoints`: published model checkpoints: list, roll back.

A rollback publishes a new version, a child of the current one, that serves earlier weights;
it is published by the learner in a transaction (signed when this host has the key).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from atlas.commands.common import (
    AgentOption,
    RoleOption,
    check_role,
    clear_errors,
    console,
    get_settings,
    version_cells,
)

app = typer.Typer(help="Published model checkpoints: list, roll back.", no_args_is_help=True)


@app.command("list")
@clear_errors
def checkpoints_list(
    ctx: typer.Context,
    agent: AgentOption,
    role: Annotated[str, typer.Option(help="One role.")] = "",
) -> None:
    """Every stored checkpoint of the agent, with lineage and held-out figures; the one in
    use now is marked."""
    from runtime.checkpoints import current_checkpoints
    from store.client import connect
    from store.queries import checkpoint_history

    settings = get_settings(ctx)
    table = Table(
        "role", "version", "parent", "source", "created", "held-out", "prev.", "job", "uri"
    )
    history = checkpoint_history(connect(settings.store()), agent, role)
    live = (  # one read of the checkpoints topic for every row
        current_checkpoints(
            settings.kafka_config(), agent, {c.role for c in history}, settings.codec()
        )
        if history
        else {}
    )
    for c in history:
        in_use = c.role in live and live[c.role].version == c.version
        table.add_row(*version_cells(c, in_use), c.job_id or "", c.uri)
    console.print(table)
    console.print("* = in use now; version 0 is the base model")


@app.command("rollback")
@clear_errors
def checkpoints_rollback(
    ctx: typer.Context,
    agent: AgentOption,
    role: RoleOption = "teacher",
    to: Annotated[
        int | None, typer.Option(help="Version to restore (default: the current one's parent).")
    ] = None,
) -> None:
    """Make an earlier checkpoint current again, as a new version (agents that follow
    checkpoints switch before their next task)."""
    from atlas.actions import ActionRefused, rollback_checkpoint

    check_role(role)
    try:
        restored, event = rollback_checkpoint(get_settings(ctx), agent, role, to)
    except ActionRefused as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(f"{agent}/{role}: checkpoint v{restored} restored as v{event.version}")
