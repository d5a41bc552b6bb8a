"""Runs one channel: inbound events onto the bus, replies from its out stream to the platform,
and a typing indicator from the moment an agent starts an answer until it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from channels._shared.ratelimit import RateLimiter
from channels._shared.retry import typing_keepalive
from channels.base import Admission, Channel
from gateway.bus import IN_STREAM, Bus, Delivery, TypingCue, by_conversation, out_stream
from gateway.envelope import Inbound, Outbound
from gateway.errors import EnvelopeError, RedisUnavailable

SENDER_GROUP: Final = "senders"
TYPING_MAX_S: Final = 120.0
"""An answer not sent by then stops the indicator: a stuck turn should not look alive."""
_FINAL_SUFFIX: Final = ":final"

log = logging.getLogger("stockade.channels")


class _Typing:
    """One keepalive task per message being answered, ended by its final reply."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, cue: TypingCue) -> None:
        if cue.reply_to in self._tasks:
            return
        task = asyncio.create_task(self._keep(cue), name=f"typing {cue.reply_to}")
        self._tasks[cue.reply_to] = task
        task.add_done_callback(lambda _: self._tasks.pop(cue.reply_to, None))

    async def _keep(self, cue: TypingCue) -> None:
        async def show() -> None:
            await self._channel.show_typing(cue.conversation_id, cue.thread_id)

        async with typing_keepalive(show):
            await asyncio.sleep(TYPING_MAX_S)

    def answered(self, outbound: Outbound) -> None:
        if outbound.reply_to and outbound.outbound_id.endswith(_FINAL_SUFFIX):
            task = self._tasks.pop(outbound.reply_to, None)
            if task is not None:
                task.cancel()

    async def follow(self, cues: AsyncIterator[TypingCue]) -> None:
        """Start indicators as cues come (a lost Redis only pauses `typing_cues`)."""
        async for cue in cues:
            self.start(cue)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_channel(
    channel: Channel,
    bus: Bus,
    consumer: str,
    group: str = SENDER_GROUP,
    *,
    senders: RateLimiter | None = None,
    cues: AsyncIterator[TypingCue] | None = None,
) -> None:
    """Receive and send until cancelled; a reply is acked only after the platform took it.

    With `senders`, each sender's messages pass a token bucket before the bus: one
    person flooding a channel is dropped at the edge, and logged once per burst.
    With `cues` (and a platform that can show it), "typing" is shown while an agent
    answers.
    """
    limited: set[str] = set()
    typing = _Typing(channel)

    async def publish(inbound: Inbound) -> Admission:
        if senders is not None and not senders.allow(f"{inbound.channel}:{inbound.sender_id}"):
            if inbound.sender_id not in limited:
                limited.add(inbound.sender_id)
                log.warning(
                    "%s: sender %s is over the ingress rate; dropping their messages",
                    inbound.channel,
                    inbound.sender_id,
                )
            return Admission.LIMITED
        limited.discard(inbound.sender_id)
        entry = await bus.publish(IN_STREAM, inbound, dedupe=inbound.dedupe_key)
        return Admission.DUPLICATE if entry is None else Admission.ACCEPTED

    async def deliver(delivery: Delivery) -> None:
        outbound = delivery.envelope
        if not isinstance(outbound, Outbound):
            raise EnvelopeError("an out stream carried an inbound envelope")
        try:
            await channel.send(outbound)
        finally:
            typing.answered(outbound)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(channel.receive(publish), name=f"{channel.name} receive")
            tasks.create_task(
                # Each chat's replies in order; a slow chat does not hold up the others.
                bus.consume(
                    out_stream(channel.name), group, consumer, deliver, lane=by_conversation
                ),
                name=f"{channel.name} send",
            )
            if cues is not None and channel.capabilities.typing:
                tasks.create_task(typing.follow(cues), name=f"{channel.name} typing")
    finally:
        await typing.aclose()
        if cues is not None and hasattr(cues, "aclose"):
            with contextlib.suppress(RedisUnavailable):
                await cues.aclose()
