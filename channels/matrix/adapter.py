"""Matrix through matrix-nio's `AsyncClient`, with our own sync loop.

The sync token is written to the state directory only after every message of a
sync response was published, so a crash replays a little (dropped as duplicates on
the bus by event id) and never skips. On the very first start, with no token, the
rooms' history is not replayed: that sync only learns the state. Every start syncs
with `full_state`, since nio keeps no room state (names, members) across restarts.
The access token is never logged nor put in an error message. A refused password or
access token at start ends `receive` with a non-retryable `PlatformError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

import aiohttp
from nio import InviteMemberEvent, MegolmEvent, RoomSendResponse, SyncResponse

from channels._shared.media import receive_files
from channels._shared.outbox import send_parts
from channels._shared.starting import until_started
from channels.base import Capabilities, ChannelContext, Publish
from channels.matrix import convert
from channels.matrix._errors import call
from channels.matrix._login import login, save
from gateway.envelope import Outbound
from gateway.errors import ConfigError, PlatformError, StockadeError
from gateway.settings import MatrixSettings

SYNC_TIMEOUT_MS: Final = 30_000
TYPING_MS: Final = 10_000
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
OWN_EVENTS: Final = 10_000
"""Event ids of our own messages remembered, so a reply to one counts as a mention."""
TOKEN_FILE: Final = "sync_token"

log = logging.getLogger("stockade.channels.matrix")

_NIO_RESPONSES: Final = "nio.responses"
"""Where matrix-nio logs every response whole at DEBUG: the login's access token and
people's messages among them. It never logs below INFO here, whatever -v says; nio's
other loggers (rooms, encryption) keep their debug output, which holds neither."""


def _member(event: Any) -> dict[str, object]:
    """An invite's stripped state event as JSON; nio takes `content` out of `source`."""
    if not isinstance(event, InviteMemberEvent):
        return {}
    return {
        "type": "m.room.member",
        "sender": event.sender,
        "state_key": event.state_key,
        "content": {"membership": event.membership},
    }


