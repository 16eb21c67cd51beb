"""The ``atlas`` command line."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from confluent_kafka import KafkaException
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from atlas import stack
from atlas.settings import Settings
from deploy.local.processes import StackError
from runtime.backends.base import BackendError
from runtime.producer import ProducerError
from schemas.codec import DecodeError, RegistryUnavailable, SchemaError
from schemas.configfile import ConfigError, validation_summary
from schemas.limits import LimitError
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
    RegistryUnavailable,
    LimitError,
    BackendError,
    ProducerError,
    KafkaException,  # e.g. an authorization error on a --secure stack
)
USAGE_EXIT = 2  # the operator's input is wrong: a config file, a setting, an option


def clear_errors(command: F) -> F:
    """Turn the errors a user can act on into one line on stderr: exit status 2 for what the
    operator gave (configs, ATLAS_* settings), 1 for the rest."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(USAGE_EXIT) from None
        except ValidationError as exc:  # Settings() from ATLAS_* variables or .env
            err.print(
                f"[bold red]error:[/] invalid setting {validation_summary(exc)}"
                " (settings come from ATLAS_* environment variables or .env)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(USAGE_EXIT) from None
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
    secure: Annotated[
        bool,
        typer.Option(
            help="Kafka over SASL_SSL (SCRAM-SHA-512) with one user and its ACLs per role, the "
            "store over HTTPS, certificates from a CA made for this stack."
        ),
    ] = False,
) -> None:
    """Start the local stack: a Kafka broker (KRaft) and the local ClickHouse store, on 127.0.0.1.

    Fetches Kafka from Maven Central on first use, creates the atlas topics and the store's
    tables, and records PIDs and addresses in $ATLAS_HOME/stack.json. The store always needs
    the password in $ATLAS_HOME/secrets; with --secure, `atlas status --credentials ROLE`
    shows each role's Kafka credentials.
    """
    settings = Settings()
    started = time.perf_counter()
    with console.status("starting the local stack") as status:
        result = stack.up(
            settings,
            kafka_port,
            controller_port,
            store_port,
            say=lambda m: status.update(m),
            secure=secure,
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
def status(
    credentials: Annotated[
        str | None,
        typer.Option(
            help="On a --secure stack, print this role's client settings (agent, rewards, sink, "
            "learner, operator, admin), password included, and nothing else."
        ),
    ] = None,
) -> None:
    """Show what the local stack runs and where, the workers running on this host (PIDs to
    stop or restart one), and how far behind each consumer group is."""
    settings = Settings()
    if credentials:
        config = settings.kafka_config(credentials)
        if "sasl.username" not in config:
            raise typer.BadParameter("the local stack is not secure: it has no credentials")
        for name, value in config.items():
            console.print(f"{name}={value}", highlight=False, soft_wrap=True)
        return
    _print_status(stack.read_status(settings))
    if settings.kafka_bootstrap:
        console.print(
            f"ATLAS_KAFKA_BOOTSTRAP overrides the local broker: {settings.kafka_bootstrap}"
        )
    if settings.clickhouse_url:
        console.print(f"ATLAS_CLICKHOUSE_URL overrides the local store: {settings.store()}")
    _print_workers(settings)


def _print_workers(settings: Settings) -> None:
    from atlas import registry
    from atlas.lag import group_lags

    workers = Table("worker", "id", "pid", "consumer group", "since", title="workers on this host")
    for w in registry.running(settings.home):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.started_at))
        workers.add_row(w.kind, w.worker_id, str(w.pid), w.group, started)
    console.print(workers if workers.row_count else "no workers run on this host")
    try:
        lags = group_lags(settings.kafka_config("admin"))  # every group: the stack's own view
    except (StackError, KafkaException) as exc:
        console.print(f"consumer groups: Kafka unreachable ({exc})")
        return
    groups = Table("consumer group", "lag (messages)", "oldest unconsumed", title="consumer groups")
    for lag in lags:
        age = "-" if lag.oldest_age_s is None else _age(lag.oldest_age_s)
        groups.add_row(
            lag.group, f"{lag.lag:,}" if lag.committed else f"{lag.lag:,} (never ran)", age
        )
    console.print(groups)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


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
) -> None:
    """Run a local agent (student + teacher through the closed loop) on built-in tasks,
    produce every interaction to Kafka, and print accuracy, modes and tokens."""
    from rich.progress import Progress

    from atlas.agent import Backends, load_agent_config
    from atlas.simulation import SimulatedUser
    from runtime.core import Runtime
    from runtime.policy import ModePolicy
    from runtime.producer import EventProducer
    from runtime.prompts import PromptSubscriber, StaticPrompts
    from runtime.tasks import generate, is_correct
    from schemas.models import path_component
    from store.client import connect
    from store.queries import StoreRecentRewards

    if mode not in ("auto", "paired", "coach", "policy"):
        raise typer.BadParameter("choose auto, paired, coach or policy", param_hint="--mode")
    try:
        path_component(agent_id, "agent id")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agent") from None
    try:
        tasks = generate(task, split, n, seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = Settings()
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
            kafka, StaticPrompts(config.prompts), settings.codec(), verifier=settings.verifier()
        ).start()
    runtime = Runtime(
        agent_id, student, teacher, prompts, ModePolicy(config.policy, rewards), config.limits
    )
    forced = None if mode == "policy" else mode
    users = SimulatedUser(user_noise, seed) if simulate_users else None
    events = []
    try:
        spill_path = settings.home / "spill" / f"{agent_id}.jsonl" if spill else None
        with (
            EventProducer(kafka, codec=settings.codec(), spill_path=spill_path) as producer,
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
    results = run_queries(connect(Settings().store()), datetime.now(UTC) - window, agent)
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
    stored = stored_interactions(connect(settings.store()), datetime.now(UTC) - window, agent)
    replay_id = f"replay-{int(time.time())}"
    with EventProducer(settings.kafka_config(), codec=settings.codec()) as producer:
        for event, revision in stored:
            metadata = {**event.metadata, RESCORE: replay_id, AFTER_REVISION: str(revision)}
            producer.record_interaction(event.model_copy(update={"metadata": metadata}))
    console.print(f"{replay_id}: {len(stored)} trace(s) sent for re-scoring")


retrain_app = typer.Typer(
    help="Ask for a retrain job: produces a RetrainTrigger that a worker picks up.",
    no_args_is_help=True,
)
app.add_typer(retrain_app, name="retrain")
AgentOption = Annotated[str, typer.Option("--agent", help="The agent's id.")]


def _request_retrain(
    kind: str, agent: str, since: str, budget: int | None, param: list[str]
) -> None:
    from datetime import UTC, datetime

    from atlas.report import parse_duration
    from runtime.producer import EventProducer
    from schemas.models import RetrainTrigger

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    params = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        params[name] = value
    from trainer.gepa_engine import load_gepa_config
    from trainer.grpo import load_grpo_config

    loader = {"gepa": load_gepa_config, "grpo": load_grpo_config}[kind]
    try:
        loader(Settings().config_dir).with_overrides(budget, params)
    except ValueError as exc:  # pydantic's ValidationError is one too
        raise typer.BadParameter(str(exc).splitlines()[0], param_hint="--param") from None
    now = datetime.now(UTC)
    trigger = RetrainTrigger(
        kind=kind,  # type: ignore[arg-type]
        agent_id=agent,
        reason=f"operator request ({since} of traces)",
        requested_by="operator",
        window_start=now - window,
        window_end=now,
        budget=budget,
        params=params,
    )
    settings = Settings()
    with EventProducer(settings.kafka_config(), codec=settings.codec()) as producer:
        producer.send(trigger)
    console.print(trigger.trigger_id)


SinceOption = Annotated[str, typer.Option(help="Data window ending now: 30m, 24h, 7d ...")]
ParamOption = Annotated[
    list[str],
    typer.Option(help="NAME=VALUE overriding a knob of the job's config (section.name nests)."),
]


@retrain_app.command("gepa")
@clear_errors
def retrain_gepa(
    agent: AgentOption,
    since: SinceOption = "24h",
    budget: Annotated[
        int | None, typer.Option(min=1, help="Metric calls (default: configs/gepa.yaml).")
    ] = None,
    param: ParamOption = [],  # noqa: B006 (typer needs a literal default)
) -> None:
    """Evolve the agent's system prompts with GEPA on its stored traces (`atlas worker gepa`).
    Prints the trigger id; follow the job with `atlas jobs`."""
    _request_retrain("gepa", agent, since, budget, param)


@retrain_app.command("grpo")
@clear_errors
def retrain_grpo(
    agent: AgentOption,
    since: SinceOption = "24h",
    budget: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    param: ParamOption = [],  # noqa: B006
) -> None:
    """Fine-tune the agent's model with GRPO on its stored traces (`atlas worker grpo`)."""
    _request_retrain("grpo", agent, since, budget, param)


jobs_app = typer.Typer(
    help="Retrain jobs: list them, or `atlas jobs show ID`.", invoke_without_command=True
)
app.add_typer(jobs_app, name="jobs")


@jobs_app.callback()
@clear_errors
def jobs(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option(help="One agent (default: all).")] = "",
) -> None:
    """List retrain jobs, newest first, with their last reported state."""
    if ctx.invoked_subcommand is not None:
        return
    from store.client import connect
    from store.queries import latest_job_states

    table = Table("job", "kind", "agent", "state", "progress", "updated", "message")
    for job in latest_job_states(connect(Settings().store()), agent):
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
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job's id.")]) -> None:
    """A job's reports in order, its figures, and its lineage: trigger, data window, and the
    prompt versions it published."""
    from store.client import connect
    from store.queries import job_reports, prompt_history, stored_trigger

    client = connect(Settings().store())
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


