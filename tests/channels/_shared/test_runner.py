"""run_channel on a real Redis: admission at the edge, replies sent, typing shown while an
agent answers. The channel here is a plain in-memory platform, not a stand-in for ours."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from channels._shared import RateLimiter, run_channel
from channels.base import Admission, Capabilities, Publish
from gateway.bus import (
    IN_STREAM,
    Bus,
    TypingCue,
    announce_typing,
    out_stream,
    typing_cues,
)
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.settings import BusSettings

SETTINGS = BusSettings(claim_idle_ms=200, block_ms=50)


class Memory:
    """A platform that lives in lists: inbound to deliver, sends and typing seen."""

    name = "memory"
    capabilities = Capabilities(max_text=100, typing=True)

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self.admissions: list[Admission] = []
        self.sent: list[Outbound] = []
        self.typing: list[tuple[str, str]] = []

    async def receive(self, publish: Publish) -> None:
        while True:
            self.admissions.append(await publish(await self.inbox.get()))

    async def send(self, outbound: Outbound) -> None:
        self.sent.append(outbound)

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        self.typing.append((conversation_id, thread_id))


def message(event_id: str, sender: str = "s1") -> Inbound:
    return Inbound(
        channel="memory",
        event_id=event_id,
        sender_id=sender,
        conversation_id=f"chat-{sender}",
        text=f"m{event_id}",
        received_at=1.0,
    )


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    channel: Memory, redis: aioredis.Redis, **kwargs: Any
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_channel(channel, Bus(redis, SETTINGS), "c1", **kwargs))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_messages_are_published_once_and_duplicates_are_told_apart(
    redis: aioredis.Redis,
) -> None:
    channel = Memory()
    async with running(channel, redis):
        for event_id in ("1", "2", "1"):
            channel.inbox.put_nowait(message(event_id))
        await until(lambda: len(channel.admissions) == 3)
    assert channel.admissions == [Admission.ACCEPTED, Admission.ACCEPTED, Admission.DUPLICATE]
    entries = [decode_inbound(f).event_id for _, f in await redis.xrange(IN_STREAM)]
    assert entries == ["1", "2"]


async def test_a_flooding_sender_is_limited_at_the_edge_and_others_are_not(
    redis: aioredis.Redis,
) -> None:
    channel = Memory()
    senders = RateLimiter(0.001, 3)
    async with running(channel, redis, senders=senders):
        for n in range(10):
            channel.inbox.put_nowait(message(f"f{n}", sender="flood"))
        channel.inbox.put_nowait(message("calm", sender="calm"))
        await until(lambda: len(channel.admissions) == 11)
    assert channel.admissions.count(Admission.LIMITED) == 7
    assert channel.admissions[-1] is Admission.ACCEPTED
    assert await redis.xlen(IN_STREAM) == 4


async def test_replies_on_the_out_stream_are_sent(redis: aioredis.Redis) -> None:
    channel = Memory()
    bus = Bus(redis, SETTINGS)
    async with running(channel, redis):
        await bus.publish(out_stream("memory"), reply(message("1"), "hello", "final"))
        await until(lambda: len(channel.sent) == 1)
    assert channel.sent[0].text == "hello"


async def test_typing_is_shown_from_the_cue_until_the_final_reply(redis: aioredis.Redis) -> None:
    channel = Memory()
    bus = Bus(redis, SETTINGS)
    inbound = dataclasses.replace(message("7"), thread_id="t")
    async with running(channel, redis, cues=typing_cues(redis, "memory")):
        # The subscription is made when the runner starts: announce until it is seen.
        async with asyncio.timeout(5):
            while not channel.typing:
                await announce_typing(redis, TypingCue("memory", "chat-s1", "t", "7"))
                await asyncio.sleep(0.05)
        assert channel.typing[0] == ("chat-s1", "t")
        await bus.publish(out_stream("memory"), reply(inbound, "partial", "r1"))
        await bus.publish(out_stream("memory"), reply(inbound, "done", "final"))
        await until(lambda: len(channel.sent) == 2)
        shown = len(channel.typing)
        await asyncio.sleep(0.1)
        assert len(channel.typing) == shown


async def test_a_malformed_cue_is_skipped(redis: aioredis.Redis) -> None:
    seen: list[TypingCue] = []

    async def collect() -> None:
        async for cue in typing_cues(redis, "memory"):
            seen.append(cue)

    task = asyncio.create_task(collect())
    try:
        async with asyncio.timeout(5):
            while not seen:
                await redis.publish("stockade:typing:memory", b"not json")
                await redis.publish("stockade:typing:memory", b'{"c": 1}')
                await announce_typing(redis, TypingCue("memory", "c", "", "r"))
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {cue.conversation_id for cue in seen} == {"c"}
