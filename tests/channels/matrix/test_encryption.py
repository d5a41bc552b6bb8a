"""The Matrix adapter in an end-to-end encrypted room, and its typing notice."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from nio import MegolmEvent, RoomMessage, RoomMessageText, SyncResponse

from channels.matrix.adapter import build
from gateway.bus import out_stream
from gateway.envelope import reply
from tests.channels.matrix.harness import Person, settings_for, until
from tests.channels.matrix.test_adapter import entries, make_context
from tests.channels.running import on_bus
from tests.synapse import Synapse


@asynccontextmanager
async def person(synapse: Synapse, user: str, store: Path | None = None) -> AsyncIterator[Person]:
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    someone = Person(synapse, user, store)
    await someone.start()
    try:
        yield someone
    finally:
        await someone.stop()


async def test_an_encrypted_message_arrives_decrypted_and_the_reply_is_readable(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    tag = secrets.token_hex(4)
    alice_id = synapse.user_id(f"alice-{tag}")
    settings = settings_for(synapse, f"bot-{tag}", (alice_id,))
    settings = settings.model_copy(update={"encryption": True})
    channel = build(settings, make_context(redis, tmp_path / "bot"))
    bot = settings.user_id
    events: list[tuple[str, Any]] = []
    async with (
        person(synapse, f"alice-{tag}", tmp_path / "alice") as alice,
        on_bus(channel, redis) as bus,
    ):

        async def record(response: Any) -> None:
            for room_id, info in response.rooms.join.items():
                events.extend((room_id, event) for event in info.timeline.events)

        alice.client.add_response_callback(record, SyncResponse)
        room = await alice.create_room((bot,), encrypted=True)
        await alice.wait_joined(room, bot)

        # Alice shares her room key only with devices she knows of: the bot's keys must
        # be uploaded and queried before her first message, or the bot cannot read it.
        async def knows_the_bot() -> bool:
            return any(alice.client.device_store.active_user_devices(bot))

        await until(knows_the_bot)
        event_id = await alice.send(room, {"msgtype": "m.text", "body": "a secret hello"})

        async def arrived() -> bool:
            return bool(await entries(redis))

        await until(arrived)
        [inbound] = await entries(redis)
        assert (inbound.event_id, inbound.text) == (event_id, "a secret hello")
        assert (inbound.conversation_id, inbound.sender_id) == (room, alice_id)

        await bus.publish(out_stream("matrix"), reply(inbound, "a secret **answer**", "final"))

        def from_bot() -> list[Any]:
            messages = (
                e for r, e in events if r == room and isinstance(e, RoomMessage | MegolmEvent)
            )
            return [e for e in messages if e.sender == bot]

        async def answered() -> bool:
            return bool(from_bot())

        await until(answered)
        [sent] = from_bot()
        assert not isinstance(sent, MegolmEvent)
        assert isinstance(sent, RoomMessageText)
        assert sent.body == "a secret *answer*"
        assert sent.decrypted  # it travelled encrypted
    assert list((tmp_path / "bot" / "matrix").glob("*.db"))  # the bot's crypto store


async def test_show_typing_reaches_the_people_in_the_room(
    synapse: Synapse, redis: aioredis.Redis, tmp_path: Path
) -> None:
    tag = secrets.token_hex(4)
    settings = settings_for(synapse, f"bot-{tag}", (synapse.user_id(f"alice-{tag}"),))
    channel = build(settings, make_context(redis, tmp_path))
    bot = settings.user_id
    async with person(synapse, f"alice-{tag}") as alice, on_bus(channel, redis):
        room = await alice.create_room((bot,))
        await alice.wait_joined(room, bot)
        await channel.show_typing(room, "")

        async def typing() -> bool:
            joined = alice.client.rooms.get(room)
            return joined is not None and bot in joined.typing_users

        await until(typing)
