"""`atlas agent run`: a local agent on built-in tasks, every interaction produced to Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from atlas.commands.common import clear_errors, console, err, get_settings

if TYPE_CHECKING:
    from runtime.memory import MemorySubscriber
    from runtime.tasks import Task
    from schemas.models import InteractionEvent

app = typer.Typer(help="Run agents on the local stack.", no_args_is_help=True)
MODES = ("auto", "paired", "coach")


@app.command("run")
@clear_errors
def agent_run(
    ctx: typer.Context,
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
    simulate_users: Annotated[
        bool,
        typer.Option(help="Simulated users approve bare right answers and edit the rest."),
    ] = False,
    user_noise: Annotated[
        float, typer.Option(min=0, max=1, help="Share of careless simulated feedback.")
    ] = 0.1,
    follow_checkpoints: Annotated[
        bool, typer.Option(help="Hot-load checkpoints published for this agent (local models).")
    ] = False,
    spill: Annotated[
        bool,
        typer.Option(
            help="Keep events Kafka did not acknowledge in $ATLAS_HOME/spill/AGENT.jsonl and"
            " send them on the next run."
        ),
    ] = True,
    redact: Annotated[
        bool,
        typer.Option(
            help="Redact PII (e-mail, phone, card, IBAN, IP, configs/redaction.yaml patterns)"
            " on the agent, under the agent's policy there, before anything is produced: raw"
            " text never reaches Kafka. Without it the reward worker redacts downstream.",
        ),
    ] = False,
) -> None:
    """Run a local agent (student + teacher through the closed loop) on built-in tasks,
    produce every interaction to Kafka, and print accuracy, modes and tokens."""
    from rich.progress import Progress

    from atlas.agent import Backends, load_agent_config, memory_role
    from atlas.simulation import SimulatedUser
    from deploy.local.processes import StackError
    from runtime.core import Runtime
    from runtime.memory import MemorySubscriber
    from runtime.policy import ModePolicy
    from runtime.producer import EventProducer
    from runtime.prompts import PromptSubscriber
    from runtime.redaction import Redactor
    from runtime.tasks import generate
    from schemas.models import path_component
    from store.client import StoreUnavailable, connect
    from store.queries import StoreRecentRewards
    from streams.memory_config import load_memory_config

    if mode not in (*MODES, "policy"):
        raise typer.BadParameter("choose auto, paired, coach or policy", param_hint="--mode")
    try:
        path_component(agent_id, "agent id")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agent") from None
    try:
        tasks = generate(task, split, n, seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = get_settings(ctx)
    config = load_agent_config(settings.config_dir)
    kafka = settings.kafka_config("agent")
    rewards = None
    try:
        rewards = StoreRecentRewards(connect(settings.store()), config.recent_reward_hours)
    except (StackError, StoreUnavailable) as exc:
        err.print(f"[yellow]no recent rewards (the policy uses probes only):[/] {exc}")
    with console.status("loading models and prompts"):
        backends = Backends(settings)
        if follow_checkpoints:
            student, teacher = backends.hot_loading(agent_id)
        else:
            student, teacher = backends.student_and_teacher()
        prompts = PromptSubscriber(
            kafka, config.seeds(), settings.codec(), verifier=settings.verifier()
        ).start()
        memory, role = None, memory_role(settings)
        if role is not None:  # followed even with the seed policy off: a version may turn it on
            try:
                memory = MemorySubscriber(kafka, agent_id, role, settings.codec()).start()
            except (RuntimeError, TimeoutError) as exc:
                # the memory only adds context: an agent without it still answers, and says so
                err.print(f"[yellow]running without memory:[/] {exc}")
            except BaseException:
                prompts.close()
                raise
    runtime = Runtime(
        agent_id,
        student,
        teacher,
        prompts,
        ModePolicy(config.policy, rewards),
        config.limits,
        memory,
        memory_holdout=load_memory_config(settings.config_dir).holdout if memory else 0.0,
    )
    forced = None if mode == "policy" else mode
    users = SimulatedUser(user_noise, seed) if simulate_users else None
    events: list[InteractionEvent] = []
    try:
        spill_path = settings.home / "spill" / f"{agent_id}.jsonl" if spill else None
        with (
            EventProducer(
                kafka,
                codec=settings.codec(),
                spill_path=spill_path,
                redact=Redactor.from_config_dir(settings.config_dir) if redact else None,
            ) as producer,
            Progress(console=console) as progress,
        ):
            bar = progress.add_task(f"{agent_id} on {task}", total=len(tasks))
            for start in range(0, len(tasks), batch):
                chunk = tasks[start : start + batch]
                for task_, event in zip(chunk, runtime.run_many(chunk, forced), strict=True):  # type: ignore[arg-type]
                    producer.record_interaction(event)
                    events.append(event)
                    if users is not None:
                        users.react(task_, event, producer)
                progress.advance(bar, min(batch, len(tasks) - start))
    finally:
        prompts.close()
        if memory is not None:
            memory.close()
    _print_summary(tasks, events, producer.delivered, memory)


def _print_summary(
    tasks: Sequence[Task],
    events: Sequence[InteractionEvent],
    delivered: int,
    memory: MemorySubscriber | None = None,
) -> None:
    """One row: tasks run, accuracy with and without the teacher, modes, tokens, generation
    time per task beside the memory lookup time per task (the lookup must stay a small share
    of it), delivered."""
    from runtime.tasks import is_correct

    by_id = {t.task_id: t for t in tasks}
    table = Table(
        "tasks",
        "accuracy",
        "baseline acc.",
        "modes",
        "tokens/task",
        "generation/task",
        "memory lookup/task",
        "delivered",
    )
    correct = sum(is_correct(by_id[e.task_id], e.final_answer) for e in events)
    baseline = sum(is_correct(by_id[e.task_id], e.baseline_answer or "") for e in events)
    modes = {m: sum(e.mode == m for e in events) for m in MODES}
    tokens = sum(e.usage.total_tokens for e in events) / len(events)
    generation_ms = sum(e.latency_ms for e in events) / len(events)
    lookups = "off"
    if memory is not None:
        stats, used = memory.stats, sum(bool(e.memory_entries) for e in events)
        lookups = (
            f"{stats.mean_s * 1e6:.0f} µs (max {stats.max_s * 1e6:.0f});"
            f" {len(memory.index)} entries, used in {used}"
        )
    table.add_row(
        str(len(events)),
        f"{correct / len(events):.3f}",
        f"{baseline / len(events):.3f}",
        ", ".join(f"{m} {c}" for m, c in modes.items() if c),
        f"{tokens:.0f}",
        f"{generation_ms:.0f} ms",
        lookups,
        str(delivered),
    )
    console.print(table)
