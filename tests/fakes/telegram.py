"""A fake Telegram Bot API on 127.0.0.1 that python-telegram-bot talks to as to the real one.

It answers `POST /bot{token}/{method}` (form-encoded or multipart; lists and objects
as JSON strings inside fields) with `{"ok": true, "result": ...}`, and failures by
HTTP status with a `description` (401 for a wrong token, 429 with
`parameters.retry_after`), as PTB's request layer expects. It enforces what Telegram
enforces on a sent message: non-empty, well-formed HTML when `parse_mode=HTML`, and
at most 4096 UTF-16 code units of text after entity parsing. Files registered with
`add_file` are served under `/file/bot{token}/{path}`.

Updates are queued for `getUpdates` (which long-polls and drops those below the
offset, as confirmation) until `setWebhook`; from then on each one is POSTed to the
webhook URL with the secret header, and the status the bot answered is recorded.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from tests.fakes._serve import serving

TOKEN: Final = "123456789:AAFakeTokenForTestsOnly_abcdefghij"
BOT_ID: Final = 123456789
BOT_USERNAME: Final = "stockade_bot"
WEBHOOK_CONNECTIONS: Final = 40
"""Telegram's default `max_connections` for a webhook: updates in flight at once."""
MAX_TEXT: Final = 4096
SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"

_ALLOWED_TAGS: Final = frozenset(
    (
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    )
)
_HTML: Final = re.compile(
    r"<(?P<close>/)?(?P<tag>[A-Za-z][A-Za-z0-9-]*)(?P<attrs>\s[^<>]*)?>"
    r"|&(?P<entity>#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]*);"
    r"|<"
)
_NAMED: Final = frozenset(("lt", "gt", "amp", "quot"))


class CantParse(ValueError):
    """HTML Telegram would refuse."""


