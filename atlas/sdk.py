"""``atlas.sdk``: record an existing agent in three lines.

    from atlas import sdk
    @sdk.traced  # over the agent's function: each call one trace, its openai calls the steps
    sdk.feedback(sdk.last_trace_id(), "approve")  # where the user gives a verdict

The face of ``runtime/tracing.py`` (traces, their rules), ``runtime/openai_capture.py`` (the
``openai`` client's calls inside a trace) and ``runtime/recorder.py`` (the background
producer), configured from the environment like every other process (``SdkSettings``):
``ATLAS_AGENT_ID``; Kafka from ``ATLAS_KAFKA_BOOTSTRAP`` and ``ATLAS_KAFKA_SECURITY_PROTOCOL``
/ ``_SASL_*`` / ``_SSL_CA_LOCATION``, else the local stack's (``atlas up``, with the agent
role's credentials when it runs ``--secure``); the registry and size limits as
``Settings.codec``; prompt versions checked against the learner's key as ``atlas agent run``.

The default tracer is made on first use and closed at interpreter exit (``atexit``): what is
queued is produced and flushed for up to ``ATLAS_SDK_FLUSH_S`` seconds, and what Kafka has not
acknowledged by then is kept in ``$ATLAS_HOME/spill/sdk-<agent>.jsonl`` (``ATLAS_SDK_SPILL``)
and sent first by the next process of that agent. A configuration error (no Kafka configured,
a bad agent id) is raised by the first call that needs the tracer, with what to set.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from pydantic import Field

from atlas.settings import Settings
from runtime.follow import RoleVersionFollower
from runtime.recorder import open_recorder
from runtime.tracing import Scope, Tracer, current_trace, last_trace_id, trace_event
from runtime.tracing import traced as _traced
from schemas.models import FeedbackKind, PromptVersion, path_component
from schemas.topics import PROMPTS

__all__ = [
    "SdkSettings",
    "close",
    "configure",
    "current_trace",
    "feedback",
    "last_trace_id",
    "prompt",
    "record",
    "stats",
    "traced",
    "tracer",
]
F = TypeVar("F", bound=Callable[..., Any])


class SdkSettings(Settings):
    """``Settings`` (``ATLAS_*``) and the SDK's own."""

    agent_id: str = Field(default="sdk-agent", description="The agent's id (ATLAS_AGENT_ID).")
    sdk_queue: int = Field(
        default=10_000, ge=1, description="Traces waiting for the producer; beyond, dropped."
    )
    sdk_spill: bool = Field(
        default=True, description="Keep what Kafka did not acknowledge in $ATLAS_HOME/spill."
    )
    sdk_flush_s: float = Field(
        default=10.0, gt=0, description="How long exit waits for Kafka's acknowledgements."
    )


_tracer: Tracer | None = None
_flush_s = 10.0
_lock = threading.Lock()


def configure(agent_id: str | None = None, settings: SdkSettings | None = None) -> Tracer:
    """(Re)make the default tracer, from ``settings`` (default: the environment); the one
    before, if any, is flushed and closed first."""
    with _lock:
        return _configure(agent_id, settings)


def _configure(agent_id: str | None, settings: SdkSettings | None) -> Tracer:
    global _tracer, _flush_s  # under _lock
    settings = settings or SdkSettings()
    if _tracer is not None:
        _tracer.close(_flush_s)
        _tracer = None
    _tracer, _flush_s = _made(agent_id or settings.agent_id, settings), settings.sdk_flush_s
    return _tracer


def _made(agent_id: str, settings: SdkSettings) -> Tracer:
    path_component(agent_id, "agent id (ATLAS_AGENT_ID)")  # it names the spill file
    kafka, codec = settings.kafka_config("agent"), settings.codec()
    spill = settings.home / "spill" / f"sdk-{agent_id}.jsonl" if settings.sdk_spill else None

    def prompts() -> RoleVersionFollower[PromptVersion]:
        follower = RoleVersionFollower(kafka, PROMPTS, PromptVersion, codec, settings.verifier())
        return follower.start()  # type: ignore[no-any-return]

    recorder = open_recorder(
        kafka, codec, spill, capacity=settings.sdk_queue, convert=trace_event, name="atlas-sdk"
    )
    return Tracer(agent_id, recorder, prompts)


def tracer() -> Tracer:
    """The default tracer, made from the environment on first use."""
    current = _tracer
    if current is not None:
        return current
    with _lock:
        return _tracer or _configure(None, None)


@overload
def traced(fn: F) -> F: ...


@overload
def traced(*, task_family: str | None = None, model: str | None = None) -> Callable[[F], F]: ...


def traced(fn: Any = None, *, task_family: str | None = None, model: str | None = None) -> Any:
    """Record each call of ``fn`` (sync or async) as one trace: its arguments the task input
    (unless a captured model call names it), its return value the answer, every ``openai``
    chat completion made inside it a step. ``@traced`` or ``@traced(task_family=...)``."""
    if fn is None:
        return lambda f: _traced(f, tracer, task_family, model)
    return _traced(fn, tracer, task_family, model)


def record(input: Any = None, **fields: Any) -> Scope:
    """A block recorded as one trace (``with`` or ``async with``): ``task_id``,
    ``task_family``, ``model`` and ``metadata`` as keywords; set ``trace.output``."""
    return tracer().record(input, **fields)


def feedback(trace_id: str | None = None, kind: FeedbackKind = "approve", **fields: Any) -> bool:
    """Feedback on ``trace_id`` (default: this context's last trace) to the feedback topic:
    ``edited_text``, ``rating``, ``tool_success``, ``comment``, ... as keywords."""
    return tracer().feedback(trace_id, kind, **fields)


def prompt(role: str = "student", *, label: str | None = None, default: str | None = None) -> str:
    """The agent's published prompt for ``role`` under ``label`` (default production, with
    canary routing inside a trace), else ``default``."""
    return tracer().prompt(role, label=label, default=default)


def stats() -> dict[str, int]:
    """The default tracer's counters (recorded, delivered, spilled, dropped, ...)."""
    return tracer().stats()


def close() -> None:
    """Flush and close the default tracer (also run at exit); a later call makes a new one."""
    global _tracer
    with _lock:
        if _tracer is not None:
            _tracer.close(_flush_s)
            _tracer = None


atexit.register(close)
