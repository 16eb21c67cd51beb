"""Looking at what the loop did: `atlas monitor`, `atlas replay`, `atlas jobs`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from atlas.commands.common import (
    DAY,
    Window,
    clear_errors,
    console,
    get_settings,
    since_option,
)
from store.monitoring import DEFAULT_THRESHOLD

app = typer.Typer()
jobs_app = typer.Typer(
    help="Retrain jobs: list them, or `atlas jobs show ID`.", invoke_without_command=True
)
AgentFilter = Annotated[str, typer.Option(help="One agent (default: all).")]


@app.command()
@clear_errors
def monitor(
    ctx: typer.Context,
    since: Annotated[Window, since_option("Window: 30m, 24h, 7d ...")] = DAY,
    agent: AgentFilter = "",
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG chart to this path.")] = None,
    threshold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Judges vs humans: a score from this up counts as a pass (confusion, kappa).",
        ),
    ] = DEFAULT_THRESHOLD,
) -> None:
    """Is each agent improving, degrading, costing fewer tokens? Reward by hour and prompt
    version, non-degradation, tokens by mode, escalations, inter-judge agreement, judges vs
    humans (traces with feedback), dead letters, and the alerts firing now."""
    from atlas.report import alerts_table, plot_monitor, print_monitor
    from store.client import connect
    from store.monitoring import monitor as run_queries
    from store.queries import current_alerts

    client = connect(get_settings(ctx).store())
    results = run_queries(client, since.start(), agent, threshold)
    print_monitor(console, results, threshold)
    console.print(alerts_table(current_alerts(client, agent)))
    if plot is not None:
        console.print(f"chart written to {plot_monitor(results, plot)}")


@app.command()
@clear_errors
def replay(
    ctx: typer.Context,
    since: Annotated[Window, since_option("Traces created in this window: 30m, 24h, 7d ...")],
    agent: AgentFilter = "",
    rim_version: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Score with this RIM version of each trace's agent (0: configs/rim.yaml;"
            " default: the version each agent follows now).",
        ),
    ] = None,
) -> None:
    """Re-score stored traces with the current judges, as a new revision of each.

    The stored interactions are re-sent to the reward stream marked for re-scoring; the
    reward worker (`atlas worker rewards`) scores them and the sink stores the new revisions,
    each naming the RIM version that scored it (rim_version). A version the worker does not
    know (never published for that agent) dead-letters the trace with that reason.
    """
    from runtime.producer import EventProducer
    from store.client import connect
    from store.queries import stored_interactions
    from streams.processor import AFTER_REVISION, RESCORE, RIM_VERSION

    settings = get_settings(ctx)
    stored = stored_interactions(connect(settings.store()), since.start(), agent)
    replay_id = f"replay-{int(time.time())}"
    pinned = {} if rim_version is None else {RIM_VERSION: str(rim_version)}
    with EventProducer(settings.kafka_config(), codec=settings.codec()) as producer:
        for event, revision in stored:
            marks = {RESCORE: replay_id, AFTER_REVISION: str(revision), **pinned}
            metadata = {**event.metadata, **marks}
            producer.record_interaction(event.model_copy(update={"metadata": metadata}))
    console.print(f"{replay_id}: {len(stored)} trace(s) sent for re-scoring")


@jobs_app.callback()
@clear_errors
def jobs(ctx: typer.Context, agent: AgentFilter = "") -> None:
    """List retrain jobs, newest first, with their last reported state."""
    if ctx.invoked_subcommand is not None:
        return
    from store.client import connect
    from store.queries import latest_job_states

    table = Table("job", "kind", "agent", "state", "progress", "updated", "message")
    for job in latest_job_states(connect(get_settings(ctx).store()), agent):
        table.add_row(
            job.job_id,
            job.kind,
            job.agent_id,
            job.state,
            "" if job.progress is None else f"{job.progress:.0%}",
            f"{job.updated_at:%Y-%m-%d %H:%M:%S}",
            job.message[:80],
        )
    console.print(table)


@jobs_app.command("show")
@clear_errors
def jobs_show(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job's id.")]
) -> None:
    """A job's reports in order, its figures, and its lineage: trigger, data window, and the
    prompt versions it published."""
    from store.client import connect
    from store.queries import job_reports, prompt_history, stored_trigger

    client = connect(get_settings(ctx).store())
    reports = job_reports(client, job_id)
    if not reports:
        raise typer.BadParameter(f"no job {job_id!r} in the store", param_hint="JOB_ID")
    history = Table("seq", "state", "at", "progress", "message")
    for r in reports:
        progress = "" if r.progress is None else f"{r.progress:.0%}"
        history.add_row(str(r.seq), r.state, f"{r.updated_at:%H:%M:%S}", progress, r.message)
    console.print(history)
    last = reports[-1]
    if last.metrics:
        figures = Table("figure", "value")
        for name, value in sorted(last.metrics.items()):
            figures.add_row(name, f"{value:.4g}")
        console.print(figures)
    trigger = stored_trigger(client, last.trigger_id)
    console.print(
        f"trigger {last.trigger_id}: "
        + (
            f"{trigger.reason} (by {trigger.requested_by}),"
            f" window {trigger.window_start} .. {trigger.window_end}"
            if trigger
            else "not in the store"
        )
    )
    for version in prompt_history(client, last.agent_id):
        if version.job_id == job_id:
            console.print(
                f"published {version.agent_id}/{version.role} v{version.version}"
                f" (parent v{version.parent_version})"
            )
