"""The ``atlas`` command line: assembles the command groups of ``atlas.commands``.

Each invocation gets one ``Settings`` (made on first use, kept in the Typer context's
``obj``); see ``atlas.commands.common``.
"""

from __future__ import annotations

import typer

from atlas.commands import agent as agent_commands
from atlas.commands import checkpoints as checkpoint_commands
from atlas.commands import console as console_commands
from atlas.commands import demo as demo_commands
from atlas.commands import memory as memory_commands
from atlas.commands import observe as observe_commands
from atlas.commands import prompts as prompt_commands
from atlas.commands import proxy as proxy_commands
from atlas.commands import retrain as retrain_commands
from atlas.commands import rollout as rollout_commands
from atlas.commands import signing as signing_commands
from atlas.commands import stack as stack_commands
from atlas.commands import workers as worker_commands
from atlas.commands.common import Invocation

app = typer.Typer(
    help="atlas-stream: continual learning for production AI agents over Kafka and ClickHouse.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main(ctx: typer.Context) -> None:
    ctx.ensure_object(Invocation)  # this invocation's settings, made when a command asks


# Top-level commands first (up, down, status, monitor, replay, demo), then the groups: the
# order `atlas --help` lists them in.
app.add_typer(stack_commands.app)
app.add_typer(observe_commands.app)
app.add_typer(demo_commands.app)
app.add_typer(agent_commands.app, name="agent")
app.add_typer(retrain_commands.app, name="retrain")
app.add_typer(observe_commands.jobs_app, name="jobs")
app.add_typer(prompt_commands.app, name="prompts")
app.add_typer(checkpoint_commands.app, name="checkpoints")
app.add_typer(memory_commands.app, name="memory")
app.add_typer(rollout_commands.app, name="rollout")
app.add_typer(signing_commands.app, name="signing")
app.add_typer(worker_commands.app, name="worker")
app.add_typer(proxy_commands.app)
app.add_typer(console_commands.app)

if __name__ == "__main__":
    app()
