"""`atlas demo`: a simulated production day on the local stack, end to end."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from atlas.commands.common import clear_errors, configure_logging, console, err, get_settings

app = typer.Typer()


@app.command()
@clear_errors
def demo(
    ctx: typer.Context,
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
    from atlas.demo import FULL, QUICK, run_demo

    configure_logging(quiet=["httpx"])
    started = time.perf_counter()
    try:
        code = run_demo(get_settings(ctx), QUICK if quick else FULL, console, job_timeout, secure)
    except KeyboardInterrupt:
        err.print("interrupted: everything the demo started was stopped")
        raise typer.Exit(130) from None
    except TimeoutError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s")
    raise typer.Exit(code)
