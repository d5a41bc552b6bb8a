"""An OpenAI-compatible fake model provider on 127.0.0.1, with scripted replies.

It answers `POST /v1/chat/completions` with the next scripted reply (plain text,
tool calls or an HTTP error) and records every request it received, headers and
body, so tests can check what actually reached the provider.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

DEFAULT_TEXT: Final = "(the fake model has no scripted reply left)"


@dataclass(frozen=True)
class Text:
    """An assistant message with text content; usage reports `completion_tokens` if given."""

    text: str
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCalls:
    """An assistant message that asks for tool calls."""

    calls: list[ToolCall]
    text: str | None = None


@dataclass(frozen=True)
class Failure:
    """An HTTP error in OpenAI's error shape."""

    status: int
    message: str = "the fake provider failed"


@dataclass(frozen=True)
class Slow:
    """`reply`, after `seconds`: a provider that takes its time."""

    seconds: float
    reply: Text | ToolCalls | Failure


Reply = Text | ToolCalls | Failure | Slow


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def authorization(self) -> str:
        return self.headers.get("Authorization", "")


@dataclass
class FakeModelServer:
    """The fake provider; `url` is the api_base (".../v1") once started."""

    requests: list[Received] = field(default_factory=list)
    script: deque[Reply] = field(default_factory=deque)
    url: str = ""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def _completions(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append(Received(dict(request.headers), body))
        reply: Reply = self.script.popleft() if self.script else Text(DEFAULT_TEXT)
        if isinstance(reply, Slow):
            await asyncio.sleep(reply.seconds)
            reply = reply.reply
        if isinstance(reply, Failure):
            error = {"error": {"message": reply.message, "type": "server_error", "code": None}}
            return web.json_response(error, status=reply.status)
        number = next(self._ids)
        message: dict[str, Any]
        if isinstance(reply, Text):
            message = {"role": "assistant", "content": reply.text}
            finish = "stop"
            completion_tokens = reply.completion_tokens or max(1, len(reply.text) // 4)
        else:
            message = {
                "role": "assistant",
                "content": reply.text,
                "tool_calls": [
                    {
                        "id": f"call_{number}_{index}",
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                    for index, call in enumerate(reply.calls)
                ],
            }
            finish = "tool_calls"
            completion_tokens = 10 * len(reply.calls)
        prompt_tokens = max(1, len(raw) // 4)
        return web.json_response(
            {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        return app


@asynccontextmanager
async def running_model_server() -> AsyncIterator[FakeModelServer]:
    """A started fake on an OS-chosen port of 127.0.0.1."""
    server = FakeModelServer()
    # A short shutdown: a test may leave slow replies in flight on purpose.
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = runner.addresses
    port = sockets[0][1]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()
