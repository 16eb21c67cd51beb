"""The OpenAI-compatible recording proxy: agents point their OpenAI client's ``base_url`` here
instead of at their model server; every chat completion is forwarded to the upstream and
recorded as an ``InteractionEvent`` on ``atlas.interactions.v1``.

Endpoints:

* ``POST /v1/chat/completions``, streamed (SSE) or not: the request body goes upstream as it
  came; the upstream's status, headers (less hop-by-hop ones) and body come back unchanged, a
  stream chunk by chunk as the upstream sends it. A 2xx answer carries ``X-Atlas-Trace-Id``,
  the trace id it is recorded under; other statuses pass through unrecorded.
* ``GET /v1/models``: passed through.
* ``POST /v1/feedback``: ``{"trace_id", "kind", ...}`` (the fields of ``FeedbackEvent``) for
  a trace id the proxy returned; 202 once queued for Kafka.
* ``GET /atlas/stats``: the counters (recorded, delivered, spilled, dropped, refused, ...).

Guarantees:

* Recording is off the request's path: once the answer is sent (a stream: after its last
  chunk), the handler only puts the exchange on the recorder's bounded queue (``submit``,
  microseconds); parsing, encoding and Kafka happen on the recorder's thread
  (``runtime/recorder.py``). Kafka being away never changes an answer: events are spilled to a
  file and sent again when Kafka is back.
* The agent is the one its API key maps to (``agent_keys``: only sha256 digests of keys are
  kept; keys are never logged, stored or put in an event), else the ``X-Atlas-Agent`` header,
  else ``default_agent``. The ``Authorization`` header goes upstream as it came.
* Bad input is refused before anything goes upstream: a body over ``max_body_bytes`` with 413,
  invalid JSON or wrong types with 400, each with a one-line reason in OpenAI's error shape.
  The upstream unreachable is 502, timing out 504, each with a one-line reason.
* Managed prompts (``ingest/managed.py``, with ``managed``): a call with the
  ``X-Atlas-Managed-Prompt`` header gets its agent's current student prompt version in place
  of its system prompt; only then is the body sent upstream changed.
* Memory per request is bounded: a request body by ``max_body_bytes``, what a stream keeps to
  record by ``max_record_bytes`` (beyond it the stream still passes through whole and the
  event says the answer is incomplete).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ingest.exchange import Exchange
from ingest.feedback import BodyTooLarge, feedback_from, read_capped
from ingest.managed import MANAGED_HEADER, OPT_IN, ManagedPrompts
from ingest.relay import StreamRelay
from runtime.recorder import Recorder
from schemas.models import FeedbackEvent, new_id, path_component
from schemas.secrets import redact_url

log = logging.getLogger(__name__)
TRACE_HEADER = "X-Atlas-Trace-Id"
AGENT_HEADER = "X-Atlas-Agent"
TASK_HEADER = "X-Atlas-Task-Id"
FAMILY_HEADER = "X-Atlas-Task-Family"
MIB = 1024 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)


def key_digest(key: str) -> str:
    """What the proxy keeps of an API key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ProxyConfig:
    """``upstream`` is the upstream's OpenAI base URL, ``/v1`` included (as a client's
    ``base_url``); ``agent_keys`` maps sha256 digests of API keys (:func:`key_digest`) to
    agent ids."""

    upstream: str
    default_agent: str | None = "proxy"
    agent_keys: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 4 * MIB
    max_feedback_bytes: int = 64 * 1024
    max_record_bytes: int = 8 * MIB
    upstream_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        self.upstream = self.upstream.rstrip("/")
        if not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"upstream {self.upstream!r} is no http(s) URL")
        if self.default_agent is not None:
            path_component(self.default_agent, "default agent id")


class Refused(Exception):
    """A request the proxy answers itself: status and a one-line reason."""

    def __init__(self, status: int, reason: str, kind: str = "invalid_request_error"):
        super().__init__(reason)
        self.status, self.reason, self.kind = status, reason, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.reason, "type": self.kind, "code": self.status}}
        return JSONResponse(body, status_code=self.status)


