"""PTB's errors as ours, and the bot token kept out of every log line and error text.

The token is part of every API and file URL, which the HTTP and PTB loggers log, and
PTB quotes it in `InvalidToken`; both go through here before anyone reads them. PTB
also logs the webhook's secret token among setWebhook's parameters, at DEBUG.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable
from typing import Final, TypeVar

from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from channels._shared.redact import Redact, redact
from channels.telegram import convert
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited

T = TypeVar("T")

URL_LOGGERS: Final = ("httpx", "telegram.Bot", "telegram.request.BaseRequest")


def redact_url_loggers(secret: str, mask: str = "<token>") -> None:
    """Adds the secret's `Redact` filter to every logger that logs request URLs."""
    redact(URL_LOGGERS, Redact(secret, mask))


def seconds(value: object) -> float:
    """A PTB time period (a timedelta, or seconds) in seconds; 1 when it is neither."""
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value) if isinstance(value, int | float) else 1.0


def platform_error(exc: TelegramError, token: str) -> PlatformError:
    """Our error for PTB's; its text without the token (PTB quotes it in InvalidToken)."""
    if isinstance(exc, RetryAfter):
        return RateLimited(seconds(exc.retry_after), convert.NAME)
    text = f"telegram: {type(exc).__name__}: {exc.message.replace(token, '<token>')}"
    # BadRequest is a NetworkError in PTB's tree, but a refusal, not an outage.
    if isinstance(exc, TimedOut | NetworkError) and not isinstance(exc, BadRequest):
        return PlatformUnavailable(text)
    return PlatformError(text)


async def call(awaitable: Awaitable[T], token: str) -> T:
    """`awaitable`'s result, with a PTB error raised as ours."""
    try:
        return await awaitable
    except TelegramError as exc:
        raise platform_error(exc, token) from None
