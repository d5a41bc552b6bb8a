"""Display names of Slack users and channels, looked up through the Web API and cached.

A lookup is bounded by `LOOKUP_TIMEOUT_S` and a failed one answers "" (the caller
falls back to the id): names are nice to have, and Slack wants its ack within 3 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

import aiohttp
from slack_sdk.errors import SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from channels.slack import convert

log = logging.getLogger("stockade.channels.slack")

NAME_CACHE_SIZE: Final = 2_048
NAME_TTL_S: Final = 3_600.0
"""Names change rarely; an hour-old display name is good enough for a greeting."""
LOOKUP_TIMEOUT_S: Final = 1.0
"""Names are nice to have; Slack wants its ack within 3 s, and it comes after them."""
_LOOKUP_ERRORS: Final = (SlackClientError, aiohttp.ClientError, TimeoutError)


class Names:
    """Names by id, fetched on first use, bounded and expiring; failures are not kept."""

    def __init__(self, fetch: Callable[[str], Awaitable[str]], what: str) -> None:
        self._fetch = fetch
        self._what = what
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, ident: str) -> str:
        """The name of `ident`, or "" when Slack cannot say (the caller falls back to the id)."""
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is not None and now - cached[1] < NAME_TTL_S:
            self._cache.move_to_end(ident)
            return cached[0]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                name = await self._fetch(ident)
        except _LOOKUP_ERRORS as exc:
            log.info("slack: %s lookup failed (%s); using the id", self._what, type(exc).__name__)
            return ""
        self._cache[ident] = (name, now)
        self._cache.move_to_end(ident)
        while len(self._cache) > NAME_CACHE_SIZE:
            self._cache.popitem(last=False)
        return name


def user_names(client: AsyncWebClient) -> Names:
    """Users' display names, through users.info."""

    async def fetch(user: str) -> str:
        answer = await client.users_info(user=user)
        return convert.display_name(answer.data if isinstance(answer.data, dict) else {})

    return Names(fetch, "users.info")


def channel_names(client: AsyncWebClient) -> Names:
    """Channels' names, through conversations.info."""

    async def fetch(channel: str) -> str:
        answer = await client.conversations_info(channel=channel)
        return convert.channel_name(answer.data if isinstance(answer.data, dict) else {})

    return Names(fetch, "conversations.info")