prompts_app = typer.Typer(
    help="Prompt versions: list, show, set (through the gate), roll back.", no_args_is_help=True
)
app.add_typer(prompts_app, name="prompts")
RoleOption = Annotated[str, typer.Option(help="student or teacher.")]


def _check_role(role: str) -> None:
    from runtime.prompts import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"choose {' or '.join(ROLES)}", param_hint="--role")


def _publish(versions: list) -> None:  # type: ignore[type-arg]
    import uuid

    from consumers.jobs import TransactionalProducer

    settings = Settings()
    producer = TransactionalProducer(
        settings.kafka_config("learner"),  # publishing is a learner act (signed)
        f"atlas-cli-{uuid.uuid4().hex}",
        settings.codec(),
        settings.signer(),
    )
    producer.send(versions)
    for v in versions:
        console.print(f"published {v.agent_id}/{v.role} v{v.version} ({v.source})")


def _current(agent: str) -> dict:  # type: ignore[type-arg]
    from atlas.agent import load_agent_config
    from consumers.gepa_worker import current_prompts

    settings = Settings()
    seeds = load_agent_config(settings.config_dir).prompts
    return current_prompts(settings.kafka_config(), agent, seeds, settings.codec())


@prompts_app.command("list")
@clear_errors
def prompts_list(
    agent: AgentOption, role: Annotated[str, typer.Option(help="One role.")] = ""
) -> None:
    """Every stored version of the agent's prompts, with lineage and held-out figures;
    the version agents use now is marked."""
    from store.client import connect
    from store.queries import prompt_history

    current = _current(agent)
    table = Table(
        "role",
        "version",
        "parent",
        "source",
        "created",
        "held-out",
        "prod.",
        "non-degr.",
        "job",
        "text",
    )
    for v in prompt_history(connect(Settings().store()), agent, role):
        live = current.get(v.role) is not None and current[v.role].version == v.version
        table.add_row(
            v.role,
            f"{v.version}{' *' if live else ''}",
            "" if v.parent_version is None else str(v.parent_version),
            v.source,
            f"{v.created_at:%Y-%m-%d %H:%M}",
            "" if v.heldout_reward is None else f"{v.heldout_reward:.3f}",
            "" if v.baseline_reward is None else f"{v.baseline_reward:.3f}",
            "" if v.non_degradation is None else f"{v.non_degradation:.3f}",
            v.job_id or "",
            v.text[:50].replace("\n", " "),
        )
    console.print(table)
    console.print("* = in use now; version 0 is the seed in configs/agent.yaml")


