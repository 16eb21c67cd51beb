"""A tiny OpenAI-compatible upstream for the proxy's unit tests and benchmark: answers a chat
completion by echoing the last user turn (streamed word by word, ``delay`` seconds between
chunks), fails on request (model ``fail-<status>``), and counts what it received."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class FakeUpstream:
    def __init__(self, delay: float = 0.0, api_key: str | None = None):
        self.delay = delay
        self.api_key = api_key
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    def _denied(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "bad key", "type": "auth"}}, 401)
        return None

    async def models(self, request: Request) -> Response:
        denied = self._denied(request)
        return denied or JSONResponse(
            {"object": "list", "data": [{"id": "echo-1", "object": "model", "owned_by": "t"}]}
        )

    async def chat(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        denied = self._denied(request)
        if denied:
            return denied
        payload: dict[str, Any] = json.loads(body)
        model = payload.get("model", "echo-1")
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            return JSONResponse({"error": {"message": f"failed {status}", "type": "x"}}, status)
        answer = f"echo: {payload['messages'][-1]['content']}"
        if payload.get("stream"):
            return StreamingResponse(self._stream(model, answer), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        )

    async def _stream(self, model: str, answer: str) -> AsyncIterator[bytes]:
        words = answer.split(" ")
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else " " + word}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            if self.delay:
                await asyncio.sleep(self.delay)
        last = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 9},
        }
        yield f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode()
