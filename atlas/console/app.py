"""The console's web application: FastAPI with Jinja2 templates, plotly.js served from the
`plotly` package (no CDN, no JavaScript build), locked with the stack's console password.

Guarantees:
* every request but ``/ping`` needs HTTP Basic credentials (user ``atlas``, the console
  password), compared in constant time; wrong or missing ones get 401 and nothing else;
* only a ``Host`` of 127.0.0.1, localhost or [::1] is answered (no DNS rebinding from a page);
* a POST (every action) needs the form's CSRF token and, when the browser sends an Origin,
  one that is this console's: another site's page cannot act with the operator's credentials;
* a bad query parameter is a 400 page that says which and why; a failure of the store or the
  broker is a 503 page with one line; neither shows a traceback or a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import SecretStr
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from atlas.settings import Settings
from schemas.secrets import ensure_secret, remember, scrub

log = logging.getLogger("atlas.console")
USER = "atlas"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class BadInput(ValueError):
    """A request parameter a person got wrong: the console answers 400 with this message."""


def console_password(settings: Settings) -> SecretStr:
    """ATLAS_CONSOLE_PASSWORD, else ``$ATLAS_HOME/secrets/console.password`` (0600, made on
    first use), known to the log scrubber."""
    password = settings.console_password or ensure_secret(settings.secrets_dir / "console.password")
    remember(password)
    return password


def csrf_token(password: SecretStr) -> str:
    """The action forms' token: derived from the password, so only a page this console served
    (which another origin cannot read) carries it."""
    key = password.get_secret_value().encode()
    return hmac.new(key, b"atlas-console-csrf", hashlib.sha256).hexdigest()


def plotly_js() -> Path:
    """plotly.min.js as the `plotly` package ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class Guard(BaseHTTPMiddleware):
    """Host check and HTTP Basic authentication in front of every route but /ping."""

    def __init__(self, app: Any, password: SecretStr):
        super().__init__(app)
        self.expected = f"{USER}:{password.get_secret_value()}".encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        host = request.headers.get("host", "").rsplit(":", 1)[0]  # IPv6: "[::1]:8770"
        if host not in LOCAL_HOSTS:
            return PlainTextResponse("the console answers only 127.0.0.1 or localhost", 400)
        if request.url.path == "/ping":
            return PlainTextResponse("ok")
        if not self._authorized(request.headers.get("authorization", "")):
            return PlainTextResponse(
                "the console needs its password (user atlas)",
                401,
                headers={"WWW-Authenticate": 'Basic realm="atlas console", charset="UTF-8"'},
            )
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or len(encoded) > 4096:
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)


def check_csrf(request: Request, token: str, expected: str) -> None:
    """Refuse (BadInput) a POST without this console's token, or from another origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        raise BadInput("this form came from another site: nothing was done")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise BadInput("the form's token is missing or stale: reload the page and try again")


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A template rendered with what every page needs (the CSRF token for its forms)."""
    context.setdefault("csrf", request.app.state.csrf)
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status)


def create_app(settings: Settings, password: SecretStr) -> FastAPI:
    """The console for the stack of ``settings``, locked with ``password``."""
    from confluent_kafka import KafkaException

    from atlas.console import actions, views
    from deploy.local.processes import StackError
    from store.client import StoreUnavailable

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        from atlas.console.live import follow_jobs

        app.state.jobs = await run_in_threadpool(follow_jobs, settings)
        try:
            yield
        finally:
            if app.state.jobs is not None:
                app.state.jobs.close()

    app = FastAPI(
        title="atlas console", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.settings = settings
    app.state.jobs = None  # the live follower of atlas.jobs.v1, once started
    app.state.csrf = csrf_token(password)
    app.add_middleware(Guard, password=password)
    app.include_router(views.router)
    app.include_router(actions.router)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_bundle() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.exception_handler(BadInput)
    def bad_input(request: Request, exc: BadInput) -> HTMLResponse:
        return page(request, "error.html", 400, title="Bad request", message=str(exc))

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(StackError)
    @app.exception_handler(KafkaException)
    @app.exception_handler(TimeoutError)  # a topic that could not be read in time
    def unavailable(request: Request, exc: Exception) -> HTMLResponse:
        message = scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        log.warning("console: %s", message)
        return page(request, "error.html", 503, title="Unavailable", message=message)

    @app.exception_handler(Exception)
    def failure(request: Request, exc: Exception) -> HTMLResponse:
        # ClickHouse refusing a query (e.g. a value it cannot take) lands here: one line, no
        # traceback to the browser; the log keeps the type for the operator.
        reason = scrub(str(exc))[:300]
        log.warning("console: %s on %s: %s", type(exc).__name__, request.url.path, reason)
        message = f"the request failed ({type(exc).__name__}); see the console's log"
        return page(request, "error.html", 500, title="Failed", message=message)

    return app
