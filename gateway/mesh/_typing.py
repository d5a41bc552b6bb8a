"""Typing cues of one door: the channel shows "typing…" once a turn runs long.

A quicker answer shows no indicator: it would only flash, and each cue costs a Redis
publish here and a platform call in the channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.bus import TypingCue, announce_typing
from gateway.envelope import Inbound
from gateway.errors import RedisUnavailable
from gateway.mesh._turns import OpenTurns

_CUE_TIMEOUT_S: Final = 2.0
"""A typing cue not published by then is dropped: the indicator would come too late."""

log = logging.getLogger("stockade.mesh")


class Typing:
    """The cues of one agent's turns, each sent `after_s` into its turn if still open.

    Without `redis` nothing is announced.
    """

    def __init__(
        self, user_id: str, redis: aioredis.Redis | None, after_s: float, turns: OpenTurns
    ) -> None:
        self._user_id = user_id
        self._redis = redis
        self._after_s = after_s
        self._turns = turns
        self._cues: set[asyncio.Task[None]] = set()

    def announce(self, message_id: str, inbound: Inbound) -> None:
        """Tell the message's channel the agent is on it, once the turn has taken
        `after_s`, without making the agent wait."""
        if self._redis is None:
            return
        cue = TypingCue(
            inbound.channel, inbound.conversation_id, inbound.thread_id, inbound.event_id
        )
        task = asyncio.create_task(self._send_cue(self._redis, message_id, cue))
        self._cues.add(task)
        task.add_done_callback(self._cues.discard)

    def pending(self) -> list[asyncio.Task[None]]:
        """The cues not sent yet, for the door to cancel when it closes."""
        return [*self._cues]

    async def _send_cue(self, redis: aioredis.Redis, message_id: str, cue: TypingCue) -> None:
        await asyncio.sleep(self._after_s)
        if message_id not in self._turns:
            return  # answered already
        try:
            async with asyncio.timeout(_CUE_TIMEOUT_S):
                await announce_typing(redis, cue)
        except (RedisUnavailable, RedisError, TimeoutError, OSError) as exc:
            # A lost cue loses an indicator only; the hand-out never hears of it.
            log.debug(
                "no typing cue for %s on %s: %s", self._user_id, cue.channel, type(exc).__name__
            )
