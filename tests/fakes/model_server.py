"""An OpenAI-compatible fake model provider on 127.0.0.1, with scripted replies.

It answers `POST /v1/chat/completions` with the next scripted reply (plain text,
tool calls or an HTTP error), at once or after a set `delay_s`, and records every
request it received, headers and body, so tests can check what actually reached the
provider.
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

from tests.fakes._serve import serving

DEFAULT_TEXT: Final = "(the fake model has no scripted reply left)"


@dataclass(frozen=True)
class Text:
    """An assistant message with text content; usage reports `completion_tokens` if given."""

    text: str
    completion_tokens: int | None = None
    chunk_delay_s: float = 0.0
    """Between the chunks of a streamed answer (one per word)."""


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
    retry_after: str | None = None
    """Sent as the Retry-After header when given."""


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
    streamed: int = 0
    """Chunks written of the last streamed answer."""
    delay_s: float = 0.0
    """Before every answer, scripted or not: a provider with a steady response time."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        self.requests.append(Received(dict(request.headers), body))
        reply: Reply = self.script.popleft() if self.script else Text(DEFAULT_TEXT)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if isinstance(reply, Slow):
            await asyncio.sleep(reply.seconds)
            reply = reply.reply
        if body.get("stream") and isinstance(reply, Text):
            return await self._stream(request, body, reply, max(1, len(raw) // 4))
        if isinstance(reply, Failure):
            error = {"error": {"message": reply.message, "type": "server_error", "code": None}}
            headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
            return web.json_response(error, status=reply.status, headers=headers)
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

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Text, prompt_tokens: int
    ) -> web.StreamResponse:
        """The reply as server-sent chunks, one word each, `chunk_delay_s` apart; usage
        last when the request asked for it (`stream_options.include_usage`)."""
        number = next(self._ids)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
        }
        words = reply.text.split(" ")
        self.streamed = 0
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            delta = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.streamed += 1
            await asyncio.sleep(reply.chunk_delay_s)
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(last)}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            completion = reply.completion_tokens or len(words)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
            await response.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        return app


@asynccontextmanager
async def running_model_server() -> AsyncIterator[FakeModelServer]:
    """A started fake on an OS-chosen port of 127.0.0.1."""
    server = FakeModelServer()
    async with serving(server.app()) as url:
        server.url = f"{url}/v1"
        yield server
