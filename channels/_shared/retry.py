"""Sending to a platform again when it asks to wait, and keeping a typing indicator up.

A platform's own retry-after wins over our backoff: Telegram's `retry_after`, Slack's
and Twilio's `Retry-After` say exactly how long a flood limit lasts, and sending
earlier only extends it. Server errors and lost connections back off exponentially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

from gateway.errors import PlatformError, PlatformUnavailable, RateLimited

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

ATTEMPTS: Final = 5
BACKOFF_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
MAX_WAIT_S: Final = 120.0
"""A platform asking for a longer wait than this fails the send instead: the reply
stays on the bus (unacknowledged) and is retried from there, not by a held task."""
TYPING_EVERY_S: Final = 4.0
"""Telegram shows "typing" for 5 s, Discord for 10 s: 4 s keeps it up without a gap."""

log = logging.getLogger("stockade.channels")


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): doubling, capped, jittered."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_S * 2.0 ** (attempt - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def wait_for(failure: PlatformError, attempt: int) -> float | None:
    """How long to wait before the next attempt; None when not worth another one."""
    if isinstance(failure, RateLimited):
        return failure.retry_after_s if failure.retry_after_s <= MAX_WAIT_S else None
    if isinstance(failure, PlatformUnavailable):
        return backoff_s(attempt)
    return None


async def send_with_retry(
    send: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS, sleep: Sleep = asyncio.sleep
) -> T:
    """`send()`, again after each retryable failure, waiting as the platform asked.

    The last failure is raised once `attempts` are spent or a failure is not worth
    retrying (a refused message, a wait past MAX_WAIT_S).
    """
    attempt = 0
    while True:
        try:
            return await send()
        except PlatformError as failure:
            attempt += 1
            wait = wait_for(failure, attempt)
            if wait is None or attempt >= attempts:
                raise
            log.info("send failed (%s); attempt %d in %.1f s", failure, attempt + 1, wait)
            await sleep(wait)


@contextlib.asynccontextmanager
async def typing_keepalive(
    show: Callable[[], Awaitable[None]], every_s: float = TYPING_EVERY_S
) -> AsyncIterator[None]:
    """Show "typing" now and every `every_s` until the block ends. Best effort: a
    failure to show it is logged and never fails the block."""

    async def keep() -> None:
        while True:
            try:
                await show()
            except PlatformError as failure:
                log.debug("typing indicator not shown: %s", failure)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(keep(), name="typing")
    try:
        yield
    finally:
        task.cancel()
        # gather, not `await task` in a suppress: a cancellation of this task itself
        # must still propagate.
        await asyncio.gather(task, return_exceptions=True)
