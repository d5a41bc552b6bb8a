"""The Discord adapter end to end: the fake's gateway and REST, discord.py, a real Redis
bus, `run_channel`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels._shared.runner import run_channel
from channels.base import ChannelContext
from channels.discord import convert
from channels.discord.adapter import build
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries, out_stream
from gateway.envelope import Inbound, decode_inbound, reply
from gateway.settings import BusSettings
from tests.channels.discord.harness import GUILD_ID, settings_for
from tests.channels.running import refused_at_start
from tests.fakes.discord import BOT_USER, FakeDiscord, running_fake_discord, user
from tests.services import RedisProcess

ADA = user("1001", "ada", global_name="Ada Lovelace")
DM = "720000000000000001"
COMMANDS = (("help", "list the commands"), ("usage", "what was spent"))


def make_context(redis: aioredis.Redis) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis),
        media=MediaPolicy(),
        deliveries=Deliveries(redis),
        webhooks=None,
        commands=COMMANDS,
    )


@asynccontextmanager
async def running(
    redis: aioredis.Redis, command_guilds: tuple[int, ...] = ()
) -> AsyncIterator[tuple[FakeDiscord, Bus]]:
    async with running_fake_discord() as fake:
        channel = build(settings_for(fake, command_guilds), make_context(redis))
        bus = Bus(redis, BusSettings(block_ms=50))
        task = asyncio.create_task(run_channel(channel, bus, "discord-test"))
        try:
            await fake.wait_ready()
            yield fake, bus
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    async with asyncio.timeout(10):
        while True:
            found = [decode_inbound(f) for _, f in await redis.xrange(IN_STREAM)]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.01)


async def test_a_direct_message_becomes_an_envelope(redis: aioredis.Redis) -> None:
    async with running(redis) as (fake, _):
        message_id = await fake.message_create("hello **bot**", author=ADA, channel_id=DM)
        [inbound] = await entries(redis, 1)
    assert inbound.event_id == message_id
    assert inbound.conversation_id == DM
    assert inbound.text == "hello **bot**"
    assert inbound.sender_id == "1001" and inbound.sender_name == "Ada Lovelace"
    assert inbound.is_direct and inbound.mentioned


async def test_a_guild_mention_carries_the_channel_name_and_a_thread_its_own_id(
    redis: aioredis.Redis,
) -> None:
    async with running(redis) as (fake, _):
        fake.add_channel("730000000000000001", "general", guild_id=GUILD_ID)
        fake.add_channel("730000000000000002", "a thread", guild_id=GUILD_ID, kind=11)
        await fake.message_create(
            f"<@{BOT_USER['id']}> hi",
            author=ADA,
            channel_id="730000000000000001",
            guild_id=GUILD_ID,
            mentions=[BOT_USER],
        )
        await fake.message_create(
            "in thread", author=ADA, channel_id="730000000000000002", guild_id=GUILD_ID
        )
        first, second = await entries(redis, 2)
    assert (first.text, first.conversation_name, first.is_direct) == ("hi", "general", False)
    assert first.mentioned and first.thread_id == ""
    assert second.conversation_id == second.thread_id == "730000000000000002"
    assert not second.mentioned


async def test_other_bots_messages_arrive_marked_from_bot_and_our_own_do_not(
    redis: aioredis.Redis,
) -> None:
    hook = user("6", "Deploys", bot=True)
    async with running(redis) as (fake, _):
        await fake.message_create("from myself", author=BOT_USER, channel_id=DM)
        await fake.message_create("another bot", author=user("5", "b", bot=True), channel_id=DM)
        await fake.message_create("deployed", author=hook, channel_id=DM, webhook_id="6")
        await fake.message_create("a person", author=ADA, channel_id=DM)
        # Messages are handled in order: once the person's is on the bus, all were seen.
        found = await entries(redis, 3)
    assert [(i.text, i.sender_id, i.from_bot) for i in found] == [
        ("another bot", "5", True),
        ("deployed", "6", True),
        ("a person", "1001", False),
    ]


async def test_a_long_reply_is_chunked_with_nonces_and_replies_to_the_message(
    redis: aioredis.Redis,
) -> None:
    async with running(redis) as (fake, bus):
        await fake.message_create("tell me", author=ADA, channel_id=DM)
        [inbound] = await entries(redis, 1)
        words = [f"w{n}" for n in range(1_500)]
        await bus.publish(out_stream("discord"), reply(inbound, " ".join(words), "final"))
        await fake.wait_for(lambda: len(fake.sent) >= 3 and fake.sent[-1].content.endswith("w1499"))
    sent = fake.sent
    assert all(len(s.content) <= 2_000 for s in sent) and fake.refused == 0
    assert " ".join(s.content for s in sent).split() == words
    assert sent[0].reply_to == inbound.event_id and all(not s.reply_to for s in sent[1:])
    nonces = [s.nonce for s in sent]
    assert len(set(nonces)) == len(nonces) and all(0 < len(n) <= 25 for n in nonces)
    assert nonces[0] == convert.nonce(f"{inbound.dedupe_key}:final", 0)


async def test_the_same_nonce_sent_again_is_kept_once_by_the_platform(
    redis: aioredis.Redis,
) -> None:
    async with running_fake_discord() as fake:
        channel = build(settings_for(fake), make_context(redis))
        payload = convert.message_payload("once", convert.nonce("o1", 0), "")
        await channel._post(f"/channels/{DM}/messages", payload)
        await channel._post(f"/channels/{DM}/messages", payload)
    assert [s.content for s in fake.sent] == ["once"]


async def test_a_dropped_connection_resumes_without_duplicates_or_losses(
    redis: aioredis.Redis,
) -> None:
    async with running(redis) as (fake, _):
        await fake.message_create("before", author=ADA, channel_id=DM)
        await entries(redis, 1)
        await fake.drop_connection()
        await fake.message_create("while away", author=ADA, channel_id=DM)
        await fake.wait_for(lambda: bool(fake.resumes) and fake._live)
        await fake.message_create("after", author=ADA, channel_id=DM)
        found = await entries(redis, 3)
        await asyncio.sleep(0.2)
        found = await entries(redis, 3)
    assert [i.text for i in found] == ["before", "while away", "after"]
    assert len(fake.identifies) == 1 and fake.resumes[0]["session_id"] == fake.session_id


async def test_a_replayed_event_is_published_once(redis: aioredis.Redis) -> None:
    async with running(redis) as (fake, _):
        message_id = await fake.message_create("once", author=ADA, channel_id=DM)
        await entries(redis, 1)
        await fake.redispatch(fake.seq_of(message_id))
        await fake.message_create("next", author=ADA, channel_id=DM)
        await entries(redis, 2)
        await asyncio.sleep(0.2)
        assert [i.text for i in await entries(redis, 2)] == ["once", "next"]


async def test_slash_commands_are_registered_deferred_and_answered_by_follow_up(
    redis: aioredis.Redis,
) -> None:
    async with running(redis, command_guilds=(int(GUILD_ID),)) as (fake, bus):
        await fake.wait_for(lambda: GUILD_ID in fake.commands)
        assert [c["name"] for c in fake.commands[GUILD_ID]] == ["help", "usage"]
        interaction_id, token = await fake.interaction_create(
            "usage", "7d", author=ADA, channel_id=DM
        )
        [inbound] = await entries(redis, 1)
        await fake.wait_for(lambda: bool(fake.callbacks))
        await bus.publish(out_stream("discord"), reply(inbound, "spent **nothing**", "final"))
        await fake.wait_for(lambda: bool(fake.sent))
    assert inbound.text == "/usage 7d" and inbound.event_id == interaction_id
    [callback] = fake.callbacks
    assert callback.type == 5 and callback.delay_s < 3.0
    [sent] = fake.sent
    assert sent.interaction_token == token and sent.content == "spent **nothing**"


async def test_typing_is_shown_in_the_conversation(redis: aioredis.Redis) -> None:
    async with running_fake_discord() as fake:
        channel = build(settings_for(fake), make_context(redis))
        await channel.show_typing(DM, "")
    assert fake.typing == [DM]


async def test_a_429_is_waited_out_as_discord_asks(redis: aioredis.Redis) -> None:
    async with running(redis) as (fake, bus):
        await fake.message_create("hi", author=ADA, channel_id=DM)
        [inbound] = await entries(redis, 1)
        fake.throttle_next_send(0.5)
        started = time.monotonic()
        await bus.publish(out_stream("discord"), reply(inbound, "after a wait", "final"))
        await fake.wait_for(lambda: bool(fake.sent))
    assert time.monotonic() - started >= 0.5
    assert [s.content for s in fake.sent] == ["after a wait"]
    assert len(fake.send_attempts) == 2


async def test_a_message_that_comes_while_redis_is_down_is_published_once_it_is_back() -> None:
    """The gateway never sends an event again, so the adapter holds it for Redis."""
    server = RedisProcess(Path(tempfile.mkdtemp(prefix="stk-dr-", dir="/tmp")))
    server.start()
    client = aioredis.Redis.from_url(server.url)
    try:
        async with running_fake_discord() as fake:
            channel = build(settings_for(fake, ()), make_context(client))
            task = asyncio.create_task(
                run_channel(channel, Bus(client, BusSettings(block_ms=50)), "discord-test")
            )
            try:
                await fake.wait_ready()
                server.stop()
                message_id = await fake.message_create("while away", author=ADA, channel_id=DM)
                await asyncio.sleep(0.5)  # the adapter tries, and waits for Redis
                server.start()
                [inbound] = await entries(client, 1)
                assert (inbound.event_id, inbound.text) == (message_id, "while away")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await client.aclose()
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def test_a_refused_token_stops_the_channel_at_start_without_showing_it(
    redis: aioredis.Redis,
) -> None:
    async with running_fake_discord() as fake:
        settings = settings_for(fake).model_copy(update={"token": SecretStr("refused-token")})
        channel = build(settings, make_context(redis))
        error = await refused_at_start(channel, redis)
    assert "discord" in str(error) and "token was refused" in str(error)
    assert "refused-token" not in str(error) and not fake.identifies


async def test_discord_down_at_start_is_waited_out(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="stockade.channels.discord"):
        async with running_fake_discord() as fake:
            fake.outage_calls = 2
            channel = build(settings_for(fake), make_context(redis))
            bus = Bus(redis, BusSettings(block_ms=50))
            task = asyncio.create_task(run_channel(channel, bus, "discord-test"))
            try:
                await fake.wait_ready()
                await fake.message_create("still there?", author=ADA, channel_id=DM)
                [inbound] = await entries(redis, 1)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    assert inbound.text == "still there?" and fake.outage_calls == 0
    assert "login failed (HTTP 503)" in caplog.text and "login works again" in caplog.text


async def test_events_discord_py_cannot_parse_are_logged_and_the_next_one_arrives(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    channel_id = "730000000000000001"
    with caplog.at_level(logging.WARNING, logger="stockade.channels.discord"):
        async with running(redis) as (fake, _):
            fake.add_channel(channel_id, "general", guild_id=GUILD_ID)
            _, token = await fake.interaction_create(
                "help", author=ADA, channel_id=channel_id, guild_id=GUILD_ID, member_flags=False
            )
            await fake.dispatch(
                "MESSAGE_CREATE", {"id": fake.snowflake(), "channel_id": DM, "content": "x"}
            )
            await fake.message_create("still here", author=ADA, channel_id=DM)
            found = await entries(redis, 2)
    # The interaction is whole for the adapter: only discord.py's own model of it failed.
    assert sorted(i.text for i in found) == ["/help", "still here"]
    skipped = [r.getMessage() for r in caplog.records if "could not parse" in r.getMessage()]
    assert any("INTERACTION_CREATE" in line and "'flags'" in line for line in skipped)
    assert any("MESSAGE_CREATE" in line for line in skipped)
    assert token not in caplog.text
