"""A fake model provider that answers each turn with the tag of the message it is about.

Each chaos message carries a tag (`tag`); the agent's prompt ends with that message, so
the fake counts the model calls each message caused, and its answer names the message,
which lets the test attribute the reply the user gets.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from tests.fakes._serve import serving

TAG: Final = re.compile(r"\bm\d+-\d+\b")


def tag(sender: int, number: int) -> str:
    return f"m{sender}-{number}"


def answer_text(message_tag: str) -> str:
    return f"ok {message_tag}"


def last_user_text(body: dict[str, Any]) -> str:
    """The content of the last user message of a chat completion request."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


@dataclass
class EchoModel:
    """OpenAI's chat completions on loopback; `url` is the api_base once started."""

    url: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    """Model calls per message tag: every request the provider received counts."""
    usage: Counter[str] = field(default_factory=Counter)
    """What the calls of each tag really cost at the test's prices (0.15 and 0.60 USD
    per million prompt and completion tokens), in nano-dollars."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def _completions(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        found = TAG.search(last_user_text(body))
        message_tag = found.group(0) if found else ""
        self.calls[message_tag] += 1
        text = answer_text(message_tag) if found else "ok"
        prompt_tokens, completion_tokens = max(1, len(raw) // 4), max(1, len(text) // 4)
        self.usage[message_tag] += prompt_tokens * 150 + completion_tokens * 600
        return web.json_response(
            {
                "id": f"chatcmpl-echo-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1_048_576)
        app.router.add_post("/v1/chat/completions", self._completions)
        return app


@asynccontextmanager
async def running_echo_model() -> AsyncIterator[EchoModel]:
    model = EchoModel()
    async with serving(model.app()) as url:
        model.url = f"{url}/v1"
        yield model
