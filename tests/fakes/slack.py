"""A wire-level fake of Slack on 127.0.0.1: the Web API, private files and Socket Mode.

The Web API lives under `/api/` (auth.test, chat.postMessage, users.info,
conversations.info, apps.connections.open), files under `/files/` (bot token
required), and the Socket Mode WebSocket at `/link`. Tests inject Socket Mode
envelopes, or post signed Events API requests to a webhook URL, and read back what
the adapter sent and when it acknowledged. The control API is plain Python methods.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.fakes._serve import serving

BOT_USER_ID: Final = "U0BOT"
BOT_ID: Final = "B0BOT"
TEAM_ID: Final = "T0FAKE"
MAX_TEXT: Final = 40_000
"""Slack truncates longer texts; the fake refuses them, so an adapter that sends one fails."""


@dataclass(frozen=True)
class Posted:
    """One chat.postMessage the fake accepted."""

    channel: str
    text: str
    thread_ts: str
    mrkdwn: bool | None
    ts: str


@dataclass(frozen=True)
class Ack:
    """One Socket Mode acknowledgement, with the monotonic time it arrived."""

    envelope_id: str
    payload: Mapping[str, Any] | None
    at: float


def escape(text: str) -> str:
    """Text as Slack puts it on the wire: &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def event_callback(event: Mapping[str, Any], event_id: str) -> dict[str, Any]:
    """An Events API callback body around `event`."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": "A0FAKE",
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [
            {
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
    }


def message_event(
    text: str,
    *,
    user: str,
    channel: str,
    ts: str,
    kind: str = "message",
    channel_type: str = "im",
    thread_ts: str = "",
    subtype: str = "",
    files: list[dict[str, Any]] | None = None,
    bot_id: str = "",
    username: str = "",
) -> dict[str, Any]:
    """A `message` (or, with kind="app_mention", a mention) event; `text` already on the wire.

    An empty `user` leaves the field out, as in a "bot_message" from an integration."""
    event: dict[str, Any] = {
        "type": kind,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if kind == "message":
        event["channel_type"] = channel_type
    if thread_ts:
        event["thread_ts"] = thread_ts
    if subtype:
        event["subtype"] = subtype
    if files:
        event["files"] = files
    if user:
        event["user"] = user
    if bot_id:
        event["bot_id"] = bot_id
    if username:
        event["username"] = username
    return event


def slash_command(
    command: str, text: str, *, user: str, channel: str, trigger_id: str, channel_name: str = ""
) -> dict[str, str]:
    """A slash command payload (form fields over HTTP, an object over Socket Mode)."""
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": channel_name or ("directmessage" if channel.startswith("D") else channel),
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": "A0FAKE",
        "response_url": "https://hooks.slack.invalid/commands/1",
        "trigger_id": trigger_id,
    }


def signed_request(
    body: bytes, content_type: str, *, secret: str, timestamp: int | None = None
) -> dict[str, str]:
    """Headers Slack would send with `body`, signed with `secret` at `timestamp` (now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
    }


