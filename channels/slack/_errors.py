"""Slack's refusals as our errors: for a send, and for the calls made at start.

A refusal at start (a rejected bot or app token) is final; an outage there is waited
out. The pure mapping of Slack's answers is in `convert`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError

from channels.slack import convert
from gateway.errors import PlatformError, PlatformUnavailable


def answer(error: SlackApiError) -> tuple[int, str | None, str]:
    """Slack's answer as (HTTP status, Retry-After, error code)."""
    # The SDK's response, or aiohttp's when Slack's body was not JSON.
    response = error.response
    status = getattr(response, "status_code", None) or getattr(response, "status", 0)
    headers = getattr(response, "headers", None) or {}
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    return (
        status if isinstance(status, int) else 0,
        headers.get("Retry-After"),
        code if isinstance(code, str) else "",
    )


def platform_error(error: SlackApiError) -> PlatformError:
    return convert.send_error(*answer(error))


async def start_call(method: str, credential: str, request: Callable[[], Awaitable[Any]]) -> Any:
    """A Web API call made at start; a refusal of `credential` is final, an outage is not."""
    try:
        return await request()
    except SlackApiError as exc:
        raise convert.start_error(method, credential, *answer(exc)) from None
    except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformUnavailable(f"slack: {method} failed ({type(exc).__name__})") from None
