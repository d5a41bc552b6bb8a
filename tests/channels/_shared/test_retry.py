"""Retrying a send as the platform asks, and the typing keepalive."""

from __future__ import annotations

import asyncio
import random

import pytest

from channels._shared.retry import (
    BACKOFF_MAX_S,
    MAX_WAIT_S,
    backoff_s,
    send_with_retry,
    typing_keepalive,
)
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited


class Script:
    """A send that fails as scripted, then succeeds; records the waits asked for."""

    def __init__(self, *failures: PlatformError) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.waits: list[float] = []

    async def send(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "sent"

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_a_rate_limit_waits_exactly_as_long_as_the_platform_said() -> None:
    script = Script(RateLimited(7.0, "telegram"), RateLimited(1.5, "telegram"))
    assert await send_with_retry(script.send, sleep=script.sleep) == "sent"
    assert script.waits == [7.0, 1.5]
    assert script.calls == 3


async def test_server_errors_back_off_and_then_succeed() -> None:
    script = Script(PlatformUnavailable("502"), PlatformUnavailable("503"))
    assert await send_with_retry(script.send, sleep=script.sleep) == "sent"
    assert len(script.waits) == 2 and all(0 < w <= BACKOFF_MAX_S for w in script.waits)


async def test_a_refused_message_is_not_retried() -> None:
    script = Script(PlatformError("400 message is too long"))
    with pytest.raises(PlatformError, match="too long"):
        await send_with_retry(script.send, sleep=script.sleep)
    assert script.calls == 1 and script.waits == []


async def test_a_wait_longer_than_the_limit_fails_the_send_at_once() -> None:
    script = Script(RateLimited(MAX_WAIT_S + 1, "slack"))
    with pytest.raises(RateLimited):
        await send_with_retry(script.send, sleep=script.sleep)
    assert script.waits == []


async def test_attempts_are_bounded() -> None:
    script = Script(*(PlatformUnavailable("down") for _ in range(10)))
    with pytest.raises(PlatformUnavailable):
        await send_with_retry(script.send, attempts=3, sleep=script.sleep)
    assert script.calls == 3 and len(script.waits) == 2


def test_backoff_doubles_within_its_cap() -> None:
    rng = random.Random(7)
    waits = [backoff_s(n, rng) for n in range(1, 12)]
    assert all(0 < w <= BACKOFF_MAX_S for w in waits)
    assert waits[0] <= 0.5 and waits[-1] >= BACKOFF_MAX_S / 2


async def test_typing_is_shown_at_once_and_kept_up_until_the_block_ends() -> None:
    shown: list[float] = []
    loop = asyncio.get_running_loop()

    async def show() -> None:
        shown.append(loop.time())

    async with typing_keepalive(show, every_s=0.05):
        await asyncio.sleep(0.18)
    count = len(shown)
    await asyncio.sleep(0.1)
    assert 3 <= count <= 5
    assert len(shown) == count  # stopped with the block


async def test_a_failing_typing_indicator_never_fails_the_work() -> None:
    async def show() -> None:
        raise PlatformUnavailable("typing endpoint down")

    async with typing_keepalive(show, every_s=0.01):
        await asyncio.sleep(0.05)


async def test_cancelling_the_work_is_not_swallowed_by_the_keepalive() -> None:
    async def show() -> None:
        return None

    async def work() -> None:
        async with typing_keepalive(show, every_s=0.01):
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