@prompts_app.command("show")
@clear_errors
def prompts_show(
    agent: AgentOption,
    role: RoleOption = "student",
    version: Annotated[int | None, typer.Option(help="Default: the version in use now.")] = None,
) -> None:
    """One prompt version's full text and lineage."""
    _check_role(role)
    chosen = _current(agent)[role]
    if version is not None and version != chosen.version:
        from store.client import connect
        from store.queries import prompt_history

        found = [
            v
            for v in prompt_history(connect(Settings().store()), agent, role)
            if v.version == version
        ]
        if not found:
            raise typer.BadParameter(
                f"no stored version {version} of {agent}/{role}", param_hint="--version"
            )
        chosen = found[0]
    for name in (
        "version",
        "parent_version",
        "source",
        "created_at",
        "job_id",
        "trigger_id",
        "window_start",
        "window_end",
        "heldout_reward",
        "baseline_reward",
        "non_degradation",
    ):
        console.print(f"{name}: {getattr(chosen, name)}")
    console.print(chosen.text, highlight=False, markup=False)
    for i, shot in enumerate(chosen.demonstrations, 1):
        console.print(f"demonstration {i}: {shot.input!r} -> {shot.output!r}", highlight=False)


@prompts_app.command("set")
@clear_errors
def prompts_set(
    agent: AgentOption,
    role: RoleOption = "student",
    text: Annotated[str | None, typer.Option(help="The new prompt text.")] = None,
    file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Read it from a file.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Publish without the held-out gate.")] = False,
    since: SinceOption = "24h",
    task: Annotated[list[str], typer.Option(help="Also gate on this built-in task family.")] = [],  # noqa: B006
) -> None:
    """Publish a hand-written prompt. It faces the same held-out gate as GEPA's candidates
    (evaluated with the agent's models) unless --force."""
    from consumers.gepa_worker import gate_manual_prompts, next_versions

    _check_role(role)
    if (text is None) == (file is None):
        raise typer.BadParameter("give exactly one of --text and --file")
    new_text = text if text is not None else file.read_text()  # type: ignore[union-attr]
    if not new_text.strip():
        raise typer.BadParameter("the prompt text is empty")
    lineage: dict[str, object] = {}
    if force:
        current = _current(agent)
    else:
        from datetime import UTC, datetime

        from atlas.report import parse_duration
        from atlas.workers import gepa_job_context

        try:
            window = parse_duration(since)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
        with console.status("evaluating production and proposed prompts on held-out examples"):
            try:
                current, decision = gate_manual_prompts(
                    gepa_job_context(Settings()),
                    agent,
                    {role: new_text},
                    datetime.now(UTC) - window,
                    task,
                )
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        console.print(f"gate: {decision.reason}")
        if not decision.passed:
            err.print("[bold red]rejected:[/] nothing published (use --force to override)")
            raise typer.Exit(2)
        lineage = {
            "heldout_reward": decision.candidate_reward,
            "baseline_reward": decision.current_reward,
            "non_degradation": decision.non_degradation,
        }
    _publish(next_versions(current, {role: new_text}, "manual", **lineage))


