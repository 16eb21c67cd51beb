"""`atlas retrain gepa|grpo|rim`: an operator's RetrainTrigger, for a worker to pick up."""

from __future__ import annotations

from typing import Annotated

import typer

from atlas.commands.common import (
    DAY,
    AgentOption,
    SinceOption,
    Window,
    clear_errors,
    console,
    get_settings,
)

app = typer.Typer(
    help="Ask for a retrain job: produces a RetrainTrigger that a worker picks up.",
    no_args_is_help=True,
)
ParamOption = Annotated[
    list[str],
    typer.Option(help="NAME=VALUE overriding a knob of the job's config (section.name nests)."),
]


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        params[name] = value
    return params


def _request_retrain(
    ctx: typer.Context, kind: str, agent: str, since: Window, budget: int | None, param: list[str]
) -> None:
    """Produce the trigger, once its budget and params are known to fit the job's config (a
    usage error otherwise, and nothing produced); print its id."""
    from atlas.actions import ActionRefused, request_retrain

    params = _parse_params(param)
    try:
        trigger = request_retrain(
            get_settings(ctx), kind, agent, since.text, since.length, budget, params
        )
    except ActionRefused as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.param) from None
    console.print(trigger.trigger_id)


@app.command("gepa")
@clear_errors
def retrain_gepa(
    ctx: typer.Context,
    agent: AgentOption,
    since: SinceOption = DAY,
    budget: Annotated[
        int | None, typer.Option(min=1, help="Metric calls (default: configs/gepa.yaml).")
    ] = None,
    param: ParamOption = [],  # noqa: B006 (typer needs a literal default)
) -> None:
    """Evolve the agent's system prompts with GEPA on its stored traces (`atlas worker gepa`).
    Prints the trigger id; follow the job with `atlas jobs`."""
    _request_retrain(ctx, "gepa", agent, since, budget, param)


@app.command("grpo")
@clear_errors
def retrain_grpo(
    ctx: typer.Context,
    agent: AgentOption,
    since: SinceOption = DAY,
    budget: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    param: ParamOption = [],  # noqa: B006
) -> None:
    """Fine-tune the agent's model with GRPO on its stored traces (`atlas worker grpo`)."""
    _request_retrain(ctx, "grpo", agent, since, budget, param)


@app.command("rim")
@clear_errors
def retrain_rim(
    ctx: typer.Context,
    agent: AgentOption,
    since: SinceOption = DAY,
    budget: Annotated[
        int | None, typer.Option(min=1, help="Weight-search rounds (default: calibration.yaml).")
    ] = None,
    param: ParamOption = [],  # noqa: B006
) -> None:
    """Calibrate the judges to the agent's users (`atlas worker rim`): fit the judge weights and
    a monotone map of their score on the traces with human feedback in the window, and publish
    a new RIM version (that reward workers switch to) only if agreement with the humans improves
    on held-out traces; otherwise the job ends REJECTED with both sides' figures."""
    _request_retrain(ctx, "rim", agent, since, budget, param)
