"""The contract every channel adapter meets: capabilities, a receive loop, a send, a typing cue.

An adapter module (`channels/<name>/adapter.py`) exposes `build(settings, context)`,
which returns a `Channel` from the platform's own settings part and the shared
`ChannelContext`. `channels.registry` imports it only when that channel is enabled.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway.envelope import Inbound, Outbound

if TYPE_CHECKING:
    from channels._shared.media import MediaPolicy
    from channels._shared.webhooks import WebhookServer
    from gateway.bus import Blobs, Deliveries


class Admission(enum.Enum):
    """What became of one inbound message handed to `Publish`."""

    ACCEPTED = "accepted"
    """On the bus, durably: the platform may be acknowledged."""
    DUPLICATE = "duplicate"
    """The platform delivered this event before; acknowledge it, do nothing else."""
    LIMITED = "limited"
    """Its sender is over the ingress rate limit; it was dropped, not queued."""


Publish = Callable[[Inbound], Awaitable[Admission]]
"""Puts a sanitized envelope on the bus, unless a duplicate or over its sender's limit."""


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
    typing: bool = False
    """The platform can show that the bot is writing."""


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What the process gives every adapter besides its own settings."""

    blobs: Blobs
    """Where attachment bytes go; the envelope carries only their ids."""
    media: MediaPolicy
    deliveries: Deliveries
    """Receipts of sent replies, for platforms that report delivery later."""
    webhooks: WebhookServer | None
    """The shared HTTP server for platforms that call us; None when none is configured."""
    commands: tuple[tuple[str, str], ...] = ()
    """(name, one-line description) of everyone's chat commands, for platform menus."""
    operator_commands: tuple[tuple[str, str], ...] = ()
    """The same of every command, the operators' included, for the operators' own menus."""
    operators: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Each channel's operators by platform user id (`[access.<channel>] admins`). Only
    menus use it: whether someone may run a command is decided in the core."""
    state_dir: Path | None = None
    """Where an adapter keeps what must outlive a restart (sync tokens, crypto keys);
    one subdirectory per channel. None: nothing is kept."""


class Channel(Protocol):
    """One platform connection.

    `receive` runs until cancelled and publishes every inbound message; `send`
    delivers one reply (chunked and rendered for the platform), raising a
    `PlatformError` when the platform does not take it; `show_typing` shows, once,
    that an answer is being written (a no-op where the platform cannot).
    """

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def receive(self, publish: Publish) -> None: ...

    async def send(self, outbound: Outbound) -> None: ...

    async def show_typing(self, conversation_id: str, thread_id: str) -> None: ...
