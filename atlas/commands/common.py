"""What every command module shares: the consoles, the one-line error handling, this
invocation's settings (kept in the Typer context), the `--since` parser, the agent and role
options, logging set-up, and publishing as the learner."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from confluent_kafka import KafkaException
from pydantic import ValidationError
from rich.console import Console

from atlas.report import parse_duration
from atlas.settings import Settings
from deploy.local.processes import StackError
from runtime.backends.base import BackendError
from runtime.producer import ProducerError
from schemas.codec import DecodeError, RegistryUnavailable, SchemaError
from schemas.configfile import ConfigError, validation_summary
from schemas.limits import LimitError
from schemas.models import CheckpointEvent, Event, MemoryPolicy, PromptVersion, RolloutKind
from store.client import StoreUnavailable

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


class Invocation:
    """One `atlas` invocation's shared state, kept in the root Typer context's ``obj``."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings()
        return self._settings


def get_settings(ctx: typer.Context) -> Settings:
    """This invocation's one ``Settings``: read from the ATLAS_* environment (or .env) when a
    command first asks, then shared by everything the invocation does. Made on first use, so
    `--help` and option errors never need valid settings, and an invalid one is raised inside
    the command, where ``clear_errors`` turns it into one line and exit status 2."""
    return ctx.ensure_object(Invocation).settings


@dataclass(frozen=True)
class Window:
    """A `--since` window: the text as given (for messages) and its length."""

    text: str
    length: timedelta

    def __str__(self) -> str:  # what `--help` shows as a default
        return self.text

    def start(self) -> datetime:
        """When the window that ends now began."""
        return datetime.now(UTC) - self.length


def parse_since(value: str | Window) -> Window:
    """The `--since` parser: '30m', '24h', '7d' ... (at most ten years)."""
    if isinstance(value, Window):
        return value
    try:
        return Window(value, parse_duration(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


def since_option(text: str) -> Any:
    """A `--since` option with help ``text``, parsed into a ``Window`` when the command line
    is (an invalid one is a usage error naming `--since`)."""
    return typer.Option(parser=parse_since, metavar="<str>", help=text)


DAY = parse_since("24h")  # the default window
SinceOption = Annotated[Window, since_option("Data window ending now: 30m, 24h, 7d ...")]
AgentOption = Annotated[str, typer.Option("--agent", help="The agent's id.")]
RoleOption = Annotated[str, typer.Option(help="student or teacher.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]
# `prompts label` and `checkpoints label`
LabelOption = Annotated[
    str,
    typer.Option(
        help="canary (a share of live traffic, compared with production by the rollout's"
        " test) or a bookmark of your own (staging, ...): lower case, digits, '-', '_'."
    ),
]
LabelledVersionOption = Annotated[
    int | None, typer.Option(help="The stored version to label (not with --remove).")
]
ShareOption = Annotated[
    float, typer.Option(min=0.001, max=0.5, help="canary only: the share of tasks it gets.")
]
RemoveOption = Annotated[bool, typer.Option(help="Remove the label (a tombstone).")]
HostOption = Annotated[
    str, typer.Option(help="Address to listen on; keep 127.0.0.1 unless a network needs it.")
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve Prometheus metrics at http://ATLAS_METRICS_HOST:PORT/metrics (host"
        " 127.0.0.1 unless set); default ATLAS_METRICS_PORT, 0 = none.",
    ),
]


def worker_settings(ctx: typer.Context, metrics_port: int | None) -> Settings:
    """The settings, with --metrics-port over ATLAS_METRICS_PORT when given."""
    settings = get_settings(ctx)
    if metrics_port is None:
        return settings
    return settings.model_copy(update={"metrics_port": metrics_port})


def check_role(role: str) -> None:
    """A usage error (exit status 2) unless ``role`` is a role agents have."""
    from runtime.prompts import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"choose {' or '.join(ROLES)}", param_hint="--role")


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(level: int | None = None, quiet: Sequence[str] = ()) -> None:
    """This process's logging, set once per invocation by the commands that log: every record
    scrubbed of the secrets the process holds; with ``level``, records from that level up go
    to stderr with a timestamp; the ``quiet`` loggers only say warnings and errors."""
    if level is not None:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    from schemas.secrets import scrub_log_records

    scrub_log_records()


def version_cells(version: PromptVersion | CheckpointEvent, in_use: bool) -> list[str]:
    """The lineage columns `prompts list` and `checkpoints list` both show, in order: role,
    version (``*`` when in use), parent, source, created, held-out and previous figures."""
    return [
        version.role,
        f"{version.version}{' *' if in_use else ''}",
        "" if version.parent_version is None else str(version.parent_version),
        version.source,
        f"{version.created_at:%Y-%m-%d %H:%M}",
        *(_figure(f) for f in (version.heldout_reward, version.baseline_reward)),
    ]


def label_command(
    ctx: typer.Context, agent: str, role: str, label: str, version: int | None, share: float,
    remove: bool, kind: RolloutKind,
) -> None:  # fmt: skip
    """What `prompts label` and `checkpoints label` do: the action (``atlas/actions.py``), its
    refusal as a usage error (exit 2), what it did in words."""
    from atlas.actions import ActionRefused, label_version

    check_role(role)
    try:
        done = label_version(get_settings(ctx), agent, role, label, version, share, remove, kind)
    except ActionRefused as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.param) from None
    console.print(done, highlight=False)


def labels_on(
    labels: dict[tuple[str, str], PromptVersion | CheckpointEvent],
    version: PromptVersion | CheckpointEvent,
) -> list[str]:
    """The labels on ``version`` now (from a replay of its topic), a canary with its share."""
    return sorted(
        name if x.traffic_share is None else f"{name} {x.traffic_share:.1%}"
        for (role, name), x in labels.items()
        if role == version.role and x.version == version.version
    )


def policy_line(policy: MemoryPolicy) -> str:
    """A memory policy in one line, for people."""
    if not policy.enabled:
        return "off"
    return (
        f"on, k={policy.k}, token budget {policy.token_budget}, min BM25 score {policy.min_score:g}"
    )


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def publish_as_learner(
    settings: Settings, events: Sequence[Event], tombstones: Sequence[tuple[str, bytes]] = ()
) -> None:
    """Send ``events`` and ``tombstones`` ((topic, key)) in one Kafka transaction with the
    learner's credentials, signed with its key when this host has one (publishing a prompt or
    a checkpoint, or removing a label, is a learner act)."""
    import uuid

    from consumers.jobs import TransactionalProducer

    TransactionalProducer(
        settings.kafka_config("learner"),
        f"atlas-cli-{uuid.uuid4().hex}",
        settings.codec(),
        settings.signer(),
    ).send(events, tombstones)
