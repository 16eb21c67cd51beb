"""Tracing an agent's own code: a block (``Tracer.record``, a context manager, sync or async)
or a function (``traced``, a decorator, sync or async) becomes one ``InteractionEvent``, built
and produced on a background recorder (``runtime/recorder.py``) after the block ends.

What a trace holds (rendered on the recorder's thread by :func:`trace_event`):

* **task input**: what the block was given (``record(input=...)`` or ``trace.input``), else
  the conversation of its first captured model call (the system prompt in ``metadata``, as
  the recording proxy does), else the decorated function's arguments (one text argument as it
  is, several as JSON by name).
* **answer**: ``trace.output`` if set, else the decorated function's return value when it is
  text, else the last captured model call's completion, else the return value as JSON.
* **steps**: one student step per model call captured inside the block (the ``openai``
  client's chat completions, streamed or not: ``runtime/openai_capture.py``), with its model
  and token usage; a block without calls gets one step holding the answer.
* the prompt versions (and canary arms) that :meth:`Tracer.prompt` handed out inside it.

Guarantees:

* The agent's call is never blocked and never changed: ending a block only hands the trace to
  the recorder's bounded queue (``submit``, microseconds); a full queue drops the trace and
  counts it (``stats()["dropped"]``). The block's exception propagates unchanged.
* A block that raises an ``Exception`` is recorded with ``metadata["error"]`` = the
  exception's class name (never its message: it may hold user data or secrets) and the answer
  it got so far (the last captured completion, else empty), so failures are scored and
  monitored like any other trace; a block left by ``BaseException`` (cancellation,
  ``KeyboardInterrupt``, ``SystemExit``) is not recorded, only counted (``abandoned``).
* Blocks nest: a block or traced function inside an active trace joins it (its calls are
  the outer trace's), so one task is one event.
* The active trace follows ``contextvars``: each asyncio task sees its own; a thread started
  inside a block does not see it.
* Fields set on a trace after its block ended may or may not be in the event.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from runtime.calls import ModelCall, interaction_event, request_metadata, task_input_of
from runtime.producer import feedback_event
from runtime.recorder import Recorder
from runtime.rollout import with_canaries
from schemas.models import (
    CANARY,
    PRODUCTION,
    FeedbackKind,
    InteractionEvent,
    PromptRef,
    PromptVersion,
    RolloutArm,
    new_id,
    path_component,
)

SOURCE = "atlas-sdk"
F = TypeVar("F", bound=Callable[..., Any])
_active: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("atlas_trace", default=None)
_last: contextvars.ContextVar[str | None] = contextvars.ContextVar("atlas_last", default=None)


class LabelledPrompts(Protocol):
    """Prompt versions by label (``runtime.follow.RoleVersionFollower`` is one)."""

    def labelled(self, agent_id: str, label: str) -> dict[str, PromptVersion]: ...

    def close(self) -> None: ...


@dataclass
class CapturedCall:
    """A model call as captured on the agent's path: references only, read on the recorder's
    thread. ``response`` is an ``openai`` completion object, or a stream's chunk objects."""

    request: dict[str, Any]
    messages: list[Any]
    response: Any
    latency_ms: float
    streamed: bool = False


@dataclass(eq=False)
class Trace:
    """One task of the agent, filled while its block runs; set ``input`` / ``output`` to name
    the task and its answer yourself, add string ``metadata``."""

    agent_id: str
    trace_id: str = field(default_factory=new_id)
    input: Any = None
    output: Any = None
    task_id: str | None = None
    task_family: str | None = None
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    calls: list[CapturedCall] = field(default_factory=list)
    prompt_versions: dict[str, int] = field(default_factory=dict)
    rollouts: list[RolloutArm] = field(default_factory=list)
    function: Callable[..., Any] | None = None
    arguments: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    returned: Any = None
    error: str | None = None
    latency_ms: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def current_trace() -> Trace | None:
    """The trace whose block is running in this context, if any."""
    return _active.get()


def last_trace_id() -> str | None:
    """The id of the last trace this context recorded (after its block): for ``feedback``."""
    return _last.get()