async def post_webhook(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, bytes]:
    """POST to a webhook the test itself started; (status, body). With `session`, on
    its kept-alive connections, as Slack's own client does."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError("tests post only to servers on 127.0.0.1")
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await post_webhook(url, body, headers, own)
    async with session.post(url, data=body, headers=dict(headers)) as response:
        return response.status, await response.read()


async def wait_mounted(url: str, timeout_s: float = 5.0) -> None:
    """Until `url` is mounted on a webhook server: an unsigned probe gets 403, not 404."""
    if urlsplit(url).hostname != "127.0.0.1":
        raise ValueError("tests probe only servers on 127.0.0.1")
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as response:
                if response.status != 404:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} was not mounted within {timeout_s} s")
            await asyncio.sleep(0.02)


@dataclass
class FakeSlack:
    """The fake; `url` is "http://127.0.0.1:PORT" once started."""

    bot_token: str = "xoxb-fake-bot-token"
    app_token: str = "xapp-fake-app-token"
    url: str = ""
    users: dict[str, str] = field(default_factory=dict)
    """User id → display name, for users.info."""
    channels: dict[str, str] = field(default_factory=dict)
    """Channel id → name, for conversations.info."""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    """Path under /files/ → (bytes, content type)."""
    posted: list[Posted] = field(default_factory=list)
    post_attempts: list[float] = field(default_factory=list)
    """Monotonic time of every chat.postMessage, accepted or not."""
    refused: int = 0
    """chat.postMessage calls refused for breaking a limit (too long, no text)."""
    acks: list[Ack] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)
    """The one-time tickets of the Socket Mode URLs apps.connections.open gave out."""
    calls: list[str] = field(default_factory=list)
    """Web API methods called, in order."""
    stalled: set[str] = field(default_factory=set)
    """Web API methods that never answer (a hung Slack)."""
    outage_calls: int = 0
    """This many Web API calls from now are answered 503, as in a Slack outage."""
    fail_lookups: bool = False
    """users.info and conversations.info answer HTTP 500."""
    on_ack: Callable[[Ack], Awaitable[None]] | None = None
    """Awaited as each ack arrives, before it is recorded: lets a test look at the
    world at the moment of acknowledgement."""
    _throttles: deque[float] = field(default_factory=deque)
    _failures: deque[int] = field(default_factory=deque)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/"

    @property
    def files_base(self) -> str:
        return f"{self.url}/files/"

    # -- control -----------------------------------------------------------------------

    def add_file(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Host a file; returns the `files` entry an event carries for it."""
        ident = f"F{len(self.files) + 1:06d}"
        path = f"{TEAM_ID}-{ident}/{name}"
        self.files[path] = (data, content_type)
        return {
            "id": ident,
            "name": name,
            "title": name,
            "mimetype": content_type,
            "size": len(data),
            "url_private": self.files_base + path,
            "url_private_download": self.files_base + f"{TEAM_ID}-{ident}/download/{name}",
        }

    def throttle_next_send(self, retry_after_s: float) -> None:
        """The next chat.postMessage answers 429 with `Retry-After: retry_after_s`."""
        self._throttles.append(retry_after_s)

    def fail_next_send(self, status: int = 503) -> None:
        self._failures.append(status)

    def next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    async def wait_connected(self, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: bool(self._sockets))

    async def send_envelope(
        self, kind: str, payload: Mapping[str, Any], *, retry_attempt: int = 0
    ) -> str:
        """Push a Socket Mode envelope ("events_api", "slash_commands") to the open
        connection; returns its envelope_id."""
        await self.wait_connected()
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": dict(payload),
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_for_ack(self, envelope_id: str, timeout_s: float = 5.0) -> Ack:
        def found() -> Ack | None:
            return next((a for a in self.acks if a.envelope_id == envelope_id), None)

        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        ack = found()
        assert ack is not None
        return ack

    async def wait_for_posts(self, count: int, timeout_s: float = 5.0) -> list[Posted]:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.posted) >= count)
        return list(self.posted)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the Web API -------------------------------------------------------------------

    @staticmethod
    async def _args(request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(await request.post())
        return args

    @staticmethod
    def _token(request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token if scheme == "Bearer" else ""

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if self.outage_calls > 0:
            self.outage_calls -= 1
            return web.json_response({"ok": False, "error": "fatal_error"}, status=503)
        self.calls.append(method)
        args = await self._args(request)
        token = self._token(request) or str(args.get("token", ""))
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "apps.connections.open": self._connections_open,
        }.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        if method in self.stalled:
            await asyncio.sleep(30)  # a Slack that does not answer; the test ends first
        return await handler(args)

    async def _auth_test(self, args: dict[str, Any]) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "url": "https://fake.slack.invalid/",
                "team": "Fake",
                "user": "stockade",
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "is_enterprise_install": False,
            }
        )

    async def _post_message(self, args: dict[str, Any]) -> web.Response:
        self.post_attempts.append(time.monotonic())
        if self._throttles:
            wait = self._throttles.popleft()
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": f"{wait:g}"},
            )
        if self._failures:
            return web.json_response(
                {"ok": False, "error": "fatal_error"}, status=self._failures.popleft()
            )
        text = args.get("text")
        channel = args.get("channel")
        if not isinstance(channel, str) or not channel:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not isinstance(text, str) or not text:
            self.refused += 1
            return web.json_response({"ok": False, "error": "no_text"})
        if len(text) > MAX_TEXT:
            self.refused += 1
            return web.json_response({"ok": False, "error": "msg_too_long"})
        ts = self.next_ts()
        thread_ts = args.get("thread_ts")
        mrkdwn = args.get("mrkdwn")
        self.posted.append(
            Posted(
                channel=channel,
                text=text,
                thread_ts=thread_ts if isinstance(thread_ts, str) else "",
                mrkdwn=mrkdwn if isinstance(mrkdwn, bool) else None,
                ts=ts,
            )
        )
        await self._notify()
        message = {"type": "message", "text": text, "bot_id": BOT_ID, "user": BOT_USER_ID, "ts": ts}
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})

    async def _users_info(self, args: dict[str, Any]) -> web.Response:
        if self.fail_lookups:
            return web.json_response({"ok": False, "error": "fatal_error"}, status=500)
        user = str(args.get("user", ""))
        name = self.users.get(user)
        if name is None:
            return web.json_response({"ok": False, "error": "user_not_found"})
        profile = {"display_name": name, "real_name": name}
        return web.json_response(
            {
                "ok": True,
                "user": {"id": user, "name": user.lower(), "real_name": name, "profile": profile},
            }
        )

    async def _conversations_info(self, args: dict[str, Any]) -> web.Response:
        if self.fail_lookups:
            return web.json_response({"ok": False, "error": "fatal_error"}, status=500)
        channel = str(args.get("channel", ""))
        name = self.channels.get(channel)
        if name is None:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        return web.json_response(
            {"ok": True, "channel": {"id": channel, "name": name, "is_channel": True}}
        )

    async def _connections_open(self, args: dict[str, Any]) -> web.Response:
        # As Slack's: the URL carries a one-time ticket and the app id in its query.
        ticket = f"ticket-{uuid.uuid4().hex}"
        self.tickets.append(ticket)
        link = self.url.replace("http", "ws", 1) + f"/link?ticket={ticket}&app_id=A0FAKE"
        return web.json_response({"ok": True, "url": link})

    # -- files and Socket Mode ---------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        if self._token(request) != self.bot_token:
            return web.Response(status=403, text="not authorised")
        path = request.match_info["tail"].replace("/download/", "/", 1)
        found = self.files.get(path)
        if found is None:
            return web.Response(status=404, text="no such file")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets) + 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A0FAKE"},
                }
            )
        )
        self._sockets.append(ws)
        await self._notify()
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if isinstance(message, dict) and "envelope_id" in message:
                    ack = Ack(message["envelope_id"], message.get("payload"), time.monotonic())
                    if self.on_ack is not None:
                        await self.on_ack(ack)
                    self.acks.append(ack)
                    await self._notify()
        finally:
            self._sockets.remove(ws)
        return ws

    async def close_sockets(self) -> None:
        for ws in list(self._sockets):
            await ws.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/files/{tail:.*}", self._file)
        app.router.add_get("/link", self._link)
        return app


@asynccontextmanager
async def running_fake_slack(
    bot_token: str = "xoxb-fake-bot-token", app_token: str = "xapp-fake-app-token"
) -> AsyncIterator[FakeSlack]:
    """A started fake on an OS-chosen port of 127.0.0.1, accepting these tokens."""
    fake = FakeSlack(bot_token=bot_token, app_token=app_token)
    async with serving(fake.app()) as fake.url:
        try:
            yield fake
        finally:
            await fake.close_sockets()
