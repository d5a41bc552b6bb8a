"""The mesh obeys the operator: /stop ends a turn, /model picks the default, /pause spends nothing.

Real unix sockets, a real bus on Redis, LiteLLM and the fake provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.bus import Bus, agent_stream
from gateway.controls import MODEL_KEY, PAUSED_ALL_KEY, PAUSED_KEY
from gateway.mesh import Mesh
from gateway.mesh._answers import ANSWERS_PREFIX, TurnAnswers
from gateway.mesh._controls import default_first
from gateway.mesh._protocol import Rejected
from gateway.policy import TokenPrice
from gateway.policy.budget import Period, Scope, prompt_token_bound, worst_case
from gateway.settings import BusSettings, MeshSettings
from tests.calls import PRICE, Calls, model_calls, priced_model
from tests.fakes.model_server import FakeModelServer, Slow, Text
from tests.gateway.mesh.test_mesh import (
    ALICE,
    BOB,
    HELLO,
    KEY,
    MODEL,
    SETTINGS,
    Agent,
    inbound,
    outbox,
    pending,
    read_events,
)

BIG = "openai/fake-big"


@pytest.fixture
async def calls(
    redis: aioredis.Redis, fake_model: FakeModelServer, socket_dir: Path
) -> AsyncIterator[Calls]:
    models = {
        "default": priced_model(fake_model.url, MODEL, max_tokens=256),
        "big": priced_model(fake_model.url, BIG, max_tokens=512),
    }
    mesh = MeshSettings(
        allowed_models=["default", "big"], allowed_models_by_user={BOB: ["default"]}
    )
    async with model_calls(redis, socket_dir.parent / "calls", models, key=KEY, mesh=mesh) as built:
        yield built


@pytest.fixture
async def alice(mesh: Mesh) -> AsyncIterator[Agent]:
    agent = Agent(await mesh.open(ALICE))
    yield agent
    await agent.close()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


async def settled(calls: Calls, user: str = ALICE) -> tuple[int, int]:
    """(spent, held) of `user` today, once every settlement is written."""
    await calls.calls.drain()
    day = (await calls.gate.usage(user)).window(Scope.USER, Period.DAY)
    return day.spent_nano, day.held_nano


async def take(bus: Bus, agent: Agent, n: int, text: str = "hello") -> str:
    """Publish message `n` for Alice and have her agent take it; its id."""
    await bus.publish(agent_stream(ALICE), inbound(ALICE, n, text))
    status, message = await agent.next()
    assert status == 200
    return str(message["id"])


# -- /stop ------------------------------------------------------------------------------


async def test_stopping_a_turn_waiting_on_a_slow_model_answers_stopped_once_and_settles(
    redis: aioredis.Redis,
    bus: Bus,
    mesh: Mesh,
    alice: Agent,
    fake_model: FakeModelServer,
    calls: Calls,
) -> None:
    fake_model.push(Slow(10.0, Text("too late")))
    message_id = await take(bus, alice, 1, "think long")
    call = asyncio.create_task(alice.chat({"messages": HELLO}))

    async def provider_called() -> bool:
        return len(fake_model.requests) == 1

    await eventually(provider_called)
    started = time.monotonic()
    assert await mesh.cancel_turn(ALICE) is True

    status, body = await call
    assert (status, body["error"]["type"]) == (409, "stopped")
    assert time.monotonic() - started < 8.0  # not the 10 s the provider would take
    (stopped,) = await outbox(redis)
    assert stopped.text == "Stopped."
    assert stopped.conversation_id == inbound(ALICE, 1).conversation_id
    assert await pending(redis, ALICE) == 0
    # The agent carries on with the stopped turn: nothing of it gets through.
    assert (await alice.chat({"messages": HELLO}))[0] == 409
    assert (await alice.reply(message_id, "a late answer"))[0] == 404
    assert [o.text for o in await outbox(redis)] == ["Stopped."]
    assert len(fake_model.requests) == 1
    spent, held = await settled(calls)
    assert held == 0
    assert spent > 0  # cancelled with no answer: billed its reservation

    fake_model.push(Text("back to normal"))
    next_id = await take(bus, alice, 2, "and now?")
    status, answer = await alice.chat({"messages": HELLO})
    assert (status, answer["choices"][0]["message"]["content"]) == (200, "back to normal")
    assert (await alice.reply(next_id, "back to normal"))[0] == 200
    assert [o.text for o in await outbox(redis)] == ["Stopped.", "back to normal"]
    assert (await settled(calls))[1] == 0


async def test_stopping_a_streamed_answer_ends_it_and_bills_what_was_produced(
    redis: aioredis.Redis,
    bus: Bus,
    mesh: Mesh,
    alice: Agent,
    fake_model: FakeModelServer,
    calls: Calls,
) -> None:
    fake_model.push(Text(" ".join(f"w{i}" for i in range(100)), chunk_delay_s=0.05))
    await take(bus, alice, 1)
    reading = asyncio.create_task(read_events(alice, {"messages": HELLO, "stream": True}))

    async def streaming() -> bool:
        return fake_model.streamed >= 3

    await eventually(streaming)
    assert await mesh.cancel_turn(ALICE) is True

    events = await reading
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "stopped"
    assert fake_model.streamed < 100
    assert [o.text for o in await outbox(redis)] == ["Stopped."]
    spent, held = await settled(calls)
    assert held == 0
    bound = prompt_token_bound(HELLO, None)
    assert 0 < spent < worst_case(TokenPrice.from_settings(PRICE), bound, 256)


async def test_stopping_a_turn_between_model_calls_refuses_the_next_call(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, alice: Agent, fake_model: FakeModelServer
) -> None:
    message_id = await take(bus, alice, 1)
    assert (await alice.chat({"messages": HELLO}))[0] == 200  # then it runs a tool, say

    assert await mesh.cancel_turn(ALICE) is True

    assert (await alice.chat({"messages": HELLO}))[0] == 409
    assert (await alice.reply(message_id, "done", final=False))[0] == 404
    assert [o.text for o in await outbox(redis)] == ["Stopped."]
    assert len(fake_model.requests) == 1


async def test_stopping_with_no_turn_in_flight_changes_nothing(
    redis: aioredis.Redis, mesh: Mesh, alice: Agent, fake_model: FakeModelServer
) -> None:
    assert await mesh.cancel_turn(ALICE) is False
    assert await mesh.cancel_turn(BOB) is False  # no door open for Bob here
    assert (await alice.chat({"messages": HELLO}))[0] == 200
    assert await outbox(redis) == []


# -- /model -----------------------------------------------------------------------------


def test_the_chosen_model_goes_first_and_a_stale_choice_is_reported() -> None:
    caps = {"default": 256, "big": 512}
    assert list(default_first(caps, None) or ()) == ["default", "big"]
    assert default_first(caps, "big") == {"big": 512, "default": 256}
    assert list(default_first(caps, "big") or ()) == ["big", "default"]
    assert default_first(caps, "gone") is None


async def test_a_users_chosen_model_is_their_default(
    redis: aioredis.Redis, mesh: Mesh, alice: Agent, fake_model: FakeModelServer
) -> None:
    bob = Agent(await mesh.open(BOB))
    try:
        await redis.hset(MODEL_KEY, ALICE, "big")
        assert (await alice.chat({"messages": HELLO}))[0] == 200
        assert (await alice.chat({"model": "default", "messages": HELLO}))[0] == 200
        assert (await bob.chat({"messages": HELLO}))[0] == 200
    finally:
        await bob.close()

    assert [r.body["model"] for r in fake_model.requests] == [
        "fake-big",
        "fake-model",
        "fake-model",
    ]
    assert fake_model.requests[0].body["max_tokens"] == 512


async def test_a_choice_no_longer_allowed_is_ignored_with_one_warning(
    redis: aioredis.Redis,
    mesh: Mesh,
    fake_model: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bob = Agent(await mesh.open(BOB))  # Bob may use "default" only
    try:
        await redis.hset(MODEL_KEY, BOB, "big")
        with caplog.at_level(logging.WARNING, "stockade.mesh"):
            for _ in range(2):
                assert (await bob.chat({"messages": HELLO}))[0] == 200
    finally:
        await bob.close()

    assert [r.body["model"] for r in fake_model.requests] == ["fake-model", "fake-model"]
    warnings = [r for r in caplog.records if "no longer use" in r.getMessage()]
    assert len(warnings) == 1


async def test_controls_that_cannot_be_read_refuse_the_call_with_503(
    fake_model: FakeModelServer, tmp_path: Path
) -> None:
    down = aioredis.Redis(unix_socket_path=str(tmp_path / "gone.sock"), retry=Retry(NoBackoff(), 0))
    models = {"default": priced_model(fake_model.url, MODEL)}
    try:
        async with model_calls(down, tmp_path / "calls", models, key=KEY) as built:
            with pytest.raises(Rejected) as caught:
                await built.calls.choices(ALICE)
    finally:
        await down.aclose()
    assert (caught.value.status, caught.value.kind) == (503, "controls_unavailable")
    assert fake_model.requests == []


# -- /pause -----------------------------------------------------------------------------


async def test_a_paused_agent_makes_no_model_call_and_gets_no_message(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, alice: Agent, fake_model: FakeModelServer
) -> None:
    await redis.sadd(PAUSED_KEY, ALICE)
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1, "wait for me"))

    status, body = await alice.chat({"messages": HELLO})
    assert (status, body["error"]) == (
        403,
        {"type": "paused", "message": "the operator has paused this assistant"},
    )
    assert (await alice.next(wait=0.3))[0] == 204
    assert fake_model.requests == []

    await redis.srem(PAUSED_KEY, ALICE)
    status, message = await alice.next()
    assert (status, message["text"]) == (200, "wait for me")
    assert (await alice.chat({"messages": HELLO}))[0] == 200


async def test_pausing_everyone_pauses_every_agent(
    redis: aioredis.Redis, mesh: Mesh, alice: Agent, fake_model: FakeModelServer
) -> None:
    bob = Agent(await mesh.open(BOB))
    try:
        await redis.set(PAUSED_ALL_KEY, "1")
        assert (await alice.chat({"messages": HELLO}))[0] == 403
        assert (await bob.chat({"messages": HELLO}))[0] == 403
        await redis.delete(PAUSED_ALL_KEY)
        assert (await bob.chat({"messages": HELLO}))[0] == 200
    finally:
        await bob.close()
    assert len(fake_model.requests) == 1


async def test_a_poll_while_paused_still_ends_within_its_wait(
    redis: aioredis.Redis, alice: Agent
) -> None:
    await redis.sadd(PAUSED_KEY, ALICE)
    started = time.monotonic()
    assert (await alice.next(wait=0.4))[0] == 204
    assert 0.3 < time.monotonic() - started < 5.0  # ends rather than waiting for a resume


async def test_the_controls_are_read_after_redis_forgot_its_scripts(
    redis: aioredis.Redis, alice: Agent, fake_model: FakeModelServer
) -> None:
    await redis.hset(MODEL_KEY, ALICE, "big")
    await redis.script_flush()
    assert (await alice.chat({"messages": HELLO}))[0] == 200
    assert fake_model.requests[0].body["model"] == "fake-big"


# -- an agent restarted mid-turn -----------------------------------------------------


async def test_a_restarted_agent_gets_its_turn_back_and_its_model_call_is_not_run_again(
    redis: aioredis.Redis,
    bus: Bus,
    mesh: Mesh,
    fake_model: FakeModelServer,
    calls: Calls,
) -> None:
    first = Agent(await mesh.open(ALICE))
    fake_model.push(Slow(1.0, Text("the one answer")))
    message_id = await take(bus, first, 1, "think")
    call = asyncio.create_task(first.chat({"messages": HELLO}))

    async def provider_called() -> bool:
        return len(fake_model.requests) == 1

    await eventually(provider_called, within_s=30)  # the first call loads LiteLLM
    # The container dies with the call in flight.
    call.cancel()
    await first.close()

    assert await mesh.requeue_open(ALICE) == 1
    second = Agent(await mesh.open(ALICE))
    try:
        status, message = await second.next(wait=0.5)
        assert (status, message["id"]) == (200, message_id)  # at once, not after a reclaim
        status, answer = await second.chat({"messages": HELLO})
        assert (status, answer["choices"][0]["message"]["content"]) == (200, "the one answer")
        assert len(fake_model.requests) == 1
        assert (await second.reply(message_id, "the one answer"))[0] == 200
    finally:
        await second.close()
    assert [o.text for o in await outbox(redis)] == ["the one answer"]
    assert await pending(redis, ALICE) == 0
    spent, held = await settled(calls)
    assert held == 0 and spent > 0


async def test_a_turn_replayed_after_the_mesh_restarted_too_is_answered_from_the_record(
    redis: aioredis.Redis, fake_model: FakeModelServer, calls: Calls, socket_dir: Path
) -> None:
    # The container and the agents process die within seconds of each other: a new
    # mesh, with nothing in memory, gets the turn back from the bus.
    first_bus = Bus(redis, BusSettings())
    first_mesh = Mesh(first_bus, calls.calls, SETTINGS, socket_dir, redis=redis)
    try:
        first = Agent(await first_mesh.open(ALICE))
        fake_model.push(Text("the one answer"))
        message_id = await take(first_bus, first, 1, "think")
        status, answer = await first.chat({"messages": HELLO})
        assert (status, answer["choices"][0]["message"]["content"]) == (200, "the one answer")
        await first.close()
    finally:
        await first_mesh.aclose()

    second_mesh = Mesh(Bus(redis, BusSettings()), calls.calls, SETTINGS, socket_dir, redis=redis)
    second = Agent(await second_mesh.open(ALICE))
    try:
        status, message = await second.next(wait=2)
        assert (status, message["id"]) == (200, message_id)
        status, again = await second.chat({"messages": HELLO})
        assert (status, again) == (200, answer)
        assert len(fake_model.requests) == 1
        # A different request in the replayed turn is a new call.
        fake_model.push(Text("a second thought"))
        status, other = await second.chat({"messages": [*HELLO, *HELLO]})
        assert other["choices"][0]["message"]["content"] == "a second thought"
        assert (await second.reply(message_id, "the one answer"))[0] == 200
    finally:
        await second.close()
        await second_mesh.aclose()
    assert len(fake_model.requests) == 2


async def test_a_different_request_or_a_new_turn_calls_the_model_again(
    bus: Bus,
    mesh: Mesh,
    fake_model: FakeModelServer,
) -> None:
    agent = Agent(await mesh.open(ALICE))
    try:
        message_id = await take(bus, agent, 1)
        fake_model.push(Text("one"))
        fake_model.push(Text("two"))
        fake_model.push(Text("three"))
        assert (await agent.chat({"messages": HELLO}))[1]["choices"][0]["message"][
            "content"
        ] == "one"
        other = [{"role": "user", "content": "something else"}]
        assert (await agent.chat({"messages": other}))[1]["choices"][0]["message"][
            "content"
        ] == "two"
        assert (await agent.reply(message_id, "done"))[0] == 200
        await take(bus, agent, 2)
        assert (await agent.chat({"messages": HELLO}))[1]["choices"][0]["message"][
            "content"
        ] == "three"
        assert len(fake_model.requests) == 3
    finally:
        await agent.close()


async def test_a_damaged_record_is_no_answer_and_a_new_turn_replaces_the_last(
    redis: aioredis.Redis,
) -> None:
    record = TurnAnswers(redis, ALICE)
    await record.record("1-0", "k", {"a": 1})
    assert await record.recall("1-0", "k") == {"a": 1}
    await redis.hset(ANSWERS_PREFIX + ALICE, "k", b"{not json")
    assert await record.recall("1-0", "k") is None
    await record.record("2-0", "j", {"b": 2})
    assert await record.recall("1-0", "k") is None
    assert await record.recall("2-0", "k") is None
    assert await record.recall("2-0", "j") == {"b": 2}
