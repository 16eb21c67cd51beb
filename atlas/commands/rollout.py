"""`atlas rollout`: canary rollouts of prompt versions and checkpoints: status, promote, abort.

A canary starts with `atlas prompts label --label canary --share S` (or `atlas checkpoints
label`, or from a learning job whose candidate passed its gate); `atlas worker rollouts`
decides it from live rewards. These commands show where each stands and let an operator end
one by hand: promote publishes the canary's version as production and removes its label; abort
removes the label (agents go back to production at their next task). Either way the controller
closes the rollout at its next observation, as ended by an operator.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from atlas.commands.common import (
    AgentOption,
    RoleOption,
    check_role,
    clear_errors,
    console,
    get_settings,
    publish_as_learner,
)
from atlas.settings import Settings

if TYPE_CHECKING:
    from schemas.models import CheckpointEvent, PromptVersion, RolloutKind

app = typer.Typer(
    help="Canary rollouts of prompt versions and checkpoints: status, promote, abort.",
    no_args_is_help=True,
)


class Kind(StrEnum):
    """What a rollout switches (``schemas.models.RolloutKind``)."""

    prompt = "prompt"
    checkpoint = "checkpoint"


KindOption = Annotated[
    Kind, typer.Option(help="prompt (a prompt version's canary) or checkpoint (model weights').")
]


def _running_canary(
    settings: Settings, agent: str, role: str, kind: RolloutKind
) -> PromptVersion | CheckpointEvent:
    """The agent/role's canary on the prompts (or checkpoints) topic now; exit 2
    (BadParameter) without one."""
    from atlas.actions import version_labels
    from schemas.models import CANARY

    canary = version_labels(settings, agent, kind).get((role, CANARY))
    if canary is None:
        raise typer.BadParameter(f"{agent}/{role} has no {kind} canary")
    return canary


def end_canary(settings: Settings, agent: str, role: str, kind: RolloutKind = "prompt") -> None:
    """Remove the agent/role's canary label (a tombstone, as the learner): its rollout ends
    unpromoted, and agents run every task on production from their next one."""
    from schemas.models import CANARY
    from schemas.topics import ROLLOUT_EVENTS, topic_of, version_key

    topic = topic_of(ROLLOUT_EVENTS[kind])
    publish_as_learner(settings, [], [(topic, version_key(agent, role, CANARY).encode())])


@app.command("status")
@clear_errors
def rollout_status(
    ctx: typer.Context,
    agent: AgentOption,
    role: Annotated[str, typer.Option(help="One role (default: all).")] = "",
    history: Annotated[
        bool, typer.Option(help="Every stored status of each rollout, not only the latest.")
    ] = False,
) -> None:
    """Each rollout of the agent, newest first: versions, state, both arms' tasks and mean
    reward, the always-valid bounds on canary minus production, the share of production's
    right answers the canary kept on its own tasks (of how many: production's shadow answers),
    and why it stands there."""
    from store.client import connect
    from store.queries import rollout_statuses

    if role:
        check_role(role)
    settings = get_settings(ctx)
    statuses = rollout_statuses(connect(settings.store()), agent, role, latest=not history)
    table = Table(
        "role", "rollout", "canary", "prod.", "state", "canary n", "canary mean", "prod. n",
        "prod. mean", "difference", "right kept (n)", "kind", "updated", "reason",
    )  # fmt: skip
    for s in statuses:
        table.add_row(
            s.role,
            s.rollout_id[:12],
            f"v{s.canary_version}",
            f"v{s.production_version}",
            s.state,
            str(s.canary_count),
            "" if s.canary_mean is None else f"{s.canary_mean:.3f}",
            str(s.production_count),
            "" if s.production_mean is None else f"{s.production_mean:.3f}",
            f"[{s.lower:+.3f}, {s.upper:+.3f}]",
            "" if s.retention is None else f"{s.retention:.3f} ({s.right_count})",
            s.kind,
            f"{s.updated_at:%Y-%m-%d %H:%M:%S}",
            s.reason[:80],
        )
    console.print(table)
    if not statuses:
        console.print(f"no rollout of {agent} stored yet", highlight=False)


@app.command("promote")
@clear_errors
def rollout_promote(
    ctx: typer.Context,
    agent: AgentOption,
    role: RoleOption = "student",
    kind: KindOption = Kind.prompt,
) -> None:
    """Promote the running canary by hand: its version becomes production (the same number
    and text, or weights) and its label is removed, in one transaction, signed as the
    learner."""
    from runtime.rollout import promotion

    check_role(role)
    settings = get_settings(ctx)
    canary = _running_canary(settings, agent, role, kind.value)  # type: ignore[arg-type]
    production, tombstone = promotion(canary)
    publish_as_learner(settings, [production], [tombstone])
    console.print(
        f"promoted {agent}/{role} {kind.value} v{canary.version} (rollout {canary.rollout_id}) to"
        " production",
        highlight=False,
    )


@app.command("abort")
@clear_errors
def rollout_abort(
    ctx: typer.Context,
    agent: AgentOption,
    role: RoleOption = "student",
    kind: KindOption = Kind.prompt,
) -> None:
    """End the running canary without promoting it: its label is removed, and agents run
    every task on production again from their next one."""
    check_role(role)
    settings = get_settings(ctx)
    canary = _running_canary(settings, agent, role, kind.value)  # type: ignore[arg-type]
    end_canary(settings, agent, role, kind.value)  # type: ignore[arg-type]
    console.print(
        f"aborted the rollout {canary.rollout_id} of {agent}/{role} v{canary.version}",
        highlight=False,
    )
