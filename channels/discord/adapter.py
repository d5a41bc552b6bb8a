"""The Discord adapter: discord.py's gateway connection in, Discord's REST API out.

discord.py keeps the gateway up (identify, heartbeats, RESUME after a dropped
connection, replaying what was missed). Every raw dispatch is read here through
`on_socket_raw_receive` and parsed by `convert`; discord.py's own models are not
used. A RESUME may replay events already seen: their ids are the dedupe keys, so the
bus drops them.

Sends (messages, typing, interaction callbacks and follow-ups) go over aiohttp
directly instead of discord.py's HTTPClient: it sleeps through a 429 itself, debug-logs
URLs that carry interaction tokens, and cannot set `enforce_nonce`. Here a 429 becomes
`RateLimited` and `send_with_retry` waits as Discord asked.

discord.py logs each gateway frame it receives at DEBUG, whole: an interaction's
token (which lets anyone answer in the bot's name for 15 minutes) is masked there.

`discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY` are class
attributes: building the channel sets them for the whole process, so one process
serves one Discord API (the real one, or one fake in tests).

At start, a refused token (or a gateway refusal such as a missing intent) ends
`receive` with a non-retryable `PlatformError`; Discord unreachable is waited out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl

from channels._shared.media import receive_files
from channels._shared.outbox import send_parts
from channels._shared.redact import RedactMatches, redact
from channels._shared.starting import until_started
from channels.base import Capabilities, ChannelContext, Publish
from channels.discord import convert
from channels.discord._client import connect, logged_in
from gateway.envelope import Attachment, Outbound
from gateway.errors import ConfigError, PlatformError, PlatformUnavailable, RedisUnavailable
from gateway.settings import DiscordSettings

log = logging.getLogger("stockade.channels.discord")

INTERACTIONS_KEPT: Final = 1_024
"""Interaction tokens kept for follow-ups; older ones are answered as plain messages."""
INTERACTION_TTL_S: Final = 14 * 60.0
"""Discord accepts follow-ups on an interaction token for 15 minutes."""
CHANNELS_KEPT: Final = 2_048
REQUEST_TIMEOUT_S: Final = 30.0
_NET_ERRORS: Final = (aiohttp.ClientError, TimeoutError)
REDIS_BACKOFF_MAX_S: Final = 5.0
_FRAME_LOGGERS: Final = ("discord.gateway",)
"""Where discord.py logs the frames it receives, at DEBUG."""
_TOKENS_IN_FRAMES: Final = RedactMatches(
    re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+"""), r"\1<token>"
)
"""Any "token" field of a logged frame: INTERACTION_CREATE carries the interaction's."""


