"""A wire-level fake of Discord on 127.0.0.1: REST under `/api/v10`, the gateway at `/gw`.

The gateway plays Discord's script: HELLO, IDENTIFY (token and the message-content
intent checked), READY with a `resume_gateway_url` back at the fake, heartbeat ACKs,
dispatches with sequence numbers, and RESUME (op 6) replaying what came after the
client's last sequence. Frames are plain JSON text (discord.py decompresses only
binary frames). REST answers carry exactly `Content-Type: application/json`: discord.py
parses nothing else as JSON. Attachments are served under `/attachments/`.
The control API is plain Python methods.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import WSMsgType, web

from tests.fakes._serve import serving

BOT_ID: Final = "900000000000000001"
APP_ID: Final = "900000000000000002"
MAX_TEXT: Final = 2_000
MESSAGE_CONTENT_INTENT: Final = 1 << 15
NONCE_WINDOW_S: Final = 300.0
GATEWAY_RESUMED: Final = 4000
"""The close code `drop_connection` uses: one discord.py answers with a RESUME."""


@dataclass(frozen=True)
class SentMessage:
    """One message the fake accepted on a channel, or as an interaction follow-up."""

    channel_id: str
    content: str
    id: str
    nonce: str = ""
    reply_to: str = ""
    interaction_token: str = ""


@dataclass(frozen=True)
class Callback:
    interaction_id: str
    type: int
    delay_s: float
    """Seconds between the dispatch of the interaction and its callback."""


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def user(user_id: str, name: str, *, bot: bool = False, global_name: str = "") -> dict[str, Any]:
    return {
        "id": user_id,
        "username": name.lower().replace(" ", "_")[:32] or user_id,
        "discriminator": "0",
        "global_name": global_name or None,
        "avatar": None,
        "bot": bot,
    }


BOT_USER: Final = user(BOT_ID, "stockade", bot=True)


@dataclass
class FakeDiscord:
    """The fake; `url` is "http://127.0.0.1:PORT" once started."""

    token: str = "fake-discord-bot-token"
    url: str = ""
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Channel id → channel object, for `GET /channels/{id}`."""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    sent: list[SentMessage] = field(default_factory=list)
    send_attempts: list[float] = field(default_factory=list)
    refused: int = 0
    typing: list[str] = field(default_factory=list)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """"global" or a guild id → the commands registered there."""
    callbacks: list[Callback] = field(default_factory=list)
    identifies: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    session_id: str = ""
    outage_calls: int = 0
    """This many REST calls from now are answered 503, as in a Discord outage (503, not
    500 or 502: discord.py retries those itself, sleeping seconds between tries)."""
    _events: list[tuple[int, str]] = field(default_factory=list)
    """Every dispatch of the session: (seq, frame), for RESUME."""
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _ws: web.WebSocketResponse | None = None
    _live: bool = False
    """The connection is identified or resumed: new dispatches go out at once."""
    _throttles: deque[float] = field(default_factory=deque)
    _failures: deque[int] = field(default_factory=deque)
    _nonces: dict[str, tuple[SentMessage, float]] = field(default_factory=dict)
    _dispatched_at: dict[str, float] = field(default_factory=dict)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"{self.url.replace('http://', 'ws://')}/gw"

    # -- control -----------------------------------------------------------------------

    def snowflake(self) -> str:
        return str(1_100_000_000_000_000_000 + next(self._ids))

    def add_file(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Host a file; returns the attachment object a message carries for it."""
        ident = self.snowflake()
        self.files[f"{ident}/{name}"] = (data, content_type)
        url = f"{self.url}/attachments/{ident}/{name}"
        return {
            "id": ident,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def add_channel(self, channel_id: str, name: str, *, guild_id: str, kind: int = 0) -> None:
        self.channels[channel_id] = {
            "id": channel_id,
            "type": kind,
            "name": name,
            "guild_id": guild_id,
            "position": 0,
            "permission_overwrites": [],
        }

    def throttle_next_send(self, retry_after_s: float) -> None:
        """The next message or follow-up POST answers 429 asking for this wait."""
        self._throttles.append(retry_after_s)

    def fail_next_send(self, status: int = 503) -> None:
        self._failures.append(status)

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: self._live)

    async def wait_for(self, condition: Any, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(condition)

    async def message_create(
        self,
        content: str,
        *,
        author: dict[str, Any],
        channel_id: str,
        guild_id: str = "",
        member_nick: str = "",
        mentions: list[dict[str, Any]] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        referenced: dict[str, Any] | None = None,
        message_id: str = "",
        webhook_id: str = "",
    ) -> str:
        """Dispatch a MESSAGE_CREATE (held for RESUME while disconnected); its id."""
        ident = message_id or self.snowflake()
        data: dict[str, Any] = {
            "id": ident,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": "2025-01-01T00:00:00.000000+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 19 if referenced else 0,
        }
        if guild_id:
            data["guild_id"] = guild_id
            data["member"] = {
                "nick": member_nick or None,
                "roles": [],
                "joined_at": None,
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        if referenced:
            data["referenced_message"] = referenced
            data["message_reference"] = {"message_id": referenced["id"], "channel_id": channel_id}
        if webhook_id:
            data["webhook_id"] = webhook_id
        await self.dispatch("MESSAGE_CREATE", data)
        return ident

    async def interaction_create(
        self,
        command: str,
        args: str = "",
        *,
        author: dict[str, Any],
        channel_id: str,
        guild_id: str = "",
        member_flags: bool = True,
    ) -> tuple[str, str]:
        """Dispatch a slash command; its (interaction id, token). `member_flags=False`
        leaves `member.flags` out of a guild interaction, which discord.py cannot parse."""
        ident, token = self.snowflake(), f"itoken-{uuid.uuid4().hex}"
        options = [{"type": 3, "name": "args", "value": args}] if args else []
        data: dict[str, Any] = {
            "id": ident,
            "application_id": APP_ID,
            "type": 2,
            "token": token,
            "version": 1,
            "channel_id": channel_id,
            "data": {"id": self.snowflake(), "name": command, "type": 1, "options": options},
            "locale": "en-US",
            "app_permissions": "0",
            "attachment_size_limit": 8_388_608,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": 0 if guild_id else 1,
        }
        if guild_id:
            data["guild_id"] = guild_id
            data["member"] = {
                "user": author,
                "nick": None,
                "roles": [],
                "permissions": "0",
                "joined_at": "2025-01-01T00:00:00.000000+00:00",
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
            if not member_flags:
                del data["member"]["flags"]
        else:
            data["user"] = author
        self._dispatched_at[ident] = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", data)
        return ident, token

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        seq = next(self._seq)
        frame = json.dumps({"op": 0, "t": event, "s": seq, "d": data})
        self._events.append((seq, frame))
        if self._live and self._ws is not None and not self._ws.closed:
            await self._ws.send_str(frame)
        return seq

    async def redispatch(self, seq_of_event: int) -> None:
        """The same dispatch again, under a new sequence number (a platform redelivery)."""
        frame = json.loads(dict(self._events)[seq_of_event])
        await self.dispatch(frame["t"], frame["d"])

    def seq_of(self, event_id: str) -> int:
        for seq, frame in self._events:
            if json.loads(frame)["d"].get("id") == event_id:
                return seq
        raise KeyError(event_id)

    async def drop_connection(self) -> None:
        """Close the gateway connection as Discord does when it wants a resume."""
        self._live = False
        if self._ws is not None:
            await self._ws.close(code=GATEWAY_RESUMED)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the gateway -------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41_250}}))
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            op, data = frame.get("op"), frame.get("d")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identify(ws, data)
            elif op == 6:
                await self._resume(ws, data)
        if self._ws is ws:
            self._live = False
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await ws.close(code=4004)  # authentication failed
            return
        if not int(data.get("intents", 0)) & MESSAGE_CONTENT_INTENT:
            await ws.close(code=4014)  # disallowed intents
            return
        self.session_id = uuid.uuid4().hex
        ready = {
            "v": 10,
            "user": BOT_USER,
            "guilds": [],
            "session_id": self.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": APP_ID, "flags": 0},
        }
        seq = next(self._seq)
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": seq, "d": ready}))
        self._live = True
        await self._notify()

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.resumes.append(data)
        if data.get("token") != self.token or data.get("session_id") != self.session_id:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        after = int(data.get("seq") or 0)
        for seq, frame in list(self._events):
            if seq > after:
                await ws.send_str(frame)
        await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": next(self._seq), "d": {}}))
        self._live = True
        await self._notify()

    # -- REST --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _me(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return _json(BOT_USER)

    async def _application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": APP_ID,
                "name": "stockade",
                "icon": None,
                "description": "",
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": user("900000000000000003", "owner"),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self.channels.get(request.match_info["channel"])
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        return _json(channel)

    def _throttled(self) -> web.Response | None:
        self.send_attempts.append(time.monotonic())
        if self._throttles:
            wait = self._throttles.popleft()
            return _json(
                {"message": "You are being rate limited.", "retry_after": wait, "global": False},
                429,
                {
                    "Retry-After": str(max(1, round(wait))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{wait:g}",
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                    "Via": "1.1 google",
                },
            )
        if self._failures:
            return _json({"message": "Server error", "code": 0}, self._failures.popleft())
        return None

    def _too_long(self, content: object) -> web.Response | None:
        if isinstance(content, str) and content and len(content) <= MAX_TEXT:
            return None
        self.refused += 1
        return _json(
            {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": "Must be 2000 or fewer in length.",
                            }
                        ]
                    }
                },
            },
            400,
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        refusal = self._throttled()
        if refusal is not None:
            return refusal
        body = await request.json()
        refusal = self._too_long(body.get("content"))
        if refusal is not None:
            return refusal
        channel = request.match_info["channel"]
        nonce = str(body.get("nonce") or "")
        now = time.monotonic()
        if nonce and body.get("enforce_nonce"):
            earlier = self._nonces.get(f"{channel}:{nonce}")
            if earlier is not None and now - earlier[1] < NONCE_WINDOW_S:
                return _json(self._message_json(earlier[0]))
        reference = body.get("message_reference") or {}
        sent = SentMessage(
            channel_id=channel,
            content=body["content"],
            id=self.snowflake(),
            nonce=nonce,
            reply_to=str(reference.get("message_id") or ""),
        )
        if nonce:
            self._nonces[f"{channel}:{nonce}"] = (sent, now)
        self.sent.append(sent)
        await self._notify()
        return _json(self._message_json(sent))

    def _message_json(self, sent: SentMessage) -> dict[str, Any]:
        return {
            "id": sent.id,
            "channel_id": sent.channel_id,
            "author": BOT_USER,
            "content": sent.content,
            "nonce": sent.nonce or None,
            "timestamp": "2025-01-01T00:00:00.000000+00:00",
            "type": 0,
        }

    async def _typing(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        self.typing.append(request.match_info["channel"])
        await self._notify()
        return web.Response(status=204)

    async def _put_commands(self, request: web.Request) -> web.Response:
        if not self._authorized(request) or request.match_info["app"] != APP_ID:
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        where = request.match_info.get("guild", "global")
        commands = await request.json()
        self.commands[where] = commands
        await self._notify()
        answer = [{**c, "id": self.snowflake(), "application_id": APP_ID} for c in commands]
        return _json(answer)

    async def _callback(self, request: web.Request) -> web.Response:
        ident = request.match_info["interaction"]
        body = await request.json()
        dispatched = self._dispatched_at.get(ident)
        delay = time.monotonic() - dispatched if dispatched is not None else float("inf")
        self.callbacks.append(Callback(ident, int(body.get("type", 0)), delay))
        await self._notify()
        return web.Response(status=204)

    async def _followup(self, request: web.Request) -> web.Response:
        if request.match_info["app"] != APP_ID:
            return _json({"message": "Unknown Webhook", "code": 10015}, 404)
        refusal = self._throttled()
        if refusal is not None:
            return refusal
        body = await request.json()
        refusal = self._too_long(body.get("content"))
        if refusal is not None:
            return refusal
        sent = SentMessage(
            channel_id="",
            content=body["content"],
            id=self.snowflake(),
            interaction_token=request.match_info["token"],
        )
        self.sent.append(sent)
        await self._notify()
        return _json(self._message_json(sent))

    async def _attachment(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["path"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], headers={"Content-Type": found[1]})

    @web.middleware
    async def _outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.outage_calls > 0 and request.path.startswith("/api/"):
            self.outage_calls -= 1
            return _json({"message": "Service Unavailable", "code": 0}, 503)
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._outage])
        api = "/api/v10"
        app.router.add_get("/gw", self._gateway)
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._application)
        app.router.add_get(f"{api}/channels/{{channel}}", self._get_channel)
        app.router.add_post(f"{api}/channels/{{channel}}/messages", self._create_message)
        app.router.add_post(f"{api}/channels/{{channel}}/typing", self._typing)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._put_commands)
        app.router.add_put(
            f"{api}/applications/{{app}}/guilds/{{guild}}/commands", self._put_commands
        )
        app.router.add_post(
            f"{api}/interactions/{{interaction}}/{{token}}/callback", self._callback
        )
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_get("/attachments/{path:.+}", self._attachment)
        return app


@asynccontextmanager
async def running_fake_discord(token: str = "fake-discord-bot-token") -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord(token=token)
    async with serving(fake.app()) as url:
        fake.url = url
        try:
            yield fake
        finally:
            if fake._ws is not None:
                await fake._ws.close()