def parse_html(text: str) -> str:
    """The text Telegram shows for `text` in parse_mode HTML; `CantParse` where it refuses."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for match in _HTML.finditer(text):
        out.append(text[pos : match.start()])
        pos = match.end()
        if match["tag"] is not None:
            tag = match["tag"].lower()
            if tag not in _ALLOWED_TAGS:
                raise CantParse(f'Unsupported start tag "{tag}" at byte offset {match.start()}')
            if match["close"]:
                if not stack or stack[-1] != tag:
                    raise CantParse(f"Unexpected end tag at byte offset {match.start()}")
                stack.pop()
            else:
                stack.append(tag)
        elif match["entity"] is not None:
            entity = match["entity"]
            if not entity.startswith("#") and entity.lower() not in _NAMED:
                raise CantParse(f"Unsupported HTML entity at byte offset {match.start()}")
            out.append(html.unescape(match[0]))
        else:
            raise CantParse(f"Unexpected < at byte offset {match.start()}")
    out.append(text[pos:])
    if stack:
        raise CantParse(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# -- payload builders ---------------------------------------------------------------------


def user(
    user_id: int = 1001,
    first_name: str = "Ada",
    last_name: str = "Lovelace",
    username: str = "ada",
    *,
    is_bot: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": first_name}
    if last_name:
        data["last_name"] = last_name
    if username:
        data["username"] = username
    return data


def bot_user() -> dict[str, Any]:
    return user(BOT_ID, "Stockade", "", BOT_USERNAME, is_bot=True)


def private_chat(sender: dict[str, Any]) -> dict[str, Any]:
    return {"id": sender["id"], "type": "private", "first_name": sender.get("first_name", "")}


def group_chat(
    chat_id: int = -1001234567890, title: str = "Engines", *, forum: bool = False
) -> dict[str, Any]:
    chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
    if forum:
        chat["is_forum"] = True
    return chat


def mention_entities(text: str, handle: str = f"@{BOT_USERNAME}") -> list[dict[str, Any]]:
    """A "mention" entity for each `handle` in `text`, with UTF-16 offsets."""
    entities = []
    start = text.find(handle)
    while start >= 0:
        entities.append(
            {"type": "mention", "offset": utf16_units(text[:start]), "length": utf16_units(handle)}
        )
        start = text.find(handle, start + len(handle))
    return entities


def document(
    file_id: str, file_name: str, mime_type: str = "text/plain", size: int = 0
) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "file_unique_id": f"u-{file_id}",
        "file_name": file_name,
        "mime_type": mime_type,
        "file_size": size,
    }


def photo(file_id: str, size: int = 0) -> list[dict[str, Any]]:
    """Three resolutions; only the largest carries `file_id`."""
    return [
        {
            "file_id": f"{file_id}-s",
            "file_unique_id": "ps",
            "width": 90,
            "height": 60,
            "file_size": 10,
        },
        {
            "file_id": f"{file_id}-m",
            "file_unique_id": "pm",
            "width": 320,
            "height": 213,
            "file_size": 100,
        },
        {
            "file_id": file_id,
            "file_unique_id": "pl",
            "width": 1280,
            "height": 853,
            "file_size": size,
        },
    ]


def voice(file_id: str, size: int = 0) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "file_unique_id": f"u-{file_id}",
        "duration": 2,
        "mime_type": "audio/ogg",
        "file_size": size,
    }


# -- the fake -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentMessage:
    chat_id: str
    text: str
    parse_mode: str
    message_thread_id: str
    reply_parameters: dict[str, Any] | None
    link_preview_options: dict[str, Any] | None
    message_id: int


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    path: str
    content_type: str


@dataclass
class FakeTelegram:
    """The fake Bot API; `api_base` is what the adapter's settings take once started."""

    token: str = TOKEN
    api_base: str = ""
    sent: list[SentMessage] = field(default_factory=list)
    refused: int = 0
    """sendMessage calls refused for breaking Telegram's rules (length, markup, empty)."""
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """Every API call, method and form fields, oldest first."""
    offsets: list[int | None] = field(default_factory=list)
    """The offset of every getUpdates, in order."""
    actions: list[tuple[str, str, str]] = field(default_factory=list)
    """(chat_id, action, message_thread_id) of each sendChatAction."""
    commands: list[list[dict[str, str]]] = field(default_factory=list)
    """The default menu, each time it was set."""
    chat_commands: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """The menu of one chat (scope "chat"), by chat id."""
    unknown_chats: set[str] = field(default_factory=set)
    """Chat ids Telegram answers "chat not found" for, as for a user who never wrote."""
    outage_calls: int = 0
    """This many API calls from now are answered 502, as in a Telegram outage."""
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_statuses: list[int] = field(default_factory=list)
    on_sent: Callable[[SentMessage], None] | None = None
    """Called with each message as it is sent: benches time the replies with it."""
    updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Every update ever added, by id."""
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _again: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(500_000))
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _files: dict[str, StoredFile] = field(default_factory=dict)
    _throttle: list[float] = field(default_factory=list)
    _chats: dict[str, dict[str, Any]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[int]] = field(default_factory=set)

    # -- control API ------------------------------------------------------------------

    def message(
        self,
        text: str = "",
        *,
        sender: dict[str, Any] | None = None,
        chat: dict[str, Any] | None = None,
        entities: list[dict[str, Any]] | None = None,
        caption: str = "",
        reply_to: dict[str, Any] | None = None,
        thread_id: int | None = None,
        **media: Any,
    ) -> dict[str, Any]:
        """A message payload; `media` adds fields such as document=, photo=, voice=."""
        sender = sender if sender is not None else user()
        chat = chat if chat is not None else private_chat(sender)
        self._chats[str(chat["id"])] = chat
        data: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
        }
        if text:
            data["text"] = text
            if entities:
                data["entities"] = entities
        if caption:
            data["caption"] = caption
            if entities:
                data["caption_entities"] = entities
        if reply_to is not None:
            data["reply_to_message"] = reply_to
        if thread_id is not None:
            data["message_thread_id"] = thread_id
            data["is_topic_message"] = True
        data.update(media)
        return data

    def group_message(self, text: str, title: str = "Engines", **kwargs: Any) -> dict[str, Any]:
        """A message in a group that mentions the bot by @username."""
        mentioned = f"@{BOT_USERNAME} {text}"
        return self.message(
            mentioned, chat=group_chat(title=title), entities=mention_entities(mentioned), **kwargs
        )

    def make_update(self, message: dict[str, Any], kind: str = "message") -> dict[str, Any]:
        """A new update holding `message`, kept in `updates` but not delivered."""
        update_id = next(self._update_ids)
        update = {"update_id": update_id, kind: message}
        self.updates[update_id] = update
        return update

    def add_update(self, message: dict[str, Any], kind: str = "message") -> int:
        """Queue (or, with a webhook set, POST) an update holding `message`; its id."""
        update = self.make_update(message, kind)
        self._offer(update, again=False)
        return int(update["update_id"])

    async def webhook_set(self, timeout_s: float = 5.0) -> None:
        """Wait until the bot has called setWebhook."""
        deadline = time.monotonic() + timeout_s
        while not self.webhook_url:
            if time.monotonic() > deadline:
                raise TimeoutError("the bot never called setWebhook")
            await asyncio.sleep(0.01)

    def redeliver(self, update_id: int) -> None:
        """Deliver update `update_id` once more, as if its confirmation had been lost."""
        self._offer(self.updates[update_id], again=True)

    def _offer(self, update: dict[str, Any], *, again: bool) -> None:
        if self.webhook_url:
            task = asyncio.create_task(self.post_update(update))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        (self._again if again else self._pending).append(update)
        self._arrived.set()

    async def post_update(self, update: dict[str, Any], secret: str | None = None) -> int:
        """POST `update` to the webhook now (with `secret` instead of the real one if
        given, or with no header for secret=""); the HTTP status it got."""
        if self._session is None or not self.webhook_url:
            raise RuntimeError("no webhook is set")
        if urlsplit(self.webhook_url).hostname != "127.0.0.1":
            raise RuntimeError("the fake only calls webhooks on 127.0.0.1")
        secret = self.webhook_secret if secret is None else secret
        headers = {SECRET_HEADER: secret} if secret else {}
        async with self._session.post(self.webhook_url, json=update, headers=headers) as response:
            await response.read()
            self.webhook_statuses.append(response.status)
            return response.status

    async def settle(self) -> None:
        """Wait until every webhook POST in flight has been answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def throttle_next_send(self, retry_after_s: float) -> None:
        self._throttle.append(retry_after_s)

    def add_file(
        self, file_id: str, data: bytes, path: str, content_type: str = "application/octet-stream"
    ) -> None:
        self._files[file_id] = StoredFile(data, path, content_type)

    def called(self, method: str) -> list[dict[str, str]]:
        return [fields for name, fields in self.calls if name == method]

    # -- the Bot API ------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        if self.outage_calls > 0:
            self.outage_calls -= 1
            return _error(502, "Bad Gateway")
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        fields = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.calls.append((method, fields))
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        result: web.Response = await handler(fields)
        return result

    async def _m_getMe(self, fields: dict[str, str]) -> web.Response:
        return _ok({**bot_user(), "can_join_groups": True, "can_read_all_group_messages": False})

    async def _m_getUpdates(self, fields: dict[str, str]) -> web.Response:
        if self.webhook_url:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(fields["offset"]) if fields.get("offset") else None
        self.offsets.append(offset)
        deadline = time.monotonic() + float(fields.get("timeout") or 0)
        while True:
            self._arrived.clear()
            if offset is not None:  # an offset confirms every update below it
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
            if self._pending or self._again:
                ready = [*self._again, *self._pending]
                self._again.clear()
                return _ok(ready)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _ok([])
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def _m_setWebhook(self, fields: dict[str, str]) -> web.Response:
        self.webhook_url = fields["url"]
        self.webhook_secret = fields.get("secret_token", "")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return _ok(True)

    async def _m_deleteWebhook(self, fields: dict[str, str]) -> web.Response:
        self.webhook_url = self.webhook_secret = ""
        return _ok(True)

    async def _m_setMyCommands(self, fields: dict[str, str]) -> web.Response:
        commands = json.loads(fields["commands"])
        scope = _json(fields.get("scope")) or {"type": "default"}
        if scope.get("type") == "default":
            self.commands.append(commands)
            return _ok(True)
        chat_id = str(scope.get("chat_id", ""))
        if scope.get("type") != "chat" or not chat_id:
            return _error(400, "Bad Request: unsupported scope")
        if chat_id in self.unknown_chats:
            return _error(400, "Bad Request: chat not found")
        self.chat_commands[chat_id] = commands
        return _ok(True)

    async def _m_sendChatAction(self, fields: dict[str, str]) -> web.Response:
        self.actions.append(
            (fields["chat_id"], fields["action"], fields.get("message_thread_id", ""))
        )
        return _ok(True)

    async def _m_sendMessage(self, fields: dict[str, str]) -> web.Response:
        if self._throttle:
            wait = self._throttle.pop(0)
            return _error(429, f"Too Many Requests: retry after {wait:g}", {"retry_after": wait})
        text = fields.get("text", "")
        parse_mode = fields.get("parse_mode", "")
        try:
            shown = parse_html(text) if parse_mode.upper() == "HTML" else text
        except CantParse as exc:
            self.refused += 1
            return _error(400, f"Bad Request: can't parse entities: {exc}")
        if not shown.strip():
            self.refused += 1
            return _error(400, "Bad Request: message text is empty")
        if utf16_units(shown) > MAX_TEXT:
            self.refused += 1
            return _error(400, "Bad Request: message is too long")
        chat_id = fields["chat_id"]
        message_id = next(self._message_ids)
        self.sent.append(
            SentMessage(
                chat_id=chat_id,
                text=text,
                parse_mode=parse_mode,
                message_thread_id=fields.get("message_thread_id", ""),
                reply_parameters=_json(fields.get("reply_parameters")),
                link_preview_options=_json(fields.get("link_preview_options")),
                message_id=message_id,
            )
        )
        if self.on_sent is not None:
            self.on_sent(self.sent[-1])
        chat = self._chats.get(chat_id, {"id": int(chat_id), "type": "private"})
        return _ok(
            {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": chat,
                "from": bot_user(),
                "text": shown,
            }
        )

    async def _m_getFile(self, fields: dict[str, str]) -> web.Response:
        stored = self._files.get(fields.get("file_id", ""))
        if stored is None:
            return _error(400, "Bad Request: invalid file_id")
        return _ok(
            {
                "file_id": fields["file_id"],
                "file_unique_id": f"u-{fields['file_id']}",
                "file_size": len(stored.data),
                "file_path": stored.path,
            }
        )

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        for stored in self._files.values():
            if stored.path == path:
                return web.Response(body=stored.data, content_type=stored.content_type)
        return web.Response(status=404, text="Not Found")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        return app

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _json(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    parsed = json.loads(value)
    return parsed if isinstance(parsed, dict) else None


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


F = TypeVar("F", bound=FakeTelegram)


@asynccontextmanager
async def started_telegram(fake: F) -> AsyncIterator[F]:
    """`fake` started on an OS-chosen port of 127.0.0.1."""
    # Short: a long poll may still be waiting when the test ends.
    async with serving(fake.app(), shutdown_timeout=0.1) as fake.api_base:
        try:
            yield fake
        finally:
            await fake.aclose()


def running_telegram() -> AbstractAsyncContextManager[FakeTelegram]:
    """A started fake on an OS-chosen port of 127.0.0.1."""
    return started_telegram(FakeTelegram())