async def _while_redis_is_away(step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` until Redis takes what it publishes. The gateway never sends an event
    again (a RESUME replays only what the connection missed), so an event dropped here
    would be lost; events wait in order meanwhile."""
    backoff = 0.1
    while True:
        try:
            await step()
            return
        except RedisUnavailable:
            log.warning("discord: Redis is unavailable; holding an event until it answers")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, REDIS_BACKOFF_MAX_S)


class DiscordChannel:
    """Discord through discord.py's gateway: messages and slash commands in, Markdown out."""

    def __init__(self, settings: DiscordSettings, context: ChannelContext) -> None:
        if settings.token is None:
            raise ConfigError("configuration", "discord.token", "required")
        redact(_FRAME_LOGGERS, _TOKENS_IN_FRAMES)  # before the client, which logs every frame
        self._settings = settings
        self._context = context
        self._token = settings.token.get_secret_value()
        self._api = settings.api_base.rstrip("/")
        discord.http.Route.BASE = self._api
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)
        self._client: discord.Client | None = None
        self._publish: Publish | None = None
        self._session: aiohttp.ClientSession | None = None
        self._interactions: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._channels: OrderedDict[str, convert.ChannelInfo] = OrderedDict()
        self._in_order = asyncio.Lock()
        """discord.py runs each dispatch in a task of its own; the lock (FIFO) publishes
        them in the order they arrived, whatever lookups and downloads each needs."""

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    # -- receiving ---------------------------------------------------------------------

    async def receive(self, publish: Publish) -> None:
        client = await until_started(
            functools.partial(logged_in, self._token, self._on_raw),
            platform=convert.NAME,
            what="login",
            log=log,
        )
        try:
            async with aiohttp.ClientSession() as session:
                self._client, self._publish, self._session = client, publish, session
                await self._register_commands(client)
                await connect(client)
        finally:
            await client.close()
            self._client, self._publish, self._session = None, None, None

    async def _register_commands(self, client: discord.Client) -> None:
        payload: Any = convert.command_payload(self._context.commands)
        app = client.application_id
        if not payload or app is None:
            return
        try:
            if self._settings.command_guilds:
                for guild in self._settings.command_guilds:
                    await client.http.bulk_upsert_guild_commands(app, guild, payload)
            else:
                await client.http.bulk_upsert_global_commands(app, payload)
        except (discord.HTTPException, *_NET_ERRORS) as exc:
            log.warning("discord: registering slash commands failed (%s)", type(exc).__name__)

    async def _on_raw(self, raw: Any) -> None:
        event, data = convert.parse_frame(raw) if isinstance(raw, str | bytes) else ("", {})
        try:
            if event == "MESSAGE_CREATE":
                async with self._in_order:
                    await _while_redis_is_away(functools.partial(self._on_message, data))
            elif event == "INTERACTION_CREATE":
                await self._on_interaction(data)
        except Exception as exc:  # a task boundary: one bad event must not stop the rest
            log.error("discord: %s dropped (%s)", event, type(exc).__name__, exc_info=exc)

    def _bot_id(self) -> str:
        user = self._client.user if self._client is not None else None
        return str(user.id) if user is not None else ""

    async def _on_message(self, data: Mapping[str, object]) -> None:
        message = convert.parse_message(data)
        bot_id, publish = self._bot_id(), self._publish
        if message is None or publish is None or not convert.is_for_us(message, bot_id):
            return
        channel = await self._channel(message.channel_id) if message.guild_id else None
        attachments, notes = await self._files(message)
        inbound = convert.message_inbound(
            message,
            bot_id=bot_id,
            channel=channel,
            attachments=attachments,
            notes=notes,
            now=time.time(),
        )
        admission = await publish(inbound)
        log.debug("discord: message %s %s", inbound.event_id, admission.value)

    async def _on_interaction(self, data: Mapping[str, object]) -> None:
        interaction, publish = convert.parse_interaction(data), self._publish
        if interaction is None or publish is None:
            return
        # Discord wants an answer within 3 s: defer first, the reply is a follow-up.
        try:
            await self._post(
                f"/interactions/{interaction.id}/{interaction.token}/callback",
                {"type": convert.DEFERRED_RESPONSE},
                auth=False,
            )
        except PlatformError as exc:
            log.info("discord: deferring interaction %s failed (%s)", interaction.id, exc)
        self._interactions[interaction.id] = (interaction.token, time.monotonic())
        while len(self._interactions) > INTERACTIONS_KEPT:
            self._interactions.popitem(last=False)
        async with self._in_order:
            channel = await self._channel(interaction.channel_id) if interaction.guild_id else None
            inbound = convert.command_inbound(interaction, channel=channel, now=time.time())
            await _while_redis_is_away(functools.partial(publish, inbound))
        log.debug("discord: interaction %s published", inbound.event_id)

    async def _channel(self, channel_id: str) -> convert.ChannelInfo | None:
        cached = self._channels.get(channel_id)
        if cached is not None or self._client is None:
            return cached
        try:
            data = await self._client.http.get_channel(int(channel_id))
        except (discord.HTTPException, ValueError, *_NET_ERRORS) as exc:
            log.info("discord: channel lookup failed (%s); using the id", type(exc).__name__)
            return None
        info = convert.parse_channel(data if isinstance(data, Mapping) else {})
        self._channels[channel_id] = info
        while len(self._channels) > CHANNELS_KEPT:
            self._channels.popitem(last=False)
        return info

    async def _files(
        self, message: convert.DiscordMessage
    ) -> tuple[tuple[Attachment, ...], list[str]]:
        refs = convert.file_refs(message)
        if not refs or self._session is None:
            return (), []
        return await receive_files(
            self._session,
            refs,
            self._context.media,
            self._context.blobs,
            allowed_prefixes=convert.cdn_prefixes(self._settings.api_base),
        )

    # -- sending -----------------------------------------------------------------------

    def _interaction_token(self, reply_to: str) -> str:
        kept = self._interactions.get(reply_to)
        if kept is None or time.monotonic() - kept[1] > INTERACTION_TTL_S:
            return ""
        return kept[0]

    async def send(self, outbound: Outbound) -> None:
        token = self._interaction_token(outbound.reply_to)
        app = self._client.application_id if self._client is not None else None

        async def send_part(index: int, part: str) -> None:
            if token and app is not None:
                body = {"content": part, "allowed_mentions": {"parse": []}}
                await self._post(f"/webhooks/{app}/{token}", body, auth=False)
                return
            reply_to = outbound.reply_to if index == 0 else ""
            payload = convert.message_payload(
                part, convert.nonce(outbound.outbound_id, index), reply_to
            )
            await self._post(f"/channels/{outbound.conversation_id}/messages", payload)

        await send_parts(
            self._context.deliveries, outbound, convert.render(outbound.text), send_part
        )

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        await self._post(f"/channels/{thread_id or conversation_id}/typing", None)

    async def _post(self, path: str, body: object, *, auth: bool = True) -> None:
        """POST to the API; the path may hold an interaction token, so it is never logged."""
        headers = {"Authorization": f"Bot {self._token}"} if auth else {}
        what = path.split("/", 2)[1]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    self._api + path,
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as response,
            ):
                if response.status < 300:
                    return
                raw = await response.read()
                retry_after = response.headers.get("Retry-After")
        except _NET_ERRORS as exc:
            raise PlatformUnavailable(f"discord: {what} failed ({type(exc).__name__})") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        raise convert.send_error(
            response.status, answer if isinstance(answer, dict) else {}, retry_after
        )


def build(settings: DiscordSettings, context: ChannelContext) -> DiscordChannel:
    return DiscordChannel(settings, context)