class Scope:
    """The context manager ``Tracer.record`` returns (``with`` or ``async with``); entering
    gives the ``Trace`` (the outer one when a trace is already active)."""

    def __init__(self, tracer: Tracer, trace: Trace):
        self.tracer, self.trace = tracer, trace
        self._token: contextvars.Token[Trace | None] | None = None

    def __enter__(self) -> Trace:
        outer = _active.get()
        if outer is not None:
            return outer  # joined: the outer trace records the calls
        self.trace.started = time.perf_counter()
        self._token = _active.set(self.trace)
        return self.trace

    def __exit__(self, _kind: object, error: BaseException | None, _tb: object) -> None:
        if self._token is None:
            return
        try:
            _active.reset(self._token)
        except ValueError:  # left in another context than entered (a task handed it on)
            _active.set(None)
        self._token = None
        self.tracer.finish(self.trace, error)

    async def __aenter__(self) -> Trace:
        return self.__enter__()

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self.__exit__(kind, error, tb)

    @property
    def own(self) -> bool:
        """Whether this scope records its trace (it did not join an outer one)."""
        return self._token is not None


class Tracer:
    """Records an agent's traces on ``recorder`` (whose ``convert`` is :func:`trace_event`).
    ``prompts`` opens the prompt follower on first use of :meth:`prompt`."""

    def __init__(
        self,
        agent_id: str,
        recorder: Recorder,
        prompts: Callable[[], LabelledPrompts] | None = None,
    ):
        self.agent_id = path_component(agent_id, "agent id")
        self.recorder = recorder
        self._open_prompts = prompts
        self._prompts: LabelledPrompts | None = None
        self._prompts_lock = threading.Lock()
        self._lock = threading.Lock()
        self.abandoned = 0
        from runtime.openai_capture import install  # it imports this module

        install()

    def record(
        self,
        input: Any = None,
        *,
        task_id: str | None = None,
        task_family: str | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Scope:
        """A block recorded as one trace: ``with tracer.record("question") as trace: ...``."""
        trace = Trace(
            self.agent_id,
            input=input,
            task_id=task_id,
            task_family=task_family,
            model=model,
            metadata=dict(metadata or {}),
        )
        return Scope(self, trace)

    def finish(self, trace: Trace, error: BaseException | None) -> None:
        """Hand the ended ``trace`` to the recorder (never blocks, never raises)."""
        trace.latency_ms = (time.perf_counter() - trace.started) * 1000
        if error is not None and not isinstance(error, Exception):
            with self._lock:
                self.abandoned += 1
            return
        if error is not None:
            trace.error = type(error).__name__
        _last.set(trace.trace_id)
        self.recorder.submit(trace)

    def feedback(
        self, trace_id: str | None = None, kind: FeedbackKind = "approve", **fields: Any
    ) -> bool:
        """Queue feedback on ``trace_id`` (default: the last trace of this context), with the
        fields of ``runtime.producer.feedback_event``; ValueError (one line) for invalid
        feedback, at once. False when the queue is full (dropped and counted)."""
        trace_id = trace_id or _last.get()
        if not trace_id:
            raise ValueError("no trace id given and no trace recorded in this context yet")
        fields.setdefault("agent_id", self.agent_id)
        return self.recorder.submit(feedback_event(trace_id, kind, **fields))

    def prompt(
        self, role: str = "student", *, label: str | None = None, default: str | None = None
    ) -> str:
        """The text of the agent's ``role`` prompt under ``label`` (default production: inside
        a trace, a running canary's share of traces gets the canary), else ``default``;
        LookupError when neither exists. Inside a trace, the trace names the version (and its
        canary arm). The first call replays the prompts topic (a few seconds at most)."""
        prompts = self._follower()
        trace = _active.get()
        arms: list[RolloutArm] = []
        if label is None or label == PRODUCTION:
            label, versions = PRODUCTION, prompts.labelled(self.agent_id, PRODUCTION)
            if trace is not None:
                canaries = prompts.labelled(self.agent_id, CANARY)
                versions, arms = with_canaries(versions, canaries, trace.trace_id)
        else:
            versions = prompts.labelled(self.agent_id, label)
        version = versions.get(role)
        if version is None:
            if default is None:
                raise LookupError(
                    f"no {label} prompt is published for {self.agent_id}/{role} and no default"
                    " was given"
                )
            return default
        if trace is not None:
            trace.prompt_versions[role] = version.version
            trace.rollouts = [a for a in trace.rollouts if a.role != role]
            trace.rollouts += [arm for arm in arms if arm.role == role]
        return version.text

    def _follower(self) -> LabelledPrompts:
        with self._prompts_lock:
            if self._prompts is None:
                if self._open_prompts is None:
                    raise LookupError("this tracer follows no prompts topic")
                self._prompts = self._open_prompts()
            return self._prompts

    def stats(self) -> dict[str, int]:
        """The recorder's counters, and ``abandoned`` (blocks left by cancellation)."""
        return {**self.recorder.stats(), "abandoned": self.abandoned}

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued and flush it to Kafka (within about ``timeout``; what Kafka
        has not acknowledged by then goes to the spill file, if any)."""
        self.recorder.close(timeout)
        with self._prompts_lock:
            if self._prompts is not None:
                self._prompts.close()
                self._prompts = None


def traced(
    fn: F, tracer: Callable[[], Tracer], task_family: str | None = None, model: str | None = None
) -> F:
    """``fn`` recorded as one trace per call by ``tracer()`` (resolved at each call, so a
    module may decorate before the tracer is configured); sync or async. Generators are
    refused: their body runs after the call returns."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"@traced cannot wrap the generator {fn.__qualname__}: trace its consumer")
    name = getattr(fn, "__qualname__", "call")

    def scope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Scope:
        scope = tracer().record(task_id=name, task_family=task_family, model=model)
        scope.trace.function, scope.trace.arguments = fn, (args, kwargs)
        return scope

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            recording = scope(args, kwargs)
            async with recording as trace:
                result = await fn(*args, **kwargs)
                if recording.own:
                    trace.returned = result
                return result

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        recording = scope(args, kwargs)
        with recording as trace:
            result = fn(*args, **kwargs)
            if recording.own:
                trace.returned = result
            return result

    return run  # type: ignore[return-value]


def rendered(value: Any) -> str:
    """``value`` as text: a string as it is, anything else as JSON (``str`` for what JSON
    cannot hold), else its ``repr``."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return repr(value)


def _arguments_text(trace: Trace) -> str:
    assert trace.arguments is not None
    args, kwargs = trace.arguments
    try:
        bound = inspect.signature(trace.function).bind_partial(*args, **kwargs)  # type: ignore[arg-type]
        named = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
    except (TypeError, ValueError):
        named = {"args": list(args), **kwargs}
    if len(named) == 1 and isinstance(next(iter(named.values())), str):
        return str(next(iter(named.values())))
    return rendered(named)


def _model_calls(trace: Trace) -> list[ModelCall]:
    from runtime.openai_capture import model_call  # it imports this module

    return [call for call in map(model_call, trace.calls) if call is not None]


def trace_event(trace: Trace) -> InteractionEvent:
    """The ended ``trace`` as an ``InteractionEvent`` (the rules in this module's docstring);
    the recorder's ``convert``."""
    calls = _model_calls(trace) if trace.calls else []
    metadata = {"source": SOURCE, **{str(k): rendered(v) for k, v in trace.metadata.items()}}
    task_input, system = "", ""
    if trace.calls and isinstance(trace.calls[0].messages, list):
        messages = [m for m in trace.calls[0].messages if isinstance(m, dict) and "role" in m]
        task_input, system = task_input_of(messages) if messages else ("", "")
        metadata.update(request_metadata(trace.calls[0].request))
    if trace.input is not None:
        task_input = rendered(trace.input)
    elif not task_input and trace.arguments is not None:
        task_input = _arguments_text(trace)
    if trace.output is not None:
        answer = rendered(trace.output)
    elif isinstance(trace.returned, str):
        answer = trace.returned
    elif calls:
        answer = calls[-1].answer
    else:
        answer = "" if trace.returned is None else rendered(trace.returned)
    if trace.error:
        metadata["error"] = trace.error
    if any(call.streamed for call in trace.calls):
        metadata["streamed"] = "true"
    return interaction_event(
        trace_id=trace.trace_id,
        agent_id=trace.agent_id,
        task_id=trace.task_id or "sdk",
        task_family=trace.task_family,
        task_input=task_input,
        system=system,
        final_answer=answer,
        calls=calls,
        latency_ms=trace.latency_ms,
        metadata=metadata,
        model=trace.model or "unknown",
        prompt_versions=[PromptRef(role=r, version=v) for r, v in trace.prompt_versions.items()],
        rollouts=trace.rollouts,
    )
