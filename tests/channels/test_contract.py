"""The channel contract, run against every adapter and its platform's wire-level fake.

Each adapter runs under `run_channel` on a real Redis, the way the channels role runs
it. Checks that need a platform feature (signatures, redelivery, rate limits, groups,
files) run for the harnesses that declare it; the rest run for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import pytest
import redis.asyncio as aioredis

from channels._shared import MediaPolicy, WebhookLimits, WebhookServer, run_channel
from channels.base import ChannelContext
from gateway.app import router as make_router
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.controls import CONTROL_STREAM
from gateway.envelope import Inbound, Outbound, decode_inbound
from gateway.sanitize import sanitize
from gateway.settings import AccessSettings, BusSettings, ChannelAccess, Settings
from tests.channels.contract import Event, Harness

NAMES: Final = ("console", "telegram", "slack", "whatsapp", "discord", "matrix")
SETTINGS: Final = BusSettings(claim_idle_ms=500, block_ms=50)
HOSTILE: Final = "\u202e\u200b\U000e0041\x1b\x07\ufeff\U000e0101\u2066"
"""A bidi override and isolate, a zero-width space, a tag character, the terminal's
escape and bell, a byte-order mark and an invisible variation selector: none may reach
the bus."""


def with_feature(feature: str) -> list[str]:
    """The harnesses that declare `feature`; read from their modules at collection."""
    names = []
    for name in NAMES:
        module = importlib.import_module(f"tests.channels.{name}.harness")
        if feature in _features(module):
            names.append(name)
    return names


def _features(module: object) -> frozenset[str]:
    declared = getattr(module, "FEATURES", None)
    if isinstance(declared, frozenset):
        return declared
    for value in vars(module).values():
        features = getattr(value, "features", None)
        if isinstance(value, type) and isinstance(features, frozenset):
            return features
    return frozenset()


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def inbound_entries(redis: aioredis.Redis) -> list[Inbound]:
    return [decode_inbound(fields) for _, fields in await redis.xrange(IN_STREAM)]


async def wait_for_entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    async with asyncio.timeout(10):
        while len(entries := await inbound_entries(redis)) < count:
            await asyncio.sleep(0.01)
    return entries


@pytest.fixture
async def running(request: pytest.FixtureRequest, redis: aioredis.Redis) -> AsyncIterator[Harness]:
    module = importlib.import_module(f"tests.channels.{request.param}.harness")
    async with WebhookServer("127.0.0.1", 0, WebhookLimits()) as webhooks:
        context = ChannelContext(
            blobs=Blobs(redis),
            media=MediaPolicy(),
            deliveries=Deliveries(redis),
            webhooks=webhooks,
            commands=(("help", "list the commands"),),
        )
        async with module.open_harness(context) as harness:
            task = asyncio.create_task(run_channel(harness.channel, Bus(redis, SETTINGS), "c1"))
            try:
                yield harness
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def each(feature: str | None = None) -> pytest.MarkDecorator:
    names = list(NAMES) if feature is None else with_feature(feature)
    return pytest.mark.parametrize("running", names, indirect=True)


def reply_to(inbound: Inbound, text: str, suffix: str = "final") -> Outbound:
    return Outbound(
        channel=inbound.channel,
        conversation_id=inbound.conversation_id,
        text=text,
        outbound_id=f"{inbound.dedupe_key}:{suffix}",
        reply_to=inbound.event_id,
        thread_id=inbound.thread_id,
    )


async def one_inbound(running: Harness, redis: aioredis.Redis, event: Event) -> Inbound:
    before = len(await inbound_entries(redis))
    await running.deliver(event)
    return (await wait_for_entries(redis, before + 1))[-1]


def routing_settings(channel: str, admins: tuple[str, ...] = ()) -> Settings:
    """The real router's settings: the channel open to everyone, `admins` its operators."""
    policy = ChannelAccess(dm_policy="open", admins=admins)
    return Settings(bus=SETTINGS, access=AccessSettings(**{channel: policy}))


def clean(value: str) -> bool:
    return not any(char in value for char in HOSTILE) and sanitize(value) == value


@each()
async def test_a_message_arrives_on_the_bus_as_an_envelope_of_its_channel(
    running: Harness, redis: aioredis.Redis
) -> None:
    inbound = await one_inbound(running, redis, Event("hello there"))
    assert inbound.channel == running.name
    assert inbound.text == "hello there"
    assert inbound.sender_id and inbound.conversation_id and inbound.event_id
    assert inbound.is_direct


@each()
async def test_hostile_unicode_is_neutralised_in_every_field(
    running: Harness, redis: aioredis.Redis
) -> None:
    event = Event(
        f"/help arg{HOSTILE}ument and te{HOSTILE}xt",
        sender_name=f"Ada{HOSTILE} Lovelace",
        group_title=f"Team{HOSTILE} room" if "groups" in running.features else "",
        file_name=f"re{HOSTILE}port.txt" if "files" in running.features else "",
    )
    inbound = await one_inbound(running, redis, event)
    fields = [inbound.text, inbound.sender_name, inbound.sender_id, inbound.conversation_name]
    fields += [a.name for a in inbound.attachments]
    assert all(clean(field) for field in fields), fields
    assert "/help argument and text" in inbound.text
    assert "Lovelace" in inbound.sender_name or running.name == "console"
    if "groups" in running.features:
        assert inbound.conversation_name == "Team room" and not inbound.is_direct
    if "files" in running.features:
        assert [a.name for a in inbound.attachments] == ["report.txt"]


