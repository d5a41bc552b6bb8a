"""Starting a channel: an outage is waited out, a refusal (a rejected credential) is raised.

A platform that refuses our credential answers the same way however long we wait;
retrying hides a misconfiguration behind a gateway that runs without the platform.
So a non-retryable `PlatformError` ends the start, and the role stops with its one
line. A retryable one (no answer, a server error, a rate limit) is logged once, waited
out with backoff, and "works again" is logged when the platform answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from gateway.errors import PlatformError, RateLimited

T = TypeVar("T")

BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0


async def until_started(
    step: Callable[[], Awaitable[T]], *, platform: str, what: str, log: logging.Logger
) -> T:
    """`step()` until it succeeds; its first non-retryable `PlatformError` is raised.

    `step` raises our errors only, their text starting with the platform's name (the
    outage is logged with it): each adapter maps its SDK's refusal (a rejected
    token) to a plain `PlatformError` and an outage to `PlatformUnavailable`.
    """
    backoff, failed = BACKOFF_MIN_S, False
    while True:
        try:
            result = await step()
        except PlatformError as exc:
            if not exc.retryable:
                raise
            if not failed:
                log.warning("%s; retrying %s until it works", exc, what)
                failed = True
            await asyncio.sleep(exc.retry_after_s if isinstance(exc, RateLimited) else backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            continue
        if failed:
            log.info("%s: %s works again", platform, what)
        return result
