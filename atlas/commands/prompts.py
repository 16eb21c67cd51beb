"""`atlas prompts`: the agents' prompt versions: list, show, set (through the gate), roll back.

Every new version is a child of the version agents use now, published by the learner in a
transaction (signed when this host has the key); agents pick it up live.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from atlas.actions import ActionRefused, current_versions
from atlas.commands.common import (
    DAY,
    AgentOption,
    LabelledVersionOption,
    LabelOption,
    RemoveOption,
    RoleOption,
    ShareOption,
    SinceOption,
    Window,
    check_role,
    clear_errors,
    console,
    err,
    get_settings,
    label_command,
    labels_on,
    policy_line,
    publish_as_learner,
    version_cells,
)
from atlas.settings import Settings

if TYPE_CHECKING:
    from schemas.models import Lineage, PromptVersion

app = typer.Typer(
    help="Prompt versions: list, show, set (through the gate), roll back.", no_args_is_help=True
)


def publish_versions(settings: Settings, versions: list[PromptVersion]) -> None:
    publish_as_learner(settings, versions)
    print_published(versions)


def print_published(versions: list[PromptVersion]) -> None:
    for v in versions:
        console.print(f"published {v.agent_id}/{v.role} v{v.version} ({v.source})")


@app.command("list")
@clear_errors
def prompts_list(
    ctx: typer.Context,
    agent: AgentOption,
    role: Annotated[str, typer.Option(help="One role (rim: the judges' calibrations).")] = "",
) -> None:
    """Every stored version of the agent's prompts, with lineage, held-out figures and the
    labels on it now (production: what agents use, marked *; canary with its share)."""
    from runtime.prompts import current_labels
    from schemas.models import PRODUCTION
    from store.client import connect
    from store.queries import prompt_history

    settings = get_settings(ctx)
    labels = current_labels(settings.kafka_config(), agent, settings.codec())
    table = Table(
        "role",
        "version",
        "parent",
        "source",
        "created",
        "held-out",
        "prod.",
        "non-degr.",
        "labels",
        "job",
        "text",
    )
    for v in prompt_history(connect(settings.store()), agent, role):
        on = labels_on(labels, v)  # type: ignore[arg-type]
        live = PRODUCTION in on
        non_degradation = "" if v.non_degradation is None else f"{v.non_degradation:.3f}"
        text = v.text[:50].replace("\n", " ")
        cells = (non_degradation, ", ".join(on), v.job_id or "", text)
        table.add_row(*version_cells(v, live), *cells)
    console.print(table)
    console.print(
        "* = in use now (production); version 0 is the seed in configs/agent.yaml"
        " (role rim, the judges' calibration: configs/rim.yaml)"
    )


@app.command("show")
@clear_errors
def prompts_show(
    ctx: typer.Context,
    agent: AgentOption,
    role: RoleOption = "student",
    version: Annotated[int | None, typer.Option(help="Default: the version in use now.")] = None,
) -> None:
    """One prompt version's full text and lineage."""
    from schemas.models import Lineage
    from store.client import connect
    from store.queries import prompt_version

    check_role(role)
    settings = get_settings(ctx)
    chosen = current_versions(settings, agent)[role]
    if version is not None and version != chosen.version:
        stored = prompt_version(connect(settings.store()), agent, role, version)
        if stored is None:
            raise typer.BadParameter(
                f"no stored version {version} of {agent}/{role}", param_hint="--version"
            )
        chosen = stored
    for name in ("version", "parent_version", "source", "created_at", *Lineage.model_fields):
        console.print(f"{name}: {getattr(chosen, name)}")
    console.print(chosen.text, highlight=False, markup=False)
    for i, shot in enumerate(chosen.demonstrations, 1):
        console.print(f"demonstration {i}: {shot.input!r} -> {shot.output!r}", highlight=False)
    if role == "student":
        console.print(f"memory policy: {policy_line(chosen.memory)}", highlight=False)


@app.command("set")
@clear_errors
def prompts_set(
    ctx: typer.Context,
    agent: AgentOption,
    role: RoleOption = "student",
    text: Annotated[str | None, typer.Option(help="The new prompt text.")] = None,
    file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Read it from a file.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Publish without the held-out gate.")] = False,
    since: SinceOption = DAY,
    task: Annotated[list[str], typer.Option(help="Also gate on this built-in task family.")] = [],  # noqa: B006
) -> None:
    """Publish a hand-written prompt. It faces the same held-out gate as GEPA's candidates
    (evaluated with the agent's models) unless --force."""
    from runtime.prompts import next_versions

    check_role(role)
    if (text is None) == (file is None):
        raise typer.BadParameter("give exactly one of --text and --file")
    new_text = text if text is not None else file.read_text()  # type: ignore[union-attr]
    if not new_text.strip():
        raise typer.BadParameter("the prompt text is empty")
    settings = get_settings(ctx)
    if force:
        current, lineage = current_versions(settings, agent), None
    else:
        current, lineage = gated(settings, agent, {role: new_text}, since, task)
    publish_versions(settings, next_versions(current, {role: new_text}, "manual", lineage=lineage))


def gated(
    settings: Settings, agent: str, proposed: dict[str, str], since: Window, families: list[str]
) -> tuple[dict[str, PromptVersion], Lineage]:
    """Production and ``proposed`` (a candidate's changed parts) on the held-out examples of
    the agent's traces since ``since`` and of ``families``: production and the passed gate's
    lineage, else exit 2 with the gate's reason (nothing published)."""
    from atlas.workers import gepa_job_context
    from consumers.gepa_worker import gate_manual_prompts

    with console.status("evaluating production and the proposal on held-out examples"):
        try:
            current, decision = gate_manual_prompts(
                gepa_job_context(settings), agent, proposed, since.start(), families
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    console.print(f"gate: {decision.reason}")
    if not decision.passed:
        err.print("[bold red]rejected:[/] nothing published (use --force to override)")
        raise typer.Exit(2)
    return current, decision.lineage()


@app.command("rollback")
@clear_errors
def prompts_rollback(
    ctx: typer.Context,
    agent: AgentOption,
    role: Annotated[
        str, typer.Option(help="student, teacher, or rim (the judges' calibration).")
    ] = "teacher",
    to: Annotated[
        int | None,
        typer.Option(help="Version to restore (default: the parent of the current one)."),
    ] = None,
) -> None:
    """Restore an earlier prompt's text as a new version (agents pick it up live)."""
    from atlas.actions import rollback_prompt
    from rim.calibration import RIM_ROLE

    if role != RIM_ROLE:
        check_role(role)
    settings = get_settings(ctx)
    try:
        rollback = rollback_prompt(settings, agent, role, to)
    except ActionRefused as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.param) from None
    print_published(rollback.published)
    restored = rollback.restored
    console.print(f"{agent}/{role}: {rollback.restored_what} of v{restored.version} restored")


@app.command("label")
@clear_errors
def prompts_label(
    ctx: typer.Context,
    agent: AgentOption,
    label: LabelOption,
    role: RoleOption = "student",
    version: LabelledVersionOption = None,
    share: ShareOption = 0.1,
    remove: RemoveOption = False,
) -> None:
    """Put a label on a stored prompt version, or remove one. Labels live on the prompts topic
    (key agent/role@label), so agents follow them live: a canary takes --share of the agent's
    tasks (an arm per task from a hash of its trace id and the rollout id, recorded in each
    InteractionEvent); other labels are bookmarks. Production is not a label you set: it moves
    with `atlas prompts set` and `rollback`. One canary per agent/role at a time."""
    label_command(ctx, agent, role, label, version, share, remove, "prompt")
