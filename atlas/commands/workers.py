"""`atlas worker rewards|rollouts|sink|gepa|grpo|rim|otlp`: the long-running stream workers
and the OTLP receiver, in the foreground until SIGTERM or SIGINT, logging at INFO to stderr
(every record scrubbed of secrets), each serving Prometheus metrics with --metrics-port (or
ATLAS_METRICS_PORT)."""

from __future__ import annotations

import gc
import logging
from typing import Annotated

import typer

from atlas.commands.common import (
    HostOption,
    MetricsPort,
    PortOption,
    clear_errors,
    configure_logging,
    console,
    worker_settings,
)

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
def worker_rewards(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Score interactions and merge feedback: interactions + feedback -> rewards, exactly once.

    Run several to share the partitions; each keeps per-trace state in a changelog topic.
    Judges see the raw text; every scored trace, memory candidate and dead letter it sends is
    PII-redacted per agent as configs/redaction.yaml says (in ATLAS_CONFIG_DIR; mask by default).
    """
    from atlas.workers import run_rewards_worker

    batch_friendly_gc()
    run_rewards_worker(worker_settings(ctx, metrics_port))


@app.command("rollouts")
@clear_errors
def worker_rollouts(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Decide canary rollouts: compare each canary's reward with production's on the same
    period (an always-valid sequential test, configs/rollout.yaml) and promote it (published as
    production), roll it back or abort it (its label removed), once each; statuses go to
    atlas.rollouts.v1. Runs with the learner's credentials and signs what it publishes."""
    from atlas.workers import run_rollouts_worker

    run_rollouts_worker(worker_settings(ctx, metrics_port))


@app.command("sink")
@clear_errors
def worker_sink(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Copy rewards, feedback and dead letters from Kafka into ClickHouse, in batches.

    Feedback and dead letters are PII-redacted per configs/redaction.yaml before they are stored.
    """
    from atlas.workers import run_sink_worker

    batch_friendly_gc()
    stats = run_sink_worker(worker_settings(ctx, metrics_port))
    console.print(
        f"sink stopped: {stats.messages} messages, {stats.rows} rows, "
        f"{stats.dead_letters} dead letters, {stats.insert_failures} failed inserts"
    )


@app.command("gepa")
@clear_errors
def worker_gepa(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Run GEPA jobs from `gepa` triggers: datasets from the store, GEPA over the agent's runtime
    and RIM, the held-out gate, then publish to atlas.prompts.v1. One job at a time per worker;
    keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(worker_settings(ctx, metrics_port), "gepa")
    console.print(f"gepa worker stopped after {jobs_run} job(s)")


@app.command("grpo")
@clear_errors
def worker_grpo(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Run GRPO jobs from `grpo` triggers: DeepSpeed GRPO in a child process (the deepspeed
    launcher), the held-out gate, then a checkpoint on atlas.checkpoints.v1. Needs the
    `train` extra. Keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(worker_settings(ctx, metrics_port), "grpo")
    console.print(f"grpo worker stopped after {jobs_run} job(s)")


@app.command("otlp")
@clear_errors
def worker_otlp(
    ctx: typer.Context,
    port: PortOption = 4318,
    host: HostOption = "127.0.0.1",
    agent: Annotated[
        str,
        typer.Option(
            "--agent", help="Agent id of spans with no atlas.agent_id span or resource attribute."
        ),
    ] = "otlp",
    max_body_mib: Annotated[
        int, typer.Option(min=1, max=256, help="Largest request body, before or after gzip, MiB.")
    ] = 16,
    ack_timeout: Annotated[
        float,
        typer.Option(
            min=0.5, help="Seconds to wait for Kafka's acknowledgement before answering 503."
        ),
    ] = 5.0,
    metrics_port: MetricsPort = None,
) -> None:
    """Receive OpenTelemetry GenAI traces over OTLP/HTTP and record them as interactions.

    Point an exporter at http://HOST:PORT (OTEL_EXPORTER_OTLP_ENDPOINT; protobuf or JSON, gzip
    or not): POST /v1/traces and /v1/logs. Each top-level GenAI call or agent span becomes one
    InteractionEvent (trace id <otel trace id>-<span id>), an atlas.feedback span event a
    FeedbackEvent. The answer is 200 only once Kafka acknowledged everything, 503 with
    Retry-After while it does not (exporters retry), 400 with a reason and a dead letter for a
    malformed payload. For the OpenAI instrumentation set
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=span_only (or event_only with the logs
    exporter) so spans carry the messages. GET /atlas/stats shows the counters.
    """
    from atlas import registry
    from ingest.otlp import MIB, OtlpConfig, OtlpReceiver
    from ingest.serving import open_sender, serve
    from runtime.metrics import serving

    settings = worker_settings(ctx, metrics_port)
    try:
        config = OtlpConfig(agent, max_body_mib * MIB, ack_timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    lease = registry.claim(settings.home, "otlp", "-", settings.worker_id)
    sender = open_sender(settings.kafka_config("agent"), settings.codec())
    receiver = OtlpReceiver(config, sender)
    logging.getLogger(__name__).info(
        "OTLP receiver %s (pid %d) on http://%s:%d", lease.worker_id, lease.record.pid, host, port
    )
    try:
        with serving(settings.metrics_host, settings.metrics_port):
            serve(receiver.app, host, port, sender.close)
    finally:
        lease.release()
    console.print(f"otlp receiver stopped: {receiver.counts}", highlight=False)


@app.command("rim")
@clear_errors
def worker_rim(ctx: typer.Context, metrics_port: MetricsPort = None) -> None:
    """Run RIM calibration jobs from `rim` triggers (`atlas retrain rim`): judge weights and a
    monotone score map fitted on the agent's traces with human feedback, the held-out agreement
    gate, then a signed rim version on atlas.prompts.v1 that reward workers switch to. Needs no
    model. Keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import run_trigger_worker

    jobs_run = run_trigger_worker(worker_settings(ctx, metrics_port), "rim")
    console.print(f"rim worker stopped after {jobs_run} job(s)")
