"""Throwaway signals between roles over Redis Pub/Sub: "the agent is writing an answer".

A lost cue costs only a typing indicator, so Pub/Sub (which drops messages nobody
listens for) is the right tool here, and the bus streams are not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from gateway._aio import raise_if_cancelling
from gateway.bus._keys import PREFIX
from gateway.bus._streams import _redis_errors
from gateway.errors import RedisUnavailable

log = logging.getLogger("stockade.bus")

_RESUBSCRIBE_S: Final = 1.0
"""How often a follower whose Redis went away tries to subscribe again."""


def typing_channel(channel: str) -> str:
    return f"{PREFIX}typing:{channel}"


@dataclass(frozen=True, slots=True)
class TypingCue:
    """An agent began answering `reply_to` in this conversation of `channel`."""

    channel: str
    conversation_id: str
    thread_id: str
    reply_to: str


async def announce_typing(client: aioredis.Redis, cue: TypingCue) -> None:
    """Best effort: a lost cue only loses an indicator."""
    payload = json.dumps(
        {"c": cue.conversation_id, "t": cue.thread_id, "r": cue.reply_to}, ensure_ascii=False
    )
    with _redis_errors:
        await client.publish(typing_channel(cue.channel), payload)


def _cue(channel: str, data: bytes | str) -> TypingCue | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    fields = (value.get("c"), value.get("t"), value.get("r"))
    if not all(isinstance(f, str) for f in fields):
        return None
    conversation, thread, reply_to = fields
    return TypingCue(channel, str(conversation), str(thread), str(reply_to))


async def typing_cues(client: aioredis.Redis, channel: str) -> AsyncIterator[TypingCue]:
    """Cues for `channel` until cancelled; malformed ones are skipped.

    A lost Redis pauses them: the subscription is made again once it answers (cues
    sent meanwhile are lost, as Pub/Sub loses them; each costs only an indicator)."""
    while True:
        try:
            async for cue in _subscribed(client, channel):
                yield cue
        except RedisUnavailable:
            log.debug("typing cues of %s paused: Redis is unavailable", channel)
            await asyncio.sleep(_RESUBSCRIBE_S)


async def _subscribed(client: aioredis.Redis, channel: str) -> AsyncIterator[TypingCue]:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        with _redis_errors:
            await pubsub.subscribe(typing_channel(channel))
        while True:
            raise_if_cancelling()
            with _redis_errors:
                message = await pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            cue = _cue(channel, message["data"])
            if cue is not None:
                yield cue
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
