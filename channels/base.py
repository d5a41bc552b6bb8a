"""The contract every channel adapter meets: capabilities, a receive loop and a send."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.envelope import Inbound, Outbound

Publish = Callable[[Inbound], Awaitable[bool]]
"""Puts a sanitized envelope on the bus; False when it was a duplicate delivery."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a platform can do, so shared code can adapt replies to it."""

    max_text: int
    """Longest message text the platform accepts, in characters."""
    edits: bool = False
    threads: bool = False
    buttons: bool = False
    native_commands: bool = False
    """Commands are registered with the platform (menu, slash commands)."""


class Channel(Protocol):
    """One platform connection. `receive` runs until cancelled; `send` delivers one reply."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def receive(self, publish: Publish) -> None: ...

    async def send(self, outbound: Outbound) -> None: ...
