"""The Matrix adapter against a real Synapse, as the contract suite sees a platform.

People are nio clients of their own: they create rooms, invite the bot (the adapter
joins, they are allowed inviters) and watch what the bot sends by syncing. Synapse
cannot be made to deliver one event twice, nor to answer a send with 429 on demand,
and it signs nothing we could forge: those features are not declared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from nio import AsyncClient, AsyncClientConfig, RoomCreateResponse, SyncResponse, UploadResponse
from pydantic import SecretStr

from channels._shared.media import MediaPolicy
from channels.base import ChannelContext
from channels.matrix import convert
from channels.matrix.adapter import MatrixChannel, build
from gateway.bus import Blobs, Deliveries
from gateway.settings import MatrixSettings
from tests.channels.contract import Event, Sent
from tests.synapse import Synapse, shared_synapse

PASSWORD: Final = "correct horse battery staple"
FILE_BYTES: Final = b"a small text file\n"
FEATURES: Final = frozenset(("groups", "files"))
WAIT_S: Final = 15.0


async def until(condition: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await condition():
            await asyncio.sleep(0.05)


class Person:
    """Someone on the homeserver with their own nio client, syncing in the background."""

    def __init__(self, synapse: Synapse, user: str, store: Path | None = None) -> None:
        self.synapse = synapse
        self.user_id = synapse.user_id(user)
        self.user = user
        synapse.register(user, PASSWORD)
        config = AsyncClientConfig(encryption_enabled=store is not None)
        self.client = AsyncClient(
            synapse.url, self.user_id, store_path=str(store or ""), config=config
        )
        self.events: list[dict[str, Any]] = []
        """Every timeline event this person saw, as JSON, with its room id."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        answer = await self.client.login(PASSWORD, "test")
        assert answer.access_token, answer
        self._task = asyncio.create_task(self._sync())
        await self.client.synced.wait()

    async def _sync(self) -> None:
        async def record(response: Any) -> None:
            for room_id, info in response.rooms.join.items():
                for event in info.timeline.events:
                    self.events.append({**event.source, "room_id": room_id})

        self.client.add_response_callback(record, SyncResponse)
        await self.client.sync_forever(timeout=500, full_state=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    async def create_room(
        self, invite: tuple[str, ...], name: str = "", encrypted: bool = False
    ) -> str:
        state = []
        if encrypted:
            state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        answer = await self.client.room_create(
            name=name or None, invite=list(invite), initial_state=state
        )
        assert isinstance(answer, RoomCreateResponse), answer
        return str(answer.room_id)

    async def membership(self, room_id: str, user_id: str) -> str:
        answer = await self.client.room_get_state_event(room_id, "m.room.member", user_id)
        content = getattr(answer, "content", None)
        return str(content.get("membership", "")) if isinstance(content, dict) else ""

    async def wait_joined(self, room_id: str, user_id: str) -> None:
        async def joined() -> bool:
            return await self.membership(room_id, user_id) == "join"

        await until(joined)

    async def send(self, room_id: str, content: dict[str, Any]) -> str:
        answer = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        event_id = getattr(answer, "event_id", None)
        assert event_id, answer
        return str(event_id)

    async def upload(self, data: bytes, name: str, mimetype: str) -> str:
        answer, _ = await self.client.upload(
            lambda *_: data, content_type=mimetype, filename=name, filesize=len(data)
        )
        assert isinstance(answer, UploadResponse), answer
        return str(answer.content_uri)

    def from_user(self, user_id: str, room_ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Messages `user_id` sent, as this person saw them, oldest first."""
        seen: dict[str, dict[str, Any]] = {}
        for event in self.events:
            if event.get("sender") != user_id or event.get("type") != "m.room.message":
                continue
            if room_ids is None or event["room_id"] in room_ids:
                seen.setdefault(event["event_id"], event)
        return list(seen.values())


def settings_for(synapse: Synapse, bot: str, inviters: tuple[str, ...]) -> MatrixSettings:
    """Settings for the bot user `bot` (registered here), logging in with its password."""
    synapse.register(bot, PASSWORD)
    return MatrixSettings(
        enabled=True,
        homeserver=synapse.url,
        user_id=synapse.user_id(bot),
        password=SecretStr(PASSWORD),
        allowed_inviters=inviters,
    )


class MatrixHarness:
    name = "matrix"
    features = FEATURES
    max_text = convert.MAX_TEXT

    def __init__(self, synapse: Synapse, context: ChannelContext, alice: Person, tag: str) -> None:
        self.synapse = synapse
        self.alice = alice
        self.tag = tag
        self.bot_id = synapse.user_id(f"bot-{tag}")
        self.settings = settings_for(synapse, f"bot-{tag}", (alice.user_id,))
        self.channel: MatrixChannel = build(self.settings, context)
        self.rooms: dict[str, str] = {}
        """Group title ("" for the direct chat) → room id."""
        self._files = itertools.count(1)

    def bold(self, word: str) -> str:
        return f"<b>{word}</b>"

    async def room(self, title: str) -> str:
        if title not in self.rooms:
            room_id = await self.alice.create_room((self.bot_id,), name=title)
            await self.alice.wait_joined(room_id, self.bot_id)
            if title:  # a group: a third member joins
                carol = self.synapse.user_id(f"carol-{self.tag}")
                self.synapse.register(f"carol-{self.tag}", PASSWORD)
                await self.alice.client.room_invite(room_id, carol)
                await self._join_as(f"carol-{self.tag}", room_id)
            self.rooms[title] = room_id
        return self.rooms[title]

    async def _join_as(self, user: str, room_id: str) -> None:
        client = AsyncClient(self.synapse.url, self.synapse.user_id(user))
        try:
            await client.login(PASSWORD, "test")
            await client.join(room_id)
        finally:
            await client.close()

    async def deliver(self, event: Event) -> str:
        room_id = await self.room(event.group_title)
        if event.sender_name:
            # The name in this room, as a state event ahead of the message: a profile
            # change reaches rooms in the background and may come after it.
            await self.alice.client.room_put_state(
                room_id,
                "m.room.member",
                {"membership": "join", "displayname": event.sender_name},
                state_key=self.alice.user_id,
            )
        text = f"{self.bot_id} {event.text}" if event.group_title else event.text
        if not event.file_name:
            return await self.alice.send(room_id, {"msgtype": "m.text", "body": text})
        mxc = await self.alice.upload(FILE_BYTES, event.file_name, "text/plain")
        content = {
            "msgtype": "m.file",
            "body": text,
            "filename": event.file_name,
            "url": mxc,
            "info": {"mimetype": "text/plain", "size": len(FILE_BYTES)},
        }
        return await self.alice.send(room_id, content)

    async def redeliver(self, event_id: str) -> None:
        raise NotImplementedError("Synapse delivers each event once")

    async def forged(self, event: Event) -> int:
        raise NotImplementedError("a sync is not signed")

    def throttle_next_send(self, retry_after_s: float) -> None:
        raise NotImplementedError("Synapse cannot be told to rate-limit one send")

    def sent(self) -> list[Sent]:
        return [
            Sent(
                conversation_id=event["room_id"],
                text=str(event["content"].get("formatted_body") or event["content"]["body"]),
                thread_id=str(event["content"].get("m.relates_to", {}).get("event_id", ""))
                if event["content"].get("m.relates_to", {}).get("rel_type") == "m.thread"
                else "",
            )
            for event in self.alice.from_user(self.bot_id, set(self.rooms.values()))
        ]

    def refused_sends(self) -> int:
        return 0


def make_context(redis: aioredis.Redis, state_dir: Path) -> ChannelContext:
    return ChannelContext(
        blobs=Blobs(redis),
        media=MediaPolicy(),
        deliveries=Deliveries(redis),
        webhooks=None,
        state_dir=state_dir,
    )


@asynccontextmanager
async def person(synapse: Synapse, user: str) -> AsyncIterator[Person]:
    someone = Person(synapse, user)
    await someone.start()
    try:
        yield someone
    finally:
        await someone.stop()


@asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[MatrixHarness]:
    synapse = shared_synapse()
    with tempfile.TemporaryDirectory(prefix="stk-matrix-") as state:
        context = dataclasses.replace(context, state_dir=Path(state))
        # Users of their own: the test process shares one Synapse, and a display name
        # set here must not show up in another test.
        tag = secrets.token_hex(4)
        alice = Person(synapse, f"alice-{tag}")
        await alice.start()
        try:
            yield MatrixHarness(synapse, context, alice, tag)
        finally:
            await alice.stop()
