"""The real agent runtime when the operator stops its turn or pauses it: it goes on unharmed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from agents._client import MeshRefused
from agents._loop import refusal_text
from gateway.controls import PAUSED_KEY
from gateway.policy._budget_store import EXPIRY_KEY
from tests.agents.conftest import USER, Stack
from tests.fakes.model_server import Slow, Text


async def wait_for(
    stack: Stack, what: str, check: Callable[[], Awaitable[bool]], within_s: float = 10.0
) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {within_s} s; runtime log:\n{stack.log_text()}")
        await asyncio.sleep(0.02)


def test_a_stopped_or_paused_turn_reads_as_such() -> None:
    assert refusal_text(MeshRefused(409, "stopped", "this turn was stopped")) == "Stopped."
    paused = refusal_text(MeshRefused(403, "paused", "the operator has paused this assistant"))
    assert paused == "The operator has paused this assistant."


async def test_a_stopped_turn_gets_one_stopped_reply_and_the_next_message_is_served(
    stack: Stack,
) -> None:
    stack.model.push(Slow(5.0, Text("too late")), Text("Second answer."))
    await stack.start_runtime()
    await stack.send("think about this for a long time")

    async def model_called() -> bool:
        return len(stack.model.requests) == 1

    await wait_for(stack, "the first model call", model_called)
    assert await stack.mesh.cancel_turn(USER) is True

    assert (await stack.reply()).text == "Stopped."
    await stack.send("a quick one")
    assert (await stack.reply()).text == "Second answer."
    # The runtime's own answer to the stopped message came before it took the next one,
    # and was dropped: two replies in all.
    assert await stack.redis.xlen("stockade:out:console") == 2
    assert await stack.pending() == 0

    async def nothing_held() -> bool:
        return await stack.redis.zcard(EXPIRY_KEY) == 0

    await wait_for(stack, "every reservation settled", nothing_held)
    assert all(p.returncode is None for p in stack.runtimes)


async def test_a_paused_runtime_answers_nothing_until_resumed(stack: Stack) -> None:
    stack.model.push(Text("Here I am."))
    await stack.redis.sadd(PAUSED_KEY, USER)
    await stack.start_runtime()
    await stack.send("hello?")

    async def polling() -> bool:
        return "agent runtime started" in stack.log_text()

    await wait_for(stack, "the runtime's start", polling)
    # Long enough for a running agent to answer; a paused one must not even take it.
    await asyncio.sleep(0.5)
    assert await stack.redis.xlen("stockade:out:console") == 0
    assert await stack.pending() == 0
    assert stack.model.requests == []
    await stack.redis.srem(PAUSED_KEY, USER)

    assert (await stack.reply()).text == "Here I am."
    assert len(stack.model.requests) == 1
