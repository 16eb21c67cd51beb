"""`atlas checkpoints`: published model checkpoints: list, label (a canary), roll back.

A rollback publishes a new version, a child of the current one, that serves earlier weights;
it is published by the learner in a transaction (signed when this host has the key).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from atlas.commands.common import (
    AgentOption,
    LabelledVersionOption,
    LabelOption,
    RemoveOption,
    RoleOption,
    ShareOption,
    check_role,
    clear_errors,
    console,
    get_settings,
    label_command,
    labels_on,
    version_cells,
)

app = typer.Typer(
    help="Published model checkpoints: list, label (a canary), roll back.", no_args_is_help=True
)


@app.command("list")
@clear_errors
def checkpoints_list(
    ctx: typer.Context,
    agent: AgentOption,
    role: Annotated[str, typer.Option(help="One role.")] = "",
) -> None:
    """Every stored checkpoint of the agent, with lineage, held-out figures and the labels on
    it now (production: what agents load, marked *; canary with its share)."""
    from runtime.checkpoints import checkpoint_labels
    from schemas.models import PRODUCTION
    from store.client import connect
    from store.queries import checkpoint_history

    settings = get_settings(ctx)
    table = Table(
        "role", "version", "parent", "source", "created", "held-out", "prev.", "labels", "job",
        "uri",
    )  # fmt: skip
    history = checkpoint_history(connect(settings.store()), agent, role)
    labels = {}
    if history:  # one read of the checkpoints topic for every row
        labels = checkpoint_labels(settings.kafka_config(), agent, settings.codec())
    for c in history:
        on = labels_on(labels, c)  # type: ignore[arg-type]
        table.add_row(*version_cells(c, PRODUCTION in on), ", ".join(on), c.job_id or "", c.uri)
    console.print(table)
    console.print("* = in use now (production); version 0 is the base model")


@app.command("label")
@clear_errors
def checkpoints_label(
    ctx: typer.Context,
    agent: AgentOption,
    label: LabelOption,
    role: RoleOption = "student",
    version: LabelledVersionOption = None,
    share: ShareOption = 0.1,
    remove: RemoveOption = False,
) -> None:
    """Put a label on a stored checkpoint, or remove one. Labels live on the checkpoints topic
    (key agent/role@label): agents that follow checkpoints (`atlas agent run
    --follow-checkpoints`) load a canary beside production and run --share of their tasks on
    it (an arm per task from a hash of its trace id and the rollout id, recorded in each
    InteractionEvent); `atlas worker rollouts` then promotes or rolls it back from live
    rewards. Production is not a label you set: it moves with `atlas checkpoints rollback`
    and with what a GRPO job publishes. One canary per agent/role at a time."""
    label_command(ctx, agent, role, label, version, share, remove, "checkpoint")


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
