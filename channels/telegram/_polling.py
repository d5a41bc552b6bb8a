"""Waiting Telegram out: the getUpdates long-poll loop.

An update's offset is given to Telegram only after `admit` returned for it, so an
update is on the bus before Telegram forgets it; one that failed is fetched again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from telegram import Bot
from telegram.error import Conflict, RetryAfter, TelegramError

from channels.base import Admission
from channels.telegram import convert
from channels.telegram._errors import seconds
from channels.telegram._request import AiohttpRequest
from gateway.errors import StockadeError

T = TypeVar("T")
Admit = Callable[[convert.Update], Awaitable[Admission | None]]

BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0

log = logging.getLogger("stockade.channels.telegram")


async def poll(bot: Bot, poller: AiohttpRequest, url: str, timeout_s: int, admit: Admit) -> None:
    """Fetches updates from `url` until cancelled and admits each, in order."""
    offset: int | None = None
    backoff, outage = BACKOFF_MIN_S, False
    while True:
        try:
            raw = await poller.updates(
                url, offset=offset, timeout_s=timeout_s, allowed=convert.ALLOWED_UPDATES
            )
        except RetryAfter as exc:
            await asyncio.sleep(seconds(exc.retry_after))
            continue
        except TelegramError as exc:
            if not outage:
                log.warning("telegram: getUpdates failed (%s); retrying", type(exc).__name__)
                outage = True
            if isinstance(exc, Conflict):  # a webhook is set, or another poller runs
                try:
                    await bot.delete_webhook()
                except TelegramError as again:
                    log.debug("telegram: deleteWebhook failed (%s)", type(again).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            continue
        if outage:
            log.info("telegram: getUpdates works again")
            backoff, outage = BACKOFF_MIN_S, False
        for data in raw:
            try:
                update = convert.parse_update(data)
            except convert.WireError as exc:
                log.warning("telegram: skipped an update that is not one (%s)", exc)
                update_id = data.get("update_id") if isinstance(data, dict) else None
                if isinstance(update_id, int) and not isinstance(update_id, bool):
                    offset = max(offset or 0, update_id + 1)
                continue
            try:
                await admit(update)
            except StockadeError as exc:
                # Not confirmed: Telegram hands this update out again.
                log.warning(
                    "telegram: update %d not published (%s); fetching it again",
                    update.update_id,
                    type(exc).__name__,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                break
            offset = max(offset or 0, update.update_id + 1)