class MatrixChannel:
    def __init__(self, settings: MatrixSettings, context: ChannelContext) -> None:
        responses = logging.getLogger(_NIO_RESPONSES)  # before the client, which logs them
        responses.setLevel(max(logging.INFO, responses.level))
        self._settings = settings
        self._context = context
        self._homeserver = settings.homeserver.rstrip("/")
        self._dir = context.state_dir / "matrix" if context.state_dir is not None else None
        self._client: Any = None
        self._bot = convert.Bot(settings.user_id)
        self._lock = asyncio.Lock()
        self._own: OrderedDict[str, None] = OrderedDict()

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    async def _ready(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client, self._bot = await login(self._settings, self._homeserver, self._dir)
            return self._client

    async def aclose(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.close()
                self._client = None

    def _token_path(self) -> Path | None:
        return self._dir / TOKEN_FILE if self._dir is not None else None

    async def receive(self, publish: Publish) -> None:
        backoff = BACKOFF_MIN_S
        try:
            # A refused password or token ends the start; the homeserver away is waited out.
            await until_started(self._ready, platform=convert.NAME, what="login", log=log)
            async with aiohttp.ClientSession() as session:
                while True:
                    try:
                        client = await self._ready()
                        await self._sync_loop(client, session, publish)
                    except StockadeError as exc:
                        log.warning("matrix: sync failed (%s); retrying", exc)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            await self.aclose()

    async def _sync_loop(
        self, client: Any, session: aiohttp.ClientSession, publish: Publish
    ) -> None:
        path = self._token_path()
        token = path.read_text().strip() if path is not None and path.exists() else None
        first = True
        while True:
            response = await call(
                "sync",
                client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    since=token,
                    full_state=True if first else None,
                ),
            )
            if not isinstance(response, SyncResponse):
                raise PlatformError("matrix: sync answered something else")
            for room_id, info in response.rooms.invite.items():
                await self._invite(client, room_id, [_member(e) for e in info.invite_state])
            if token is not None:  # with no token yet, the timeline is history: skipped
                for room_id, info in response.rooms.join.items():
                    for event in info.timeline.events:
                        await self._event(client, session, publish, room_id, event)
            await self._crypto_chores(client)
            token, first = response.next_batch, False
            if path is not None:
                save(path, token)

    async def _crypto_chores(self, client: Any) -> None:
        """What `sync_forever` does between syncs for end-to-end encryption."""
        if not self._settings.encryption:
            return
        await call("to-device", client.send_to_device_messages())
        if client.should_upload_keys:
            await call("keys upload", client.keys_upload())
        if client.should_query_keys:
            await call("keys query", client.keys_query())
        if client.should_claim_keys:
            users = client.get_users_for_key_claiming()
            await call("keys claim", client.keys_claim(users))

    async def _invite(self, client: Any, room_id: str, state: list[dict[str, object]]) -> None:
        sender = convert.inviter(state, self._settings.user_id)
        if convert.invite_allowed(sender, self._settings.allowed_inviters):
            await call("join", client.join(room_id))
            log.info("matrix: joined %s on the invite of %s", room_id, sender)
        else:
            await call("leave", client.room_leave(room_id))
            log.warning("matrix: declined an invite to %s from %r", room_id, sender)

    async def _event(
        self,
        client: Any,
        session: aiohttp.ClientSession,
        publish: Publish,
        room_id: str,
        event: Any,
    ) -> None:
        if isinstance(event, MegolmEvent):
            log.warning("matrix: an event in %s could not be decrypted", room_id)
            return
        message = convert.parse_message(event.source)
        if message is None or message.sender == self._settings.user_id:
            return
        room = client.rooms.get(room_id)
        name = room.named_room_name() or "" if room is not None else ""
        joined = room.joined_count if room is not None else 0
        sender_name = (room.user_name(message.sender) if room is not None else None) or ""
        attachments: tuple[Any, ...] = ()
        notes: list[str] = []
        ref = convert.file_ref(message, self._homeserver)
        if ref is not None:
            attachments, notes = await receive_files(
                session,
                [ref],
                self._context.media,
                self._context.blobs,
                allowed_prefixes=(convert.media_prefix(self._homeserver),),
                headers={"Authorization": f"Bearer {client.access_token}"},
            )
        inbound = convert.to_inbound(
            message,
            convert.Room(room_id, name, joined),
            sender_name=sender_name,
            mentioned=convert.is_mentioned(message, self._bot, self._own),
            received_at=time.time(),
            attachments=attachments,
            notes=notes,
        )
        await publish(inbound)

    async def send(self, outbound: Outbound) -> None:
        client = await self._ready()
        contents = convert.message_contents(outbound.text, outbound.reply_to, outbound.thread_id)

        async def send_part(index: int, content: dict[str, object]) -> None:
            response = await call(
                "send",
                client.room_send(
                    outbound.conversation_id,
                    "m.room.message",
                    content,
                    tx_id=convert.transaction_id(outbound.outbound_id, index),
                    ignore_unverified_devices=True,
                ),
            )
            if isinstance(response, RoomSendResponse):
                self._own[response.event_id] = None
                while len(self._own) > OWN_EVENTS:
                    self._own.popitem(last=False)

        await send_parts(self._context.deliveries, outbound, contents, send_part)

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        client = await self._ready()
        await call("typing", client.room_typing(conversation_id, True, timeout=TYPING_MS))


def build(settings: MatrixSettings, context: ChannelContext) -> MatrixChannel:
    if not settings.homeserver or not settings.user_id:
        raise ConfigError("matrix", "homeserver", "homeserver and user_id are required")
    if settings.access_token is None and settings.password is None:
        raise ConfigError("matrix", "access_token", "required (or password)")
    if settings.encryption and context.state_dir is None:
        raise ConfigError("matrix", "encryption", "needs a state directory for the keys")
    return MatrixChannel(settings, context)
