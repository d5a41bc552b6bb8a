"""The bot token and interaction tokens stay out of every log line at DEBUG, and the
bot token out of every error.

discord.py logs at DEBUG each gateway frame it receives and each REST call it makes.
The bot token goes out in the IDENTIFY and RESUME frames and in every REST request's
Authorization; an interaction's token comes in its INTERACTION_CREATE frame and lets
anyone answer in the bot's name for 15 minutes.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels.base import Admission, ChannelContext
from channels.discord.adapter import build
from gateway.bus import IN_STREAM, Blobs, Deliveries, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.errors import PlatformError
from tests.channels.discord.harness import GUILD_ID, settings_for
from tests.channels.log_secrets import canary, debug_log
from tests.channels.running import on_bus
from tests.fakes.discord import BOT_USER, FakeDiscord, running_fake_discord, user

ADA = user("1001", "ada", global_name="Ada Lovelace")
DM = "720000000000000001"
GROUP = "730000000000000001"


def make_context(redis: aioredis.Redis) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis),
        media=MediaPolicy(),
        deliveries=Deliveries(redis),
        webhooks=None,
        commands=(("help", "list the commands"),),
    )


async def entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    async with asyncio.timeout(10):
        while len(found := [decode_inbound(f) for _, f in await redis.xrange(IN_STREAM)]) < count:
            await asyncio.sleep(0.01)
    return found


async def session(fake: FakeDiscord, redis: aioredis.Redis) -> str:
    """Identify, register commands, take a message, a file and a slash command, answer,
    resume after a drop; the slash command's interaction token."""
    channel = build(settings_for(fake, (int(GUILD_ID),)), make_context(redis))
    async with on_bus(channel, redis) as bus:
        await fake.wait_ready()
        fake.add_channel(GROUP, "general", guild_id=GUILD_ID)
        await fake.message_create("hello", author=ADA, channel_id=DM)
        attachment = fake.add_file("notes.txt", b"some notes\n", "text/plain")
        await fake.message_create(
            f"<@{BOT_USER['id']}> a file",
            author=ADA,
            channel_id=GROUP,
            guild_id=GUILD_ID,
            mentions=[BOT_USER],
            attachments=[attachment],
        )
        _, interaction_token = await fake.interaction_create("help", author=ADA, channel_id=DM)
        first, filed, command = await entries(redis, 3)
        assert filed.attachments and command.text == "/help"
        await bus.publish(out_stream("discord"), reply(first, "hi **there**", "final"))
        await bus.publish(out_stream("discord"), reply(command, "the commands", "final"))
        await fake.wait_for(lambda: len(fake.sent) == 2)
        await fake.drop_connection()
        await fake.wait_ready()
        await fake.message_create("after the resume", author=ADA, channel_id=DM)
        await entries(redis, 4)
    assert fake.identifies and fake.resumes and fake.commands and fake.callbacks
    return interaction_token


async def test_no_log_line_at_debug_holds_the_bot_token_or_an_interaction_token(
    redis: aioredis.Redis,
) -> None:
    token = canary("bot-")
    with debug_log() as log:
        async with running_fake_discord(token) as fake:
            interaction_token = await session(fake, redis)
    assert log.holding(token, interaction_token) == []
    frames = [line.text for line in log.of("discord.gateway", logging.DEBUG)]
    interactions = [frame for frame in frames if "INTERACTION_CREATE" in frame]
    assert interactions, "discord.py logged no frame"
    assert all("'token': '<token>'" in frame for frame in interactions)  # logged, masked
    assert log.of("discord.http", logging.DEBUG), "discord.py logged no REST call"


async def test_a_refused_token_fails_the_login_without_naming_the_token(
    redis: aioredis.Redis,
) -> None:
    wrong = canary("wrong-")
    with debug_log() as log:
        async with running_fake_discord() as fake:
            settings = settings_for(fake).model_copy(update={"token": SecretStr(wrong)})
            channel = build(settings, make_context(redis))
            with pytest.raises(PlatformError) as raised:
                async with asyncio.timeout(10):
                    await channel.receive(_never_called)
    assert not raised.value.retryable
    assert wrong not in str(raised.value) and wrong not in repr(raised.value)
    assert [line for line in log.lines if line.level >= logging.WARNING or "401" in line.text]
    assert log.holding(wrong) == []


async def test_a_send_with_a_refused_token_is_a_platform_error_without_the_token(
    redis: aioredis.Redis,
) -> None:
    wrong = canary("wrong-")
    with debug_log() as log:
        async with running_fake_discord() as fake:
            settings = settings_for(fake).model_copy(update={"token": SecretStr(wrong)})
            channel = build(settings, make_context(redis))
            outbound = Outbound("discord", DM, "hi", outbound_id="o1")
            with pytest.raises(PlatformError) as raised:
                await channel.send(outbound)
    assert "401" in str(raised.value) or "nauthorized" in str(raised.value)
    assert wrong not in str(raised.value)
    assert log.holding(wrong) == []


async def _never_called(inbound: Inbound) -> Admission:
    raise AssertionError("nothing is published with a refused token")
