"""The ``atlas`` command line."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from atlas import stack
from atlas.settings import Settings
from deploy.local.processes import StackError
from runtime.backends.base import BackendError
from runtime.producer import ProducerError
from schemas.codec import DecodeError, SchemaError
from store.client import StoreUnavailable

app = typer.Typer(
    help="atlas-stream: continual learning for production AI agents over Kafka and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
EXPECTED_ERRORS = (
    StackError,
    StoreUnavailable,
    SchemaError,
    DecodeError,
    BackendError,
    ProducerError,
)


def clear_errors(command: F) -> F:
    """Turn the errors a user can act on into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@clear_errors
def up(
    kafka_port: Annotated[
        int | None, typer.Option(help="Broker port (default: a free one).")
    ] = None,
    controller_port: Annotated[
        int | None, typer.Option(help="KRaft controller port (default: a free one).")
    ] = None,
    store_port: Annotated[
        int | None, typer.Option(help="Local ClickHouse HTTP port (default: a free one).")
    ] = None,
) -> None:
    """Start the local stack: a Kafka broker (KRaft) and the local ClickHouse store, on 127.0.0.1.

    Fetches Kafka from Maven Central on first use, creates the atlas topics and the store's
    tables, and records PIDs and addresses in $ATLAS_HOME/stack.json.
    """
    settings = Settings()
    started = time.perf_counter()
    with console.status("starting the local stack") as status:
        result = stack.up(
            settings, kafka_port, controller_port, store_port, say=lambda m: status.update(m)
        )
    _print_status(result)
    console.print(f"up in {time.perf_counter() - started:.1f}s")


@app.command()
@clear_errors
def down() -> None:
    """Stop the local stack (by the PIDs recorded at `atlas up`). Data is kept."""
    stopped = stack.down(Settings())
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
@clear_errors
def status() -> None:
    """Show what the local stack runs and where."""
    settings = Settings()
    _print_status(stack.read_status(settings))
    if settings.kafka_bootstrap:
        console.print(
            f"ATLAS_KAFKA_BOOTSTRAP overrides the local broker: {settings.kafka_bootstrap}"
        )
    if settings.clickhouse_url:
        console.print(f"ATLAS_CLICKHOUSE_URL overrides the local store: {settings.clickhouse_url}")