@prompts_app.command("rollback")
@clear_errors
def prompts_rollback(
    agent: AgentOption,
    role: RoleOption = "teacher",
    to: Annotated[
        int | None,
        typer.Option(help="Version to restore (default: the parent of the current one)."),
    ] = None,
) -> None:
    """Restore an earlier prompt's text as a new version (agents pick it up live)."""
    from atlas.agent import load_agent_config
    from consumers.gepa_worker import next_versions
    from store.client import connect
    from store.queries import prompt_history

    _check_role(role)
    current = _current(agent)
    target = current[role].parent_version if to is None else to
    if target is None:
        raise typer.BadParameter(
            f"{agent}/{role} v{current[role].version} has no parent to roll back to"
        )
    shots: list = []  # type: ignore[type-arg]
    if target == 0:
        restored = load_agent_config(Settings().config_dir).prompts[role]
    else:
        found = [
            v
            for v in prompt_history(connect(Settings().store()), agent, role)
            if v.version == target
        ]
        if not found:
            raise typer.BadParameter(
                f"no stored version {target} of {agent}/{role}", param_hint="--to"
            )
        restored, shots = found[0].text, found[0].demonstrations
    _publish(next_versions(current, {role: restored}, "rollback", {role: shots}))
    console.print(f"{agent}/{role}: text of v{target} restored")


