"""The console's buttons: prompt and checkpoint rollback, labels on prompt versions, retrain.
A GET shows what will happen (and the CLI command that does the same) with a confirm button;
only the confirming POST, with the page's CSRF token, acts, by calling the very function the
CLI calls (``atlas.actions``), so the event published is the one the CLI would publish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from atlas.console import params
from atlas.console.app import BadInput, check_csrf, page
from atlas.settings import Settings
from schemas.models import JobKind

router = APIRouter(prefix="/actions")


@dataclass(frozen=True)
class Action:
    """One button: the fields it reads, what it says before acting, and the act."""

    title: str
    fields: tuple[str, ...]
    describe: Callable[[dict[str, Any]], str]  # what will happen, in words
    command: Callable[[dict[str, Any]], str]  # the CLI command that does the same
    act: Callable[[Settings, dict[str, Any]], str]  # does it; says what was done


def _read(form: Mapping[str, Any]) -> dict[str, Any]:
    """Every field any action takes, checked; the empty ones None."""
    fields: dict[str, str | None] = {}
    for name in ("agent", "role", "to", "kind", "window", "budget", "label", "share"):
        value = form.get(name)
        if value is not None and not isinstance(value, str):  # a file in a multipart form
            raise BadInput(f"{name}: a text field")
        fields[name] = value
    kind = params.text(fields["kind"], "kind")
    if kind is not None and kind not in get_args(JobKind):
        raise BadInput(f"kind: one of {', '.join(get_args(JobKind))}")
    return {
        "agent": params.text(fields["agent"], "agent"),
        "role": params.role(fields["role"]) if fields["role"] else None,
        "to": params.integer(fields["to"], "to", 0),
        "kind": kind,
        "window": params.window(fields["window"], "24h"),
        "budget": params.integer(fields["budget"], "budget", 1),
        "label": params.text(fields["label"], "label", 64),
        "share": _share(fields["share"]),
    }


def _share(value: str | None) -> float:
    """A canary's share of tasks: what `atlas prompts label --share` takes, 0.1 by default."""
    share = params.number(value, "share", 1.0)
    if share is None:
        return 0.1
    if not 0.001 <= share <= 0.5:
        raise BadInput("share: between 0.001 and 0.5")
    return share


def _target(v: dict[str, Any]) -> str:
    return "its parent" if v["to"] is None else f"v{v['to']}"


def _to_option(v: dict[str, Any]) -> str:
    return "" if v["to"] is None else f" --to {v['to']}"


def _prompt_rollback(settings: Settings, v: dict[str, Any]) -> str:
    from atlas.actions import rollback_prompt

    done = rollback_prompt(settings, v["agent"], v["role"], v["to"])
    published = ", ".join(f"v{p.version}" for p in done.published)
    return (
        f"{v['agent']}/{v['role']}: {done.restored_what} of v{done.restored.version} restored,"
        f" published as {published}"
    )


def _checkpoint_rollback(settings: Settings, v: dict[str, Any]) -> str:
    from atlas.actions import rollback_checkpoint

    restored, event = rollback_checkpoint(settings, v["agent"], v["role"], v["to"])
    return f"{v['agent']}/{v['role']}: checkpoint v{restored} restored as v{event.version}"


def _retrain(settings: Settings, v: dict[str, Any]) -> str:
    from atlas.actions import request_retrain

    written, length = v["window"]
    trigger = request_retrain(settings, v["kind"], v["agent"], written, length, v["budget"], {})
    return f"trigger {trigger.trigger_id} sent: a {v['kind']} worker will pick it up"


def _label(settings: Settings, v: dict[str, Any]) -> str:
    from atlas.actions import label_version

    return label_version(settings, v["agent"], v["role"], v["label"], v["to"], v["share"], False)


def _unlabel(settings: Settings, v: dict[str, Any]) -> str:
    from atlas.actions import label_version

    return label_version(settings, v["agent"], v["role"], v["label"], None, v["share"], True)


def _share_text(v: dict[str, Any]) -> str:
    return f" on {v['share']:.1%} of tasks" if v["label"] == "canary" else ""


