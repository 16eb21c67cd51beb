"""`atlas up`, `atlas down`, `atlas status`: the local stack and what runs on it."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from confluent_kafka import KafkaException
from rich.table import Table

from atlas import stack as local_stack
from atlas.commands.common import clear_errors, get_settings
from atlas.commands.common import console as console_out
from atlas.settings import Settings
from deploy.local.processes import StackError

app = typer.Typer()


@app.command()
@clear_errors
def up(
    ctx: typer.Context,
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
    otlp: Annotated[
        int | None,
        typer.Option(
            "--otlp",
            min=1,
            max=65535,
            help="Also start the OTLP/HTTP receiver (atlas worker otlp) on this port of"
            " 127.0.0.1 (4318 is OTLP's usual one); `atlas down` stops it.",
        ),
    ] = None,
    console: Annotated[
        bool,
        typer.Option(
            help="Also start the web console (`atlas console`) on 127.0.0.1; `atlas down` stops"
            " it. If its port is taken, the stack starts without it and says so."
        ),
    ] = True,
    console_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The console's port (default: ATLAS_CONSOLE_PORT)."),
    ] = None,
) -> None:
    """Start the local stack: a Kafka broker (KRaft) and the local ClickHouse store, on 127.0.0.1.

    Fetches Kafka from Maven Central on first use, creates the atlas topics and the store's
    tables, and records PIDs and addresses in $ATLAS_HOME/stack.json. The store always needs
    the password in $ATLAS_HOME/secrets; with --secure, `atlas status --credentials ROLE`
    shows each role's Kafka credentials.
    """
    settings = get_settings(ctx)
    started = time.perf_counter()
    with console_out.status("starting the local stack") as status:
        result = local_stack.up(
            settings,
            kafka_port,
            controller_port,
            store_port,
            say=lambda m: status.update(m),
            secure=secure,
        )
    _print_status(result)
    if otlp is not None:
        from atlas import otlp_service

        receiver = otlp_service.start(settings, otlp)
        console_out.print(
            f"OTLP receiver on {receiver.url} (pid {receiver.pid}, log {receiver.log})",
            highlight=False,
        )
    if console:
        _start_console(settings, console_port or settings.console_port)
    console_out.print(f"up in {time.perf_counter() - started:.1f}s")


def _start_console(settings: Settings, port: int) -> None:
    """The console beside the stack; a line saying why not if it cannot start."""
    from atlas.console.server import password_source

    try:
        state = local_stack.start_console(settings, port)
    except StackError as exc:
        console_out.print(f"console not started: {exc} (`atlas console --port N` starts it)")
        return
    console_out.print(
        f"console on {state.url} (user atlas, password: {password_source(settings)})",
        highlight=False,
    )


@app.command()
@clear_errors
def down(ctx: typer.Context) -> None:
    """Stop the local stack (by the PIDs recorded at `atlas up`). Data is kept."""
    from atlas import otlp_service

    settings = get_settings(ctx)
    receiver = otlp_service.stop(settings)
    stopped = ([receiver] if receiver else []) + local_stack.down(settings)
    console_out.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
@clear_errors
def status(
    ctx: typer.Context,
    credentials: Annotated[
        str | None,
        typer.Option(
            help="On a --secure stack, print this role's client settings (agent, rewards, sink, "
            "learner, operator, admin), password included, and nothing else."
        ),
    ] = None,
) -> None:
    """Show what the local stack runs and where, the workers running on this host (PIDs to
    stop or restart one), how far behind each consumer group is, and the firing alerts."""
    settings = get_settings(ctx)
    if credentials:
        config = settings.kafka_config(credentials)
        if "sasl.username" not in config:
            raise typer.BadParameter("the local stack is not secure: it has no credentials")
        for name, value in config.items():
            console_out.print(f"{name}={value}", highlight=False, soft_wrap=True)
        return
    _print_status(local_stack.read_status(settings))
    _print_console(settings)
    if settings.kafka_bootstrap:
        console_out.print(
            f"ATLAS_KAFKA_BOOTSTRAP overrides the local broker: {settings.kafka_bootstrap}"
        )
    if settings.clickhouse_url:
        console_out.print(f"ATLAS_CLICKHOUSE_URL overrides the local store: {settings.store()}")
    _print_workers(settings)
    _print_alerts(settings)


def _print_console(settings: Settings) -> None:
    from atlas.console.server import ConsoleState, console_running

    recorded = settings.local_stack().get("console")
    if recorded:
        state = ConsoleState(**recorded)
        running = "running" if console_running(state) else "stopped"
        console_out.print(f"console: {running} on {state.url} (pid {state.pid})", highlight=False)


def _print_alerts(settings: Settings) -> None:
    """The alerts firing now, from the store (a line saying why, if it cannot be read)."""
    from atlas.report import alerts_table
    from store.client import connect
    from store.queries import current_alerts

    try:
        alerts = current_alerts(connect(settings.store()))
    except Exception as exc:  # the store may be down: status still shows the rest
        console_out.print(f"alerts: the store cannot be read ({type(exc).__name__})")
        return
    console_out.print(alerts_table(alerts))


def _print_workers(settings: Settings) -> None:
    from atlas import registry
    from atlas.lag import group_lags

    workers = Table("worker", "id", "pid", "consumer group", "since", title="workers on this host")
    for w in registry.running(settings.home):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.started_at))
        workers.add_row(w.kind, w.worker_id, str(w.pid), w.group, started)
    console_out.print(workers if workers.row_count else "no workers run on this host")
    try:
        lags = group_lags(settings.kafka_config("admin"))  # every group: the stack's own view
    except (StackError, KafkaException) as exc:
        console_out.print(f"consumer groups: Kafka unreachable ({exc})")
        return
    groups = Table("consumer group", "lag (messages)", "oldest unconsumed", title="consumer groups")
    for lag in lags:
        age = "-" if lag.oldest_age_s is None else _age(lag.oldest_age_s)
        groups.add_row(
            lag.group, f"{lag.lag:,}" if lag.committed else f"{lag.lag:,} (never ran)", age
        )
    console_out.print(groups)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _print_status(current: local_stack.StackStatus) -> None:
    """The stack's services as a table: state, address, PID and data folder of each."""
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
    console_out.print(table)