def check_chat_request(raw: bytes) -> dict[str, Any]:
    """The request as JSON if it is a chat completion request we can record, else Refused
    (400) naming what is wrong. Only what recording reads is checked; the upstream judges the
    rest."""
    request = _json_object(raw, "request")
    if "model" in request and not isinstance(request["model"], str):
        raise Refused(400, "'model' must be a string")
    if "stream" in request and not isinstance(request["stream"], bool):
        raise Refused(400, "'stream' must be true or false")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "'messages' must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise Refused(400, f"messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise Refused(400, f"messages[{i}].content must be a string or a list of parts")
    return request


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Refused(400, f"the {what} body is not valid JSON: {reason}") from None
    if not isinstance(value, dict):
        raise Refused(400, f"the {what} body must be a JSON object, not {type(value).__name__}")
    return value


def feedback_event(raw: bytes, agent_id: str | None) -> FeedbackEvent:
    """A FeedbackEvent from a ``/v1/feedback`` body, else Refused (400) naming the problem."""
    try:
        return feedback_from(_json_object(raw, "feedback"), agent_id)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None


class RecordingProxy:
    """The proxy's handlers around one upstream client and one recorder; ``app`` is the ASGI
    application (Starlette). The recorder is started and closed by whoever owns it."""

    def __init__(
        self,
        config: ProxyConfig,
        recorder: Recorder,
        transport: httpx.AsyncBaseTransport | None = None,
        managed: ManagedPrompts | None = None,
    ):
        self.config = config
        self.managed = managed
        self.recorder = recorder
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.counts = {"refused": 0, "upstream_errors": 0, "unreachable": 0, "incomplete": 0}
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/feedback", self.feedback, methods=["POST"]),
                Route("/atlas/stats", self.stats, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(
                self.config.upstream_timeout_s, connect=self.config.connect_timeout_s
            )
            self._client = httpx.AsyncClient(
                timeout=timeout,
                transport=self._transport,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def agent_of(self, headers: Mapping[str, str]) -> tuple[str | None, bool]:
        """(agent id, named): from the API key's mapping, else the header, else the default
        (named False). Refused (400) for a header that is no valid agent id."""
        auth = headers.get("authorization", "")
        if self.config.agent_keys and auth[:7].lower() == "bearer ":
            agent = self.config.agent_keys.get(key_digest(auth[7:].strip()))
            if agent is not None:
                return agent, True
        named = headers.get(AGENT_HEADER.lower())
        if named:
            try:
                return path_component(named, f"the {AGENT_HEADER} header"), True
            except ValueError as exc:
                raise Refused(400, str(exc)) from None
        return self.config.default_agent, False

    async def _body(self, request: Request, cap: int) -> bytes:
        try:
            return await read_capped(request, cap)
        except BodyTooLarge as exc:
            raise Refused(413, str(exc)) from None

    def _upstream_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        kept = {
            k: v
            for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-atlas-")
        }
        kept["accept-encoding"] = "identity"  # the answer is recorded as well as relayed
        return kept

    @staticmethod
    def _answer_headers(upstream: httpx.Response, trace_id: str | None) -> dict[str, str]:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if trace_id is not None:
            headers[TRACE_HEADER] = trace_id
        return headers

    async def _send(self, request: Request, path: str, body: bytes) -> httpx.Response:
        url = f"{self.config.upstream}/{path}"
        built = self.client.build_request(
            request.method, url, content=body, headers=self._upstream_headers(request.headers)
        )
        try:
            return await self.client.send(built, stream=True)
        except httpx.TimeoutException as exc:
            self.counts["unreachable"] += 1
            raise Refused(
                504,
                f"upstream {redact_url(url)} timed out ({type(exc).__name__})",
                "upstream_error",
            ) from None
        except httpx.HTTPError as exc:
            self.counts["unreachable"] += 1
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise Refused(
                502,
                f"upstream {redact_url(url)} unreachable: {type(exc).__name__} {reason}".strip(),
                "upstream_error",
            ) from None

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        trace_id = new_id()
        try:
            body = await self._body(request, self.config.max_body_bytes)
            parsed = check_chat_request(body)
            agent, _ = self.agent_of(request.headers)
            if agent is None:
                raise Refused(400, f"name the agent: the {AGENT_HEADER} header or a mapped key")
            exchange = Exchange(
                trace_id=trace_id,
                agent_id=agent,
                request=parsed,
                body=b"",
                streamed=False,
                latency_ms=0.0,
                task_id=request.headers.get(TASK_HEADER.lower(), "proxy")[:128] or "proxy",
                task_family=request.headers.get(FAMILY_HEADER.lower(), "")[:128] or None,
            )
            body = self._managed(request, exchange) or body
            upstream = await self._send(request, "chat/completions", body)
        except Refused as refused:
            if refused.status < 500:
                self.counts["refused"] += 1
            return refused.response()
        ok = 200 <= upstream.status_code < 300
        if not ok:
            self.counts["upstream_errors"] += 1
        headers = self._answer_headers(upstream, trace_id if ok else None)
        if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                content = await upstream.aread()
            except httpx.HTTPError as exc:
                await upstream.aclose()
                self.counts["unreachable"] += 1
                return Refused(502, f"upstream answer broke off: {type(exc).__name__}").response()
            await upstream.aclose()
            task = None
            if ok:
                exchange.body = content
                exchange.latency_ms = (time.perf_counter() - started) * 1000
                task = BackgroundTask(self.recorder.submit, exchange)  # after the answer is sent
            return Response(content, upstream.status_code, headers, background=task)
        relay = StreamRelay(
            upstream,
            exchange if ok else None,
            started,
            self.config.max_record_bytes,
            self.recorder.submit,
            self._incomplete,
        )
        return StreamingResponse(
            relay.chunks(),
            status_code=upstream.status_code,
            headers=headers,
            background=BackgroundTask(relay.finish),
        )

    def _managed(self, request: Request, exchange: Exchange) -> bytes | None:
        """The request body with the agent's managed prompt when it opts in (the
        ``X-Atlas-Managed-Prompt`` header), the exchange naming the version; None otherwise."""
        opted = request.headers.get(MANAGED_HEADER.lower())
        if opted is None:
            return None
        if opted.strip().lower() not in OPT_IN:
            raise Refused(400, f"{MANAGED_HEADER} must be one of {sorted(OPT_IN)}")
        if self.managed is None:
            raise Refused(400, "this proxy runs without managed prompts (--managed-prompts)")
        applied = self.managed.apply(exchange.agent_id, exchange.trace_id, exchange.request)
        if applied is None:
            exchange.extra["managed_prompt"] = "none published"
            return None
        exchange.request = applied.request
        exchange.prompt_versions, exchange.rollouts = applied.prompt_versions, applied.rollouts
        return json.dumps(applied.request, ensure_ascii=False).encode()

    def _incomplete(self) -> None:
        self.counts["incomplete"] += 1

    async def models(self, request: Request) -> Response:
        try:
            upstream = await self._send(request, "models", b"")
        except Refused as refused:
            return refused.response()
        try:
            content = await upstream.aread()
        finally:
            await upstream.aclose()
        return Response(content, upstream.status_code, self._answer_headers(upstream, None))

    async def feedback(self, request: Request) -> Response:
        try:
            body = await self._body(request, self.config.max_feedback_bytes)
            agent, named = self.agent_of(request.headers)
            event = feedback_event(body, agent if named else None)
        except Refused as refused:
            self.counts["refused"] += 1
            return refused.response()
        if not self.recorder.submit(event):
            return Refused(503, "the recorder's queue is full; retry", "server_error").response()
        return JSONResponse({"event_id": event.event_id, "trace_id": event.trace_id}, 202)

    async def stats(self, _request: Request) -> Response:
        return JSONResponse({**self.recorder.stats(), **self.counts})
