"""The console channel under the contract suite: lines through a pipe, replies captured."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator

from channels.base import ChannelContext
from channels.console import convert
from channels.console.adapter import ConsoleChannel
from tests.channels.contract import Event, Harness, Sent

SESSION = "c-contract"
USER = "ada\u202e\u200bevil\U000e0041"
"""The terminal's user name; hostile, since a console harness cannot vary it per event."""


class _Screen(io.StringIO):
    """The terminal: keeps each reply part apart, as the adapter writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)


class ConsoleHarness:
    name = "console"
    features: frozenset[str] = frozenset()
    max_text = convert.CAPABILITIES.max_text

    def __init__(self, stdin_fd: int, stdin: io.TextIOWrapper) -> None:
        self._write_fd = stdin_fd
        self._screen = _Screen()
        self.channel = ConsoleChannel(USER, SESSION, stdin, self._screen)

    def bold(self, word: str) -> str:
        return f"**{word}**"

    async def deliver(self, event: Event) -> str:
        os.write(
            self._write_fd, (event.text.replace("\n", " ") + "\n").encode("utf-8", "surrogatepass")
        )
        return ""

    async def redeliver(self, event_id: str) -> None:
        raise NotImplementedError("a terminal never delivers a line twice")

    async def forged(self, event: Event) -> int:
        raise NotImplementedError("a terminal has no signatures")

    def throttle_next_send(self, retry_after_s: float) -> None:
        raise NotImplementedError("a terminal has no rate limit")

    def sent(self) -> list[Sent]:
        return [
            Sent(
                SESSION,
                "\n".join(line.removeprefix("« ") for line in part.rstrip("\n").split("\n")),
            )
            for part in self._screen.parts
        ]

    def refused_sends(self) -> int:
        return 0


@contextlib.asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[Harness]:
    read_fd, write_fd = os.pipe()
    stdin = os.fdopen(read_fd, "r", encoding="utf-8", errors="surrogateescape")
    try:
        yield ConsoleHarness(write_fd, stdin)
    finally:
        os.close(write_fd)
        stdin.close()
