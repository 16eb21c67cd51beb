"""The ``atlas`` command line."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from atlas import stack
from atlas.settings import Settings
from deploy.local.processes import StackError
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
EXPECTED_ERRORS = (StackError, StoreUnavailable, SchemaError, DecodeError)


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


def _print_status(current: stack.StackStatus) -> None:
    table = Table("service", "state", "address", "pid", "data")
    if current.kafka:
        table.add_row(
            "kafka",
            "running" if current.kafka_running else "stopped",
            current.kafka.bootstrap,
            str(current.kafka.pid),
            current.kafka.data_dir,
        )
    else:
        table.add_row("kafka", "never started", "", "", "")
    if current.store:
        table.add_row(
            "store",
            "running" if current.store_running else "stopped",
            current.store.url,
            str(current.store.pid),
            current.store.path,
        )
    else:
        table.add_row("store", "never started", "", "", "")
    console.print(table)


if __name__ == "__main__":
    app()