ACTIONS = {
    "prompt-rollback": Action(
        "Roll back a prompt",
        ("agent", "role", "to"),
        lambda v: (
            f"Publish a new version of {v['agent']}/{v['role']} with the text of"
            f" {_target(v)}; agents switch to it live."
        ),
        lambda v: f"atlas prompts rollback --agent {v['agent']} --role {v['role']}{_to_option(v)}",
        _prompt_rollback,
    ),
    "checkpoint-rollback": Action(
        "Roll back a checkpoint",
        ("agent", "role", "to"),
        lambda v: (
            f"Publish a new checkpoint version of {v['agent']}/{v['role']} serving the"
            f" weights of {_target(v)}."
        ),
        lambda v: (
            f"atlas checkpoints rollback --agent {v['agent']} --role {v['role']}" + _to_option(v)
        ),
        _checkpoint_rollback,
    ),
    "retrain": Action(
        "Retrain",
        ("agent", "kind", "window", "budget"),
        lambda v: (
            f"Ask for a {v['kind']} job on {v['agent']}'s traces of the last"
            f" {v['window'][0]}" + ("" if v["budget"] is None else f", budget {v['budget']}") + "."
        ),
        lambda v: (
            f"atlas retrain {v['kind']} --agent {v['agent']} --since {v['window'][0]}"
            + ("" if v["budget"] is None else f" --budget {v['budget']}")
        ),
        _retrain,
    ),
    "label": Action(
        "Label a prompt version",
        ("agent", "role", "to", "label", "share"),
        lambda v: (
            f"Put the label {v['label']} on {v['agent']}/{v['role']} v{v['to']}"
            f"{_share_text(v)}; agents follow labels live."
        ),
        lambda v: (
            f"atlas prompts label --agent {v['agent']} --role {v['role']} --label"
            f" {v['label']} --version {v['to']}"
            + (f" --share {v['share']:g}" if v["label"] == "canary" else "")
        ),
        _label,
    ),
    "unlabel": Action(
        "Remove a label",
        ("agent", "role", "label"),
        lambda v: f"Remove the label {v['label']} from {v['agent']}/{v['role']} (a tombstone).",
        lambda v: (
            f"atlas prompts label --agent {v['agent']} --role {v['role']} --label"
            f" {v['label']} --remove"
        ),
        _unlabel,
    ),
}
REQUIRED = {
    "prompt-rollback": ("agent", "role"),
    "checkpoint-rollback": ("agent", "role"),
    "retrain": ("agent", "kind"),
    "label": ("agent", "role", "to", "label"),
    "unlabel": ("agent", "role", "label"),
}


def _action(name: str, form: Mapping[str, Any]) -> tuple[Action, dict[str, Any]]:
    action = ACTIONS.get(name)
    if action is None:
        raise BadInput("no such action")
    values = _read(form)
    missing = [field for field in REQUIRED[name] if values[field] is None]
    if missing:
        raise BadInput(f"{action.title}: give {' and '.join(missing)}")
    return action, values


def _hidden(action: Action, form: Mapping[str, Any]) -> dict[str, str]:
    """The fields the confirm form posts back, as they were given."""
    return {field: str(form.get(field) or "") for field in action.fields}


@router.get("/{name}", response_class=HTMLResponse)
def confirm(request: Request, name: str) -> HTMLResponse:
    """What the action will do, and the button that does it."""
    action, values = _action(name, request.query_params)
    return page(
        request,
        "confirm.html",
        name=name,
        action=action,
        description=action.describe(values),
        command=action.command(values),
        hidden=_hidden(action, request.query_params),
    )


@router.post("/{name}", response_class=HTMLResponse)
async def perform(request: Request, name: str) -> HTMLResponse:
    """Do the confirmed action (the same function as its CLI command); say what was done, or
    why it was refused (400, nothing published)."""
    from starlette.concurrency import run_in_threadpool

    from atlas.actions import ActionRefused

    form = await request.form()
    check_csrf(request, str(form.get("csrf", "")), request.app.state.csrf)
    action, values = _action(name, form)
    try:
        done = await run_in_threadpool(action.act, request.app.state.settings, values)
    except ActionRefused as exc:
        raise BadInput(f"{action.title}: {exc}") from None
    agent = values["agent"]
    return page(request, "done.html", action=action, message=done, agent=agent, name=name)
