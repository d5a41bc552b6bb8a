"""What every channel's test harness offers the contract suite (`test_contract.py`).

A harness runs the real adapter, built by its module's `build()`, against the
platform's wire-level fake in `tests/fakes/`. Each adapter's test package holds a
`harness.py` with `open_harness(context) -> AsyncContextManager[Harness]`; the
contract suite starts the adapter with `channels._shared.run_channel` on a real
Redis and checks what reaches the bus and what reaches the fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from channels.base import Channel, ChannelContext

FEATURES = frozenset(
    (
        "redelivery",  # the platform can deliver one event twice (same id)
        "signatures",  # inbound requests are signed, and a forged one can be sent
        "rate_limit",  # the fake can answer a send with 429 and a retry-after
        "groups",  # group chats with a title
        "files",  # messages can carry a file with a name
    )
)


@dataclass(frozen=True, slots=True)
class Event:
    """One message a person sends on the platform, in platform-neutral terms."""

    text: str
    sender_id: str = "1001"
    sender_name: str = "Ada Lovelace"
    group_title: str = ""
    """Non-empty: the message is sent in a group chat of that title, mentioning the bot."""
    file_name: str = ""
    """Non-empty: the message carries a small text file of this name."""


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the fake platform accepted from the adapter."""

    conversation_id: str
    text: str
    """As the platform received it: with the platform's markup (HTML, mrkdwn, ...)."""
    thread_id: str = ""


class Harness(Protocol):
    name: str
    features: frozenset[str]
    channel: Channel
    max_text: int
    """The platform's limit, as the fake enforces it (it refuses longer texts)."""

    def bold(self, word: str) -> str:
        """How `**word**` must look in a sent text on this platform."""
        ...

    async def deliver(self, event: Event) -> str:
        """The platform delivers `event` to the adapter; returns its platform event id."""
        ...

    async def redeliver(self, event_id: str) -> None:
        """The platform delivers the event `event_id` again, unchanged ("redelivery")."""
        ...

    async def forged(self, event: Event) -> int:
        """Deliver `event` with a wrong signature; the HTTP status ("signatures")."""
        ...

    def throttle_next_send(self, retry_after_s: float) -> None:
        """The fake answers the next send with a 429 asking for this wait ("rate_limit")."""
        ...

    def sent(self) -> list[Sent]:
        """Every message the fake accepted, oldest first."""
        ...

    def refused_sends(self) -> int:
        """Sends the fake refused for breaking its limits (too long, bad markup)."""
        ...


OpenHarness = Callable[[ChannelContext], AbstractAsyncContextManager[Harness]]
AsyncHarness = AsyncIterator[Harness]