checkpoints_app = typer.Typer(
    help="Published model checkpoints: list, roll back.", no_args_is_help=True
)
app.add_typer(checkpoints_app, name="checkpoints")


@checkpoints_app.command("list")
@clear_errors
def checkpoints_list(
    agent: AgentOption, role: Annotated[str, typer.Option(help="One role.")] = ""
) -> None:
    """Every stored checkpoint of the agent, with lineage and held-out figures; the one in
    use now is marked."""
    from consumers.grpo_worker import current_checkpoint
    from schemas.models import CheckpointEvent
    from store.client import connect
    from store.queries import checkpoint_history

    settings = Settings()
    table = Table(
        "role", "version", "parent", "source", "created", "held-out", "prev.", "job", "uri"
    )
    live_by_role: dict[str, CheckpointEvent | None] = {}  # one topic read per role, not per row
    for c in checkpoint_history(connect(settings.store()), agent, role):
        if c.role not in live_by_role:
            live_by_role[c.role] = current_checkpoint(
                settings.kafka_config(), agent, c.role, settings.codec()
            )
        live = live_by_role[c.role]
        table.add_row(
            c.role,
            f"{c.version}{' *' if live and live.version == c.version else ''}",
            "" if c.parent_version is None else str(c.parent_version),
            c.source,
            f"{c.created_at:%Y-%m-%d %H:%M}",
            "" if c.heldout_reward is None else f"{c.heldout_reward:.3f}",
            "" if c.baseline_reward is None else f"{c.baseline_reward:.3f}",
            c.job_id or "",
            c.uri,
        )
    console.print(table)
    console.print("* = in use now; version 0 is the base model")


@checkpoints_app.command("rollback")
@clear_errors
def checkpoints_rollback(
    agent: AgentOption,
    role: RoleOption = "teacher",
    to: Annotated[
        int | None, typer.Option(help="Version to restore (default: the current one's parent).")
    ] = None,
) -> None:
    """Make an earlier checkpoint current again, as a new version (agents that follow
    checkpoints switch before their next task)."""
    import uuid

    from consumers.grpo_worker import current_checkpoint
    from consumers.jobs import TransactionalProducer
    from runtime.backends.local import SMOLLM2_NAME, default_model_dir
    from schemas.models import CheckpointEvent
    from store.client import connect
    from store.queries import checkpoint_history

    _check_role(role)
    settings = Settings()
    current = current_checkpoint(settings.kafka_config(), agent, role, settings.codec())
    if current is None:
        raise typer.BadParameter(f"{agent}/{role} runs its base model: nothing to roll back")
    target = current.parent_version if to is None else to
    if target is None:
        raise typer.BadParameter(f"{agent}/{role} v{current.version} has no parent")
    if target == 0:
        uri, sha, base = f"file://{default_model_dir(settings.cache_dir)}", {}, SMOLLM2_NAME
    else:
        found = [
            c
            for c in checkpoint_history(connect(settings.store()), agent, role)
            if c.version == target
        ]
        if not found:
            raise typer.BadParameter(f"no stored checkpoint v{target} of {agent}/{role}")
        uri, sha, base = found[0].uri, found[0].sha256, found[0].base_model
    event = CheckpointEvent(
        agent_id=agent,
        role=role,
        version=current.version + 1,
        parent_version=current.version,
        uri=uri,
        base_model=base,
        sha256=sha,
        source="rollback",
    )
    TransactionalProducer(
        settings.kafka_config("learner"),
        f"atlas-cli-{uuid.uuid4().hex}",
        settings.codec(),
        settings.signer(),
    ).send([event])
    console.print(f"{agent}/{role}: checkpoint v{target} restored as v{event.version}")


signing_app = typer.Typer(
    help="The key that signs prompt versions and checkpoints.", no_args_is_help=True
)
app.add_typer(signing_app, name="signing")