@each()
async def test_a_long_reply_is_chunked_within_the_limit_and_nothing_is_lost(
    running: Harness, redis: aioredis.Redis
) -> None:
    inbound = await one_inbound(running, redis, Event("tell me everything"))
    words = [f"w{n}" for n in range(running.max_text // 2)]  # about 2.5 times the limit
    await Bus(redis, SETTINGS).publish(out_stream(running.name), reply_to(inbound, " ".join(words)))
    await until(lambda: " ".join(s.text for s in running.sent()).split()[-1:] == [words[-1]])
    sent = running.sent()
    assert len(sent) >= 3
    assert running.refused_sends() == 0
    assert all(len(s.text) <= running.max_text for s in sent)
    assert " ".join(s.text for s in sent).split() == words
    assert {s.conversation_id for s in sent} == {inbound.conversation_id}


@each()
async def test_formatting_survives_the_trip_to_the_platform(
    running: Harness, redis: aioredis.Redis
) -> None:
    inbound = await one_inbound(running, redis, Event("format please"))
    await Bus(redis, SETTINGS).publish(
        out_stream(running.name), reply_to(inbound, "this is **important** & <fine>")
    )
    await until(running.sent)
    [sent] = running.sent()
    assert running.bold("important") in sent.text
    assert running.refused_sends() == 0


@each("redelivery")
async def test_a_duplicate_delivery_produces_one_envelope_and_one_reply(
    running: Harness, redis: aioredis.Redis
) -> None:
    router = make_router(redis, routing_settings(running.name))
    routing = asyncio.create_task(router.run("r1"))
    try:
        event_id = await running.deliver(Event("/help"))
        await until(running.sent)
        await running.redeliver(event_id)
        await asyncio.sleep(0.5)  # time for a second reply, were there one
        assert len(await inbound_entries(redis)) == 1
        assert len(running.sent()) == 1
    finally:
        routing.cancel()
        await asyncio.gather(routing, return_exceptions=True)


@each("rate_limit")
async def test_a_platform_429_is_retried_after_the_advertised_delay(
    running: Harness, redis: aioredis.Redis
) -> None:
    inbound = await one_inbound(running, redis, Event("hi"))
    running.throttle_next_send(1.0)
    started = time.monotonic()
    await Bus(redis, SETTINGS).publish(out_stream(running.name), reply_to(inbound, "after a wait"))
    await until(running.sent)
    assert time.monotonic() - started >= 1.0
    assert [s.text for s in running.sent()] == ["after a wait"]


@each("signatures")
async def test_a_forged_request_is_refused_before_anything_is_enqueued(
    running: Harness, redis: aioredis.Redis
) -> None:
    status = await running.forged(Event("let me in"))
    assert status in (401, 403)
    await asyncio.sleep(0.1)
    assert await inbound_entries(redis) == []
    # and the channel still serves genuine traffic
    inbound = await one_inbound(running, redis, Event("genuine"))
    assert inbound.text == "genuine"


def test_every_harness_declares_only_known_features() -> None:
    from tests.channels.contract import FEATURES

    for name in NAMES:
        module = importlib.import_module(f"tests.channels.{name}.harness")
        assert _features(module) <= FEATURES, name
        assert re.fullmatch(r"[a-z]+", name)


async def command_reply(running: Harness, text: str) -> str:
    before = len(running.sent())
    await running.deliver(Event(text))
    await until(lambda: len(running.sent()) > before)
    return running.sent()[-1].text


async def command_control(running: Harness, redis: aioredis.Redis, text: str) -> None:
    before = await redis.xlen(CONTROL_STREAM)
    await running.deliver(Event(text))
    async with asyncio.timeout(10):
        while await redis.xlen(CONTROL_STREAM) == before:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def routed(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[None]:
    routing = asyncio.create_task(make_router(redis, settings).run("r1"))
    try:
        yield
    finally:
        routing.cancel()
        await asyncio.gather(routing, return_exceptions=True)


@each()
async def test_every_command_answers_an_admin_and_refuses_a_user(
    running: Harness, redis: aioredis.Redis
) -> None:
    # The sender's platform id, as the adapter reports it, is made an admin of the channel.
    probe = await one_inbound(running, redis, Event("hello"))
    me = f"{probe.channel}:{probe.sender_id}"
    admin_only = {
        "/status": "Roles:",
        "/agents": "No agent has a container",
        "/pair": "No pairing requests",
        f"/allow {probe.channel}:other": "may talk",
        f"/budget {me}": "Spending of",
        f"/model {me}": "uses default",
        f"/deny {probe.channel}:other": "kept out",
        "/audit 1": "deny",
    }
    sends_control = (f"/kill {me}", "/pause all", "/resume all")
    await redis.xtrim(IN_STREAM, maxlen=0)  # the probe is not routed
    async with routed(redis, routing_settings(running.name, admins=(probe.sender_id,))):
        assert "Role: admin" in await command_reply(running, "/whoami")
        for line, expected in admin_only.items():
            assert expected in await command_reply(running, line), line
        for line in sends_control:
            await command_control(running, redis, line)
        assert "/kill" in await command_reply(running, "/help")
        assert "Usage: /kill USER" in await command_reply(running, "/kill")
    controls = await redis.xlen(CONTROL_STREAM)
    async with routed(redis, routing_settings(running.name)):
        assert "Role: user" in await command_reply(running, "/whoami")
        for line in [*admin_only, *sends_control]:
            assert "for operators only" in await command_reply(running, line), line
        user_help = await command_reply(running, "/help")
        assert "/reset" in user_help and "/kill" not in user_help
        assert "spending" in (await command_reply(running, "/usage")).lower()
        assert "reset confirm" in await command_reply(running, "/reset")
        await command_control(running, redis, "/stop")
    assert await redis.xlen(CONTROL_STREAM) == controls + 1