agent_app = typer.Typer(help="Run agents on the local stack.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@agent_app.command("run")
@clear_errors
def agent_run(
    task: Annotated[
        str, typer.Option(help="Built-in task family: arithmetic, two_step or extraction.")
    ] = "arithmetic",
    n: Annotated[int, typer.Option(min=1, help="Number of tasks.")] = 50,
    agent_id: Annotated[str, typer.Option("--agent", help="The agent's id.")] = "demo-agent",
    mode: Annotated[
        str, typer.Option(help="auto, paired, coach, or policy (let the mode policy choose).")
    ] = "policy",
    split: Annotated[str, typer.Option(help="Task split: train, validation or test.")] = "test",
    seed: Annotated[int, typer.Option(help="Task generator seed.")] = 0,
    batch: Annotated[int, typer.Option(min=1, help="Tasks run together per batched step.")] = 8,
) -> None:
    """Run a local agent (student + teacher through the closed loop) on built-in tasks,
    produce every interaction to Kafka, and print accuracy, modes and tokens."""
    from rich.progress import Progress

    from atlas.agent import Backends, load_agent_config
    from runtime.core import Runtime
    from runtime.policy import ModePolicy
    from runtime.producer import EventProducer
    from runtime.prompts import PromptSubscriber, StaticPrompts
    from runtime.tasks import generate, is_correct
    from store.client import connect
    from store.queries import StoreRecentRewards

    if mode not in ("auto", "paired", "coach", "policy"):
        raise typer.BadParameter("choose auto, paired, coach or policy", param_hint="--mode")
    try:
        tasks = generate(task, split, n, seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = Settings()
    config = load_agent_config(settings.config_dir)
    kafka = settings.kafka_config()
    rewards = None
    try:
        rewards = StoreRecentRewards(connect(settings.store_url()), config.recent_reward_hours)
    except (StackError, StoreUnavailable) as exc:
        err.print(f"[yellow]no recent rewards (the policy uses probes only):[/] {exc}")
    with console.status("loading models and prompts"):
        student, teacher = Backends(settings).student_and_teacher()
        prompts = PromptSubscriber(kafka, StaticPrompts(config.prompts)).start()
    runtime = Runtime(
        agent_id, student, teacher, prompts, ModePolicy(config.policy, rewards), config.limits
    )
    forced = None if mode == "policy" else mode
    events = []
    try:
        with EventProducer(kafka) as producer, Progress(console=console) as progress:
            bar = progress.add_task(f"{agent_id} on {task}", total=len(tasks))
            for start in range(0, len(tasks), batch):
                for event in runtime.run_many(tasks[start : start + batch], forced):  # type: ignore[arg-type]
                    producer.record_interaction(event)
                    events.append(event)
                progress.advance(bar, min(batch, len(tasks) - start))
    finally:
        prompts.close()
    by_id = {t.task_id: t for t in tasks}
    table = Table("tasks", "accuracy", "baseline acc.", "modes", "tokens/task", "delivered")
    correct = sum(is_correct(by_id[e.task_id], e.final_answer) for e in events)
    baseline = sum(is_correct(by_id[e.task_id], e.baseline_answer or "") for e in events)
    modes = {m: sum(e.mode == m for e in events) for m in ("auto", "paired", "coach")}
    tokens = sum(e.usage.total_tokens for e in events) / len(events)
    table.add_row(
        str(len(events)),
        f"{correct / len(events):.3f}",
        f"{baseline / len(events):.3f}",
        ", ".join(f"{m} {c}" for m, c in modes.items() if c),
        f"{tokens:.0f}",
        str(producer.delivered),
    )
    console.print(table)


@app.command()
@clear_errors
def monitor(
    since: Annotated[str, typer.Option(help="Window: 30m, 24h, 7d ...")] = "24h",
    agent: Annotated[str, typer.Option(help="One agent (default: all).")] = "",
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG chart to this path.")] = None,
) -> None:
    """Is each agent improving, degrading, costing fewer tokens? Reward by hour and prompt
    version, non-degradation, tokens by mode, escalations, judge agreement, dead letters."""
    from datetime import UTC, datetime

    from atlas.report import parse_duration, plot_monitor, print_monitor
    from store.client import connect
    from store.monitoring import monitor as run_queries

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    results = run_queries(connect(Settings().store_url()), datetime.now(UTC) - window, agent)
    print_monitor(console, results)
    if plot is not None:
        console.print(f"chart written to {plot_monitor(results, plot)}")


@app.command()
@clear_errors
def replay(
    since: Annotated[str, typer.Option(help="Traces created in this window: 30m, 24h, 7d ...")],
    agent: Annotated[str, typer.Option(help="One agent (default: all).")] = "",
) -> None:
    """Re-score stored traces with the current judges, as a new revision of each.

    The stored interactions are re-sent to the reward stream marked for re-scoring; the
    reward worker (`atlas worker rewards`) scores them and the sink stores the new revisions.
    """
    from datetime import UTC, datetime

    from atlas.report import parse_duration
    from runtime.producer import EventProducer
    from store.client import connect
    from store.queries import stored_interactions
    from streams.processor import AFTER_REVISION, RESCORE

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    settings = Settings()
    stored = stored_interactions(connect(settings.store_url()), datetime.now(UTC) - window, agent)
    replay_id = f"replay-{int(time.time())}"
    with EventProducer(settings.kafka_config()) as producer:
        for event, revision in stored:
            metadata = {**event.metadata, RESCORE: replay_id, AFTER_REVISION: str(revision)}
            producer.record_interaction(event.model_copy(update={"metadata": metadata}))
    console.print(f"{replay_id}: {len(stored)} trace(s) sent for re-scoring")


worker_app = typer.Typer(help="Long-running stream workers.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


@worker_app.command("rewards")
@clear_errors
def worker_rewards() -> None:
    """Score interactions and merge feedback (Faust): interactions + feedback -> rewards.

    Run several to share the partitions; each keeps per-trace state in a changelog topic.
    """
    import logging

    from atlas.workers import run_rewards_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_rewards_worker(Settings())


@worker_app.command("sink")
@clear_errors
def worker_sink() -> None:
    """Copy rewards, feedback and dead letters from Kafka into ClickHouse, in batches."""
    import logging

    from atlas.workers import run_sink_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stats = run_sink_worker(Settings())
    console.print(
        f"sink stopped: {stats.messages} messages, {stats.rows} rows, "
        f"{stats.dead_letters} dead letters, {stats.insert_failures} failed inserts"
    )


def _print_status(current: stack.StackStatus) -> None:
    table = Table("service", "state", "address", "pid", "data")
    services = (
        (
            "kafka",
            current.kafka_running,
            current.kafka and (current.kafka.bootstrap, current.kafka.pid, current.kafka.data_dir),
        ),
        (
            "store",
            current.store_running,
            current.store and (current.store.url, current.store.pid, current.store.path),
        ),
    )
    for name, running, where in services:
        if not where:
            table.add_row(name, "never started", "", "", "")
            continue
        address, pid, data = where
        table.add_row(name, "running" if running else "stopped", address, str(pid), data)
    console.print(table)


if __name__ == "__main__":
    app()
