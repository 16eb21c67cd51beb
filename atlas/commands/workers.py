"""`atlas worker rewards|sink|gepa|grpo|rim|rollouts`: the long-running stream workers, in the
foreground until SIGTERM or SIGINT, logging at INFO to stderr (every record scrubbed of secrets)."""

from __future__ import annotations

import gc
import logging

import typer

from atlas.commands.common import clear_errors, configure_logging, console, get_settings

app = typer.Typer(help="Long-running stream workers.", no_args_is_help=True)
# The stream workers allocate a batch of short-lived, acyclic objects at a time (decoded
# events, rows): refcounting frees them, yet with the default thresholds (700, 10, 10) the
# cyclic collector kept walking every live batch: py-spy put gc_collect_main in 61% of the
# sink's samples under load and 11% of the reward worker's (22% and 3% with these thresholds;
# the sink's CPU per 1,000 events 0.14 -> 0.10 s). Fewer young collections and rarer old ones
# make that cost small; cyclic garbage still goes, a little later.
BATCH_GC_THRESHOLDS = (10_000, 50, 100)


def batch_friendly_gc() -> None:
    """Freeze what start-up allocated (modules, schemas, configs: never garbage) and collect
    young objects in larger steps."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*BATCH_GC_THRESHOLDS)


@app.callback()
def workers() -> None:
    configure_logging(logging.INFO)  # once, for whichever worker runs


@app.command("rewards")
@clear_errors
def worker_rewards(ctx: typer.Context) -> None:
    """Score interactions and merge feedback: interactions + feedback -> rewards, exactly once.

    Run several to share the partitions; each keeps per-trace state in a changelog topic.
    Judges see the raw text; every scored trace, memory candidate and dead letter it sends is
    PII-redacted per agent as configs/redaction.yaml says (in ATLAS_CONFIG_DIR; mask by default).
    """
    from atlas.workers import run_rewards_worker

    batch_friendly_gc()
    run_rewards_worker(get_settings(ctx))


@app.command("rollouts")
@clear_errors
def worker_rollouts(ctx: typer.Context) -> None:
    """Decide canary rollouts: compare each canary's reward with production's on the same
    period (an always-valid sequential test, configs/rollout.yaml) and promote it (published as
    production), roll it back or abort it (its label removed), once each; statuses go to
    atlas.rollouts.v1. Runs with the learner's credentials and signs what it publishes."""
    from atlas.workers import run_rollouts_worker

    run_rollouts_worker(get_settings(ctx))


@app.command("sink")
@clear_errors
def worker_sink(ctx: typer.Context) -> None:
    """Copy rewards, feedback and dead letters from Kafka into ClickHouse, in batches.

    Feedback and dead letters are PII-redacted per configs/redaction.yaml before they are stored.
    """
    from atlas.workers import run_sink_worker

    batch_friendly_gc()
    stats = run_sink_worker(get_settings(ctx))
    console.print(
        f"sink stopped: {stats.messages} messages, {stats.rows} rows, "
        f"{stats.dead_letters} dead letters, {stats.insert_failures} failed inserts"
    )


@app.command("gepa")
@clear_errors
def worker_gepa(ctx: typer.Context) -> None:
    """Run GEPA jobs from `gepa` triggers: datasets from the store, GEPA over the agent's runtime
    and RIM, the held-out gate, then publish to atlas.prompts.v1. One job at a time per worker;
    keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(get_settings(ctx), "gepa")
    console.print(f"gepa worker stopped after {jobs_run} job(s)")


@app.command("grpo")
@clear_errors
def worker_grpo(ctx: typer.Context) -> None:
    """Run GRPO jobs from `grpo` triggers: DeepSpeed GRPO in a child process (the deepspeed
    launcher), the held-out gate, then a checkpoint on atlas.checkpoints.v1. Needs the
    `train` extra. Keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(get_settings(ctx), "grpo")
    console.print(f"grpo worker stopped after {jobs_run} job(s)")


@app.command("rim")
@clear_errors
def worker_rim(ctx: typer.Context) -> None:
    """Run RIM calibration jobs from `rim` triggers (`atlas retrain rim`): judge weights and a
    monotone score map fitted on the agent's traces with human feedback, the held-out agreement
    gate, then a signed rim version on atlas.prompts.v1 that reward workers switch to. Needs no
    model. Keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(get_settings(ctx), "rim")
    console.print(f"rim worker stopped after {jobs_run} job(s)")
