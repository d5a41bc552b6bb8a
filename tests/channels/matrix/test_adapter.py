"""The Matrix adapter against a real Synapse: invites, messages both ways, restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from channels.base import Admission
from channels.matrix.adapter import MatrixChannel, build
from gateway.bus import IN_STREAM, out_stream
from gateway.envelope import Inbound, decode_inbound, reply
from tests.channels.matrix.harness import (
    PASSWORD,
    make_context,
    person,
    settings_for,
    until,
)
from tests.channels.running import on_bus
from tests.synapse import Synapse


@asynccontextmanager
async def receiving(channel: MatrixChannel, seen: list[Inbound]) -> AsyncIterator[None]:
    """The channel's receive loop alone, every publish recorded (no dedupe in between)."""

    async def publish(inbound: Inbound) -> Admission:
        seen.append(inbound)
        return Admission.ACCEPTED

    task = asyncio.create_task(channel.receive(publish))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def entries(redis: aioredis.Redis) -> list[Inbound]:
    return [decode_inbound(fields) for _, fields in await redis.xrange(IN_STREAM)]


async def test_an_invited_bot_receives_a_message_and_its_reply_reaches_the_room(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    channel = build(
        settings_for(synapse, "bot1", (synapse.user_id("alice"),)), make_context(redis, tmp_path)
    )
    bot = synapse.user_id("bot1")
    async with person(synapse, "alice") as alice, on_bus(channel, redis) as bus:
        room = await alice.create_room((bot,))
        await alice.wait_joined(room, bot)
        event_id = await alice.send(room, {"msgtype": "m.text", "body": "hello bot"})

        async def arrived() -> bool:
            return len(await entries(redis)) == 1

        await until(arrived)
        [inbound] = await entries(redis)
        assert (inbound.channel, inbound.event_id, inbound.text) == (
            "matrix",
            event_id,
            "hello bot",
        )
        assert inbound.conversation_id == room and inbound.sender_id == alice.user_id
        assert inbound.is_direct and inbound.sender_name == "alice"

        await bus.publish(out_stream("matrix"), reply(inbound, "this is **bold**", "final"))

        async def answered() -> bool:
            return bool(alice.from_user(bot, {room}))

        await until(answered)
        [sent] = alice.from_user(bot, {room})
        content = sent["content"]
        assert content["body"] == "this is *bold*"
        assert content["format"] == "org.matrix.custom.html"
        assert content["formatted_body"] == "this is <b>bold</b>"
        assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": event_id}}
    # Even at DEBUG: no access token (Synapse's start with syt_), no password, no message.
    assert "syt_" not in caplog.text and PASSWORD not in caplog.text
    assert "hello bot" not in caplog.text


async def test_an_invite_from_someone_not_allowed_is_declined(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    channel = build(
        settings_for(synapse, "bot2", (synapse.user_id("alice"),)), make_context(redis, tmp_path)
    )
    bot = synapse.user_id("bot2")
    seen: list[Inbound] = []
    async with person(synapse, "mallory") as mallory, receiving(channel, seen):
        room = await mallory.create_room((bot,))

        async def declined() -> bool:
            return await mallory.membership(room, bot) == "leave"

        await until(declined)
        await mallory.send(room, {"msgtype": "m.text", "body": "let me in"})
        await asyncio.sleep(0.5)
        assert seen == []


async def test_a_restart_neither_replays_nor_loses_messages(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    settings = settings_for(synapse, "bot3", (synapse.user_id("alice"),))
    bot = synapse.user_id("bot3")
    seen: list[Inbound] = []
    async with person(synapse, "alice") as alice:
        first = build(settings, make_context(redis, tmp_path))
        async with receiving(first, seen):
            room = await alice.create_room((bot,))
            await alice.wait_joined(room, bot)
            await alice.send(room, {"msgtype": "m.text", "body": "one"})

            async def one() -> bool:
                return len(seen) == 1

            await until(one)
        for text in ("two", "three"):  # while the adapter is down
            await alice.send(room, {"msgtype": "m.text", "body": text})
        again = build(settings, make_context(redis, tmp_path))
        async with receiving(again, seen):

            async def three() -> bool:
                return len(seen) >= 3

            await until(three)
            await asyncio.sleep(0.5)  # time for a replay, were there one
        assert [inbound.text for inbound in seen] == ["one", "two", "three"]


async def test_history_before_the_first_start_is_not_replayed(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    settings = settings_for(synapse, "bot4", (synapse.user_id("alice"),))
    bot = synapse.user_id("bot4")
    seen: list[Inbound] = []
    async with person(synapse, "alice") as alice:
        async with receiving(build(settings, make_context(redis, tmp_path / "a")), seen):
            room = await alice.create_room((bot,))
            await alice.wait_joined(room, bot)
        await alice.send(room, {"msgtype": "m.text", "body": "old news"})
        async with receiving(build(settings, make_context(redis, tmp_path / "b")), seen):
            await asyncio.sleep(1.0)
            await alice.send(room, {"msgtype": "m.text", "body": "new"})

            async def arrived() -> bool:
                return bool(seen)

            await until(arrived)
        assert [inbound.text for inbound in seen] == ["new"]


@pytest.mark.parametrize("size", [1])
async def test_a_file_is_fetched_from_the_homeserver_into_a_blob(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path, size: int
) -> None:
    settings = settings_for(synapse, "bot5", (synapse.user_id("alice"),))
    bot = synapse.user_id("bot5")
    seen: list[Inbound] = []
    async with person(synapse, "alice") as alice:
        context = make_context(redis, tmp_path)
        async with receiving(build(settings, context), seen):
            room = await alice.create_room((bot,))
            await alice.wait_joined(room, bot)
            mxc = await alice.upload(b"report body\n" * size, "report.txt", "text/plain")
            await alice.send(
                room,
                {
                    "msgtype": "m.file",
                    "body": "report.txt",
                    "url": mxc,
                    "info": {"mimetype": "text/plain", "size": 12 * size},
                },
            )

            async def arrived() -> bool:
                return bool(seen)

            await until(arrived)
        [inbound] = seen
        [attachment] = inbound.attachments
        assert (attachment.name, attachment.kind, attachment.size) == ("report.txt", "file", 12)
        assert await context.blobs.get(attachment.blob) == b"report body\n"
        assert inbound.text == ""
