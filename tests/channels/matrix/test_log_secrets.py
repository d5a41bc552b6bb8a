"""The password and the access token stay out of every log line at DEBUG and out of
every error, whether the bot logs in with its password or is given a token.

matrix-nio logs whole responses at DEBUG, the login's access token among them, on
one logger the adapter holds at INFO; its other loggers keep their debug output.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from channels.matrix.adapter import build
from gateway.bus import IN_STREAM, out_stream
from gateway.envelope import Inbound, Outbound, decode_inbound, reply
from gateway.errors import PlatformError
from gateway.settings import MatrixSettings
from tests.channels.log_secrets import DebugLog, canary, debug_log
from tests.channels.matrix.harness import (
    FILE_BYTES,
    PASSWORD,
    make_context,
    person,
    until,
)
from tests.channels.running import on_bus, refused_at_start
from tests.synapse import Synapse

TOKEN_PREFIX: Final = "syt_"
"""Synapse's access tokens start so: any of them in a log line is a leak."""
NIO: Final = ("nio.responses", "nio.crypto.log", "nio.rooms")


async def entries(redis: aioredis.Redis, count: int) -> list[Inbound]:
    found: list[Inbound] = []

    async def arrived() -> bool:
        found[:] = [decode_inbound(f) for _, f in await redis.xrange(IN_STREAM)]
        return len(found) >= count

    await until(arrived)
    return found


async def session(
    synapse: Synapse, redis: aioredis.Redis, settings: MatrixSettings, state_dir: Path
) -> None:
    """An invite joined, a message and a file taken, a reply sent, typing shown.

    The channel is built before anyone logs in: from then on nio keeps its responses
    (and so the login's token) out of the log, for the people's clients too."""
    name = f"alice-{secrets.token_hex(4)}"
    settings = settings.model_copy(update={"allowed_inviters": (synapse.user_id(name),)})
    channel = build(settings, make_context(redis, state_dir))
    async with person(synapse, name) as alice, on_bus(channel, redis) as bus:
        room = await alice.create_room((settings.user_id,))
        await alice.wait_joined(room, settings.user_id)
        await alice.send(room, {"msgtype": "m.text", "body": "hello bot"})
        mxc = await alice.upload(FILE_BYTES, "notes.txt", "text/plain")
        await alice.send(
            room,
            {"msgtype": "m.file", "body": "notes.txt", "filename": "notes.txt", "url": mxc},
        )
        first, second = await entries(redis, 2)
        assert second.attachments  # fetched with the access token
        await channel.show_typing(room, "")
        await bus.publish(out_stream("matrix"), reply(first, "hi **there**", "final"))

        async def answered() -> bool:
            return bool(alice.from_user(settings.user_id, {room}))

        await until(answered)


def assert_clean(log: DebugLog, *credentials: str) -> None:
    assert log.holding(*credentials) == []
    assert [line.text for line in log.lines if TOKEN_PREFIX in line.text] == []
    assert log.of("nio"), "nio logged nothing"
    assert log.of("stockade.channels.matrix", logging.INFO), "the adapter logged nothing"


async def test_no_log_line_at_debug_holds_the_password_or_an_access_token(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    password = canary("password-")
    bot = f"bot-{secrets.token_hex(4)}"
    synapse.register(bot, password)
    settings = MatrixSettings(
        enabled=True,
        homeserver=synapse.url,
        user_id=synapse.user_id(bot),
        password=SecretStr(password),
    )
    with debug_log() as log:
        await session(synapse, redis, settings, tmp_path)
        debug = {name: logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in NIO}
    assert_clean(log, password)
    # Only the response dumps are held back: nio's own debug output is there for -v.
    assert debug == {"nio.responses": False, "nio.crypto.log": True, "nio.rooms": True}


async def test_no_log_line_at_debug_holds_a_given_access_token(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    bot = f"bot-{secrets.token_hex(4)}"
    token = synapse.register(bot, canary("password-"))
    settings = MatrixSettings(
        enabled=True,
        homeserver=synapse.url,
        user_id=synapse.user_id(bot),
        access_token=SecretStr(token),
    )
    with debug_log() as log:
        await session(synapse, redis, settings, tmp_path)
    assert_clean(log, token)


async def test_a_refused_password_stops_the_channel_at_start_without_showing_it(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    bot = f"bot-{secrets.token_hex(4)}"
    synapse.register(bot, PASSWORD)
    wrong = canary("password-")
    settings = MatrixSettings(
        enabled=True,
        homeserver=synapse.url,
        user_id=synapse.user_id(bot),
        password=SecretStr(wrong),
    )
    with debug_log() as log:
        channel = build(settings, make_context(redis, tmp_path))
        with pytest.raises(PlatformError) as raised:
            await channel.send(Outbound("matrix", "!room:localhost", "hi", outbound_id="o"))
        error = await refused_at_start(channel, redis)
    for refusal in (raised.value, error):
        assert "M_FORBIDDEN" in str(refusal) and str(refusal).startswith("matrix: ")
        assert wrong not in str(refusal) and wrong not in repr(refusal)
    assert log.holding(wrong) == []


@pytest.mark.parametrize("device_id", ["", "STOCKADEDEVICE"], ids=["no-device", "device"])
async def test_a_refused_access_token_stops_the_channel_at_start_without_showing_it(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path, device_id: str
) -> None:
    bot = f"bot-{secrets.token_hex(4)}"
    synapse.register(bot, PASSWORD)
    wrong = f"{TOKEN_PREFIX}{canary('')}"
    settings = MatrixSettings(
        enabled=True,
        homeserver=synapse.url,
        user_id=synapse.user_id(bot),
        access_token=SecretStr(wrong),
        device_id=device_id,
    )
    with debug_log() as log:
        channel = build(settings, make_context(redis, tmp_path))
        with pytest.raises(PlatformError) as raised:
            await channel.send(Outbound("matrix", "!room:localhost", "hi", outbound_id="o"))
        error = await refused_at_start(channel, redis)
    for refusal in (raised.value, error):
        assert "M_UNKNOWN_TOKEN" in str(refusal) and str(refusal).startswith("matrix: ")
        assert wrong not in str(refusal) and wrong not in repr(refusal)
    assert log.holding(wrong) == []