@signing_app.command("init")
@clear_errors
def signing_init(
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Make the learner's ed25519 key pair in $ATLAS_HOME/secrets (the private key 0600).

    From then on the learners and rollbacks of this host sign every prompt version and
    checkpoint, and its agents switch only to correctly signed ones. Agents elsewhere get the
    printed public key as ATLAS_SIGNING_PUBLIC_KEY; learners elsewhere the private key as
    ATLAS_SIGNING_KEY (from a secret store, never a command line)."""
    from schemas.secrets import private_dir
    from schemas.signing import PRIVATE_KEY_FILE, create_keys

    settings = Settings()
    folder = private_dir(settings.secrets_dir)
    if (folder / PRIVATE_KEY_FILE).exists() and not force:
        raise typer.BadParameter(
            f"{folder / PRIVATE_KEY_FILE} exists; --force replaces it (agents then refuse "
            "everything signed with the old key)"
        )
    signer = create_keys(folder)
    console.print(f"signing key: {folder / PRIVATE_KEY_FILE} (0600)")
    console.print(f"public key (ATLAS_SIGNING_PUBLIC_KEY): {signer.public_key()}", soft_wrap=True)


worker_app = typer.Typer(help="Long-running stream workers.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


@worker_app.command("rewards")
@clear_errors
def worker_rewards() -> None:
    """Score interactions and merge feedback: interactions + feedback -> rewards, exactly once.

    Run several to share the partitions; each keeps per-trace state in a changelog topic.
    """
    from atlas.workers import configure_logging, run_rewards_worker

    configure_logging()
    run_rewards_worker(Settings())


@worker_app.command("sink")
@clear_errors
def worker_sink() -> None:
    """Copy rewards, feedback and dead letters from Kafka into ClickHouse, in batches."""
    from atlas.workers import configure_logging, run_sink_worker

    configure_logging()
    stats = run_sink_worker(Settings())
    console.print(
        f"sink stopped: {stats.messages} messages, {stats.rows} rows, "
        f"{stats.dead_letters} dead letters, {stats.insert_failures} failed inserts"
    )


@worker_app.command("gepa")
@clear_errors
def worker_gepa() -> None:
    """Run GEPA jobs from `gepa` triggers: datasets from the store, GEPA over the agent's runtime
    and RIM, the held-out gate, then publish to atlas.prompts.v1. One job at a time per worker;
    keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import configure_logging, run_trigger_worker

    configure_logging()
    jobs_run = run_trigger_worker(Settings(), "gepa")
    console.print(f"gepa worker stopped after {jobs_run} job(s)")


@worker_app.command("grpo")
@clear_errors
def worker_grpo() -> None:
    """Run GRPO jobs from `grpo` triggers: DeepSpeed GRPO in a child process (the deepspeed
    launcher), the held-out gate, then a checkpoint on atlas.checkpoints.v1. Needs the
    `train` extra. Keep ATLAS_WORKER_ID stable so a restart fails the job it interrupted."""
    from atlas.workers import configure_logging, run_trigger_worker

    configure_logging()
    jobs_run = run_trigger_worker(Settings(), "grpo")
    console.print(f"grpo worker stopped after {jobs_run} job(s)")


@app.command()
@clear_errors
def demo(
    quick: Annotated[bool, typer.Option(help="A short run (about 3 minutes on 2 cores).")] = False,
    job_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the retrain job to finish.")
    ] = 900,
    secure: Annotated[
        bool,
        typer.Option(
            help="On `atlas up --secure` (started if nothing runs): SASL_SSL, ACLs per role, "
            "the store over HTTPS, signed prompts."
        ),
    ] = False,
) -> None:
    """A simulated production day on the local stack: an agent on the extraction task, users
    who approve or edit its answers, rewards into ClickHouse, the retrain policy firing a GEPA
    job, the new prompt hot-swapped, traffic going on; then a report and a PNG chart.
    Starts what is missing (stack, workers) and stops what it started, also on Ctrl-C."""
    import logging

    from atlas.demo import FULL, QUICK, run_demo
    from schemas.secrets import scrub_log_records

    scrub_log_records()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        code = run_demo(Settings(), QUICK if quick else FULL, console, job_timeout, secure)
    except KeyboardInterrupt:
        err.print("interrupted: everything the demo started was stopped")
        raise typer.Exit(130) from None
    except TimeoutError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s")
    raise typer.Exit(code)


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
