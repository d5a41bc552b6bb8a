"""Telegram through python-telegram-bot's `Bot`, with our own update loop.

PTB's `Application`/`Updater` confirm an update to Telegram as soon as they fetch
it; here the next `getUpdates` offset (or the webhook's 200) is given only after
`publish` returned, so an update is on the bus before Telegram forgets it.
The bot token is part of every API and file URL: no URL, and no PTB error text
unscrubbed, ever reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aiohttp
from telegram import Bot, BotCommand, LinkPreviewOptions, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, Conflict, NetworkError, RetryAfter, TelegramError, TimedOut

from channels._shared.chunking import TELEGRAM_LIMIT, chunk_telegram_html
from channels._shared.markdown import to_telegram_html
from channels._shared.media import receive_files, refusal_note
from channels._shared.outbox import send_parts
from channels._shared.webhooks import Webhook, WebhookRequest, WebhookResponse
from channels.base import Admission, Capabilities, ChannelContext, Publish
from channels.telegram import convert
from channels.telegram._request import AiohttpRequest
from gateway.envelope import Outbound
from gateway.errors import (
    ConfigError,
    PlatformError,
    PlatformUnavailable,
    RateLimited,
    StockadeError,
)
from gateway.settings import TelegramSettings

T = TypeVar("T")

SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
REPLY_MEMORY: Final = 10_000
"""Update ids remembered with their message id, so a reply can quote the message.
Replies sent by another process than the one that received find none and are sent
unquoted; `allow_sending_without_reply` makes a stale one harmless too."""
NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)

log = logging.getLogger("stockade.channels.telegram")


@dataclasses.dataclass(frozen=True)
class _Redact(logging.Filter):
    """Replaces the token in records of the HTTP and PTB loggers, which log request URLs.

    The message is rendered here, once: PTB logs a reply dict it later rewrites to
    hold the file URL, which a handler formatting afterwards would show. Equal for
    equal tokens, so a logger never gets the same one twice.
    """

    secret: str

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage().replace(self.secret, "<token>"), ()
        return True


_URL_LOGGERS: Final = ("httpx", "telegram.Bot", "telegram.request.BaseRequest")


def _seconds(value: object) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value) if isinstance(value, int | float) else 1.0


def platform_error(exc: TelegramError, token: str) -> PlatformError:
    """Our error for PTB's; its text without the token (PTB quotes it in InvalidToken)."""
    if isinstance(exc, RetryAfter):
        return RateLimited(_seconds(exc.retry_after), convert.NAME)
    text = f"telegram: {type(exc).__name__}: {exc.message.replace(token, '<token>')}"
    # BadRequest is a NetworkError in PTB's tree, but a refusal, not an outage.
    if isinstance(exc, TimedOut | NetworkError) and not isinstance(exc, BadRequest):
        return PlatformUnavailable(text)
    return PlatformError(text)


class TelegramChannel:
    def __init__(self, settings: TelegramSettings, context: ChannelContext, token: str) -> None:
        # PTB 22 warns on each read of a time period unless opted in to timedeltas
        # (even inside RetryAfter's constructor); the code below reads timedeltas.
        os.environ.setdefault("PTB_TIMEDELTA", "true")
        self._settings = settings
        self._context = context
        self._token = token
        for name in _URL_LOGGERS:  # before the Bot, which logs its URL when made
            logging.getLogger(name).addFilter(_Redact(token))
        api_base = settings.api_base.rstrip("/")
        self._file_prefix = f"{api_base}/file/bot"
        self._poller = AiohttpRequest()
        self._updates_url = f"{api_base}/bot{token}/getUpdates"
        self._bot = Bot(
            token,
            base_url=f"{api_base}/bot",
            base_file_url=self._file_prefix,
            request=AiohttpRequest(connections=16),
            get_updates_request=self._poller,  # so the Bot opens and closes it
        )
        self._identity: convert.BotIdentity | None = None
        self._ready_lock = asyncio.Lock()
        self._messages: OrderedDict[str, int] = OrderedDict()

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except TelegramError as exc:
            raise platform_error(exc, self._token) from None

    async def _ready(self) -> convert.BotIdentity:
        async with self._ready_lock:
            if self._identity is None:
                await self._call(self._bot.initialize())  # getMe
                me = self._bot.bot
                username = self._settings.bot_username.lstrip("@") or me.username or ""
                self._identity = convert.BotIdentity(id=me.id, username=username)
            return self._identity

    async def _until_done(self, step: Callable[[], Awaitable[T]], what: str) -> T:
        """`step()` until it succeeds: Telegram unreachable at start is waited out."""
        backoff, failed = BACKOFF_MIN_S, False
        while True:
            try:
                result = await step()
            except PlatformError as exc:
                if not failed:
                    log.warning("telegram: %s failed (%s); retrying until it works", what, exc)
                    failed = True
                wait = exc.retry_after_s if isinstance(exc, RateLimited) else backoff
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if failed:
                log.info("telegram: %s works again", what)
            return result

    async def receive(self, publish: Publish) -> None:
        identity = await self._until_done(self._ready, "getMe")
        commands = [BotCommand(n.lstrip("/"), d) for n, d in self._context.commands]
        if commands:
            try:
                await self._call(self._bot.set_my_commands(commands))
            except PlatformError as exc:
                log.warning("telegram: the command menu was not set (%s)", exc)
        try:
            async with aiohttp.ClientSession() as session:
                admit = functools.partial(self._admit, publish, session, identity)
                if self._settings.mode == "webhook":
                    await self._serve_webhook(admit)
                else:
                    await self._poll(admit)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections; a later call opens them again."""
        self._identity = None
        await self._bot.shutdown()

    async def _poll(self, admit: Callable[[convert.Update], Awaitable[Admission | None]]) -> None:
        await self._until_done(lambda: self._call(self._bot.delete_webhook()), "deleteWebhook")
        offset: int | None = None
        backoff, outage = BACKOFF_MIN_S, False
        while True:
            try:
                raw = await self._poller.updates(
                    self._updates_url,
                    offset=offset,
                    timeout_s=self._settings.poll_timeout_s,
                    allowed=convert.ALLOWED_UPDATES,
                )
            except RetryAfter as exc:
                await asyncio.sleep(_seconds(exc.retry_after))
                continue
            except TelegramError as exc:
                if not outage:
                    log.warning("telegram: getUpdates failed (%s); retrying", type(exc).__name__)
                    outage = True
                if isinstance(exc, Conflict):  # a webhook is set, or another poller runs
                    try:
                        await self._bot.delete_webhook()
                    except TelegramError as again:
                        log.debug("telegram: deleteWebhook failed (%s)", type(again).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if outage:
                log.info("telegram: getUpdates works again")
                backoff, outage = BACKOFF_MIN_S, False
            for data in raw:
                try:
                    update = convert.parse_update(data)
                except convert.WireError as exc:
                    log.warning("telegram: skipped an update that is not one (%s)", exc)
                    update_id = data.get("update_id") if isinstance(data, dict) else None
                    if isinstance(update_id, int) and not isinstance(update_id, bool):
                        offset = max(offset or 0, update_id + 1)
                    continue
                try:
                    await admit(update)
                except StockadeError as exc:
                    # Not confirmed: Telegram hands this update out again.
                    log.warning(
                        "telegram: update %d not published (%s); fetching it again",
                        update.update_id,
                        type(exc).__name__,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    break
                offset = max(offset or 0, update.update_id + 1)

    async def _serve_webhook(
        self, admit: Callable[[convert.Update], Awaitable[Admission | None]]
    ) -> None:
        webhooks = self._context.webhooks
        secret_token = self._settings.secret_token
        if webhooks is None or secret_token is None:
            raise ConfigError("telegram", "mode", "webhook mode needs a webhook server and secret")
        secret = secret_token.get_secret_value().encode()
        path = self._settings.webhook_path

        def verify(request: WebhookRequest) -> bool:
            given = request.headers.get(SECRET_HEADER)
            if given is None:
                return False
            return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret)

        async def handle(request: WebhookRequest) -> WebhookResponse:
            try:
                update = convert.parse_update(json.loads(request.body))
            except (ValueError, RecursionError) as exc:  # WireError is a ValueError
                log.warning(
                    "telegram webhook: not an update (%s); answered 400", type(exc).__name__
                )
                return WebhookResponse(status=400, body=b"not an update")
            await admit(update)  # a failure answers 500: Telegram delivers it again
            return WebhookResponse(status=200)

        webhooks.mount(Webhook(path=path, verify=verify, handle=handle, name=convert.NAME))
        try:
            url = webhooks.public_url(path)
            await self._until_done(
                lambda: self._call(
                    self._bot.set_webhook(
                        url=url,
                        secret_token=secret.decode(),
                        allowed_updates=convert.ALLOWED_UPDATES,
                    )
                ),
                "setWebhook",
            )
            await asyncio.Event().wait()  # until cancelled
        finally:
            webhooks.unmount(path)

    async def _admit(
        self,
        publish: Publish,
        session: aiohttp.ClientSession,
        identity: convert.BotIdentity,
        update: convert.Update,
    ) -> Admission | None:
        """Publish one update's message; None when it is nothing for the agent."""
        inbound = convert.to_inbound(update, identity, time.time())
        if inbound is None or update.message is None:
            return None
        if update.message.files:
            refs, notes = [], []
            for info in update.message.files:
                url = ""
                if info.size is None or info.size <= self._context.media.max_bytes:
                    try:
                        url = (await self._call(self._bot.get_file(info.file_id))).file_path or ""
                    except PlatformError as exc:
                        log.info("telegram: a file was not resolved (%s)", type(exc).__name__)
                        notes.append(
                            refusal_note(convert.file_ref(info, ""), "Telegram did not provide it")
                        )
                        continue
                refs.append(convert.file_ref(info, url))
            attachments, refused = await receive_files(
                session,
                refs,
                self._context.media,
                self._context.blobs,
                # A directory prefix: ".../file/bot" would not admit ".../file/bot<token>/...".
                allowed_prefixes=(f"{self._file_prefix}{self._token}/",),
            )
            inbound = convert.with_files(inbound, attachments, notes + refused)
        admission = await publish(inbound)
        self._messages[inbound.event_id] = update.message.message_id
        while len(self._messages) > REPLY_MEMORY:
            self._messages.popitem(last=False)
        return admission

    async def send(self, outbound: Outbound) -> None:
        try:
            chat = convert.parse_id(outbound.conversation_id, "conversation id")
            thread = (
                convert.parse_id(outbound.thread_id, "thread id") if outbound.thread_id else None
            )
        except ValueError as exc:
            raise PlatformError(f"telegram: {exc}") from None
        await self._ready()
        quoted = self._messages.get(outbound.reply_to) if outbound.reply_to else None
        parts = chunk_telegram_html(to_telegram_html(outbound.text), TELEGRAM_LIMIT)

        async def send_part(index: int, part: str) -> None:
            reply = (
                ReplyParameters(message_id=quoted, allow_sending_without_reply=True)
                if index == 0 and quoted is not None
                else None
            )
            await self._send_part(chat, thread, part, reply)

        await send_parts(self._context.deliveries, outbound, parts, send_part)

    async def _send_part(
        self, chat: int, thread: int | None, part: str, reply: ReplyParameters | None
    ) -> None:
        send = functools.partial(
            self._bot.send_message,
            chat_id=chat,
            message_thread_id=thread,
            reply_parameters=reply,
            link_preview_options=NO_PREVIEW,
        )
        try:
            await send(text=part, parse_mode="HTML")
            return
        except BadRequest as exc:
            if "can't parse entities" not in exc.message.lower():
                raise platform_error(exc, self._token) from None
        except TelegramError as exc:
            raise platform_error(exc, self._token) from None
        # The rendering is meant to be valid; if Telegram disagrees, the words still go out.
        log.warning("telegram: a reply part was refused as HTML; sent as plain text")
        await self._call(send(text=convert.html_to_text(part)))

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        try:
            chat = convert.parse_id(conversation_id, "conversation id")
            thread = convert.parse_id(thread_id, "thread id") if thread_id else None
        except ValueError as exc:
            raise PlatformError(f"telegram: {exc}") from None
        await self._ready()
        await self._call(
            self._bot.send_chat_action(
                chat_id=chat, action=ChatAction.TYPING, message_thread_id=thread
            )
        )


def build(settings: TelegramSettings, context: ChannelContext) -> TelegramChannel:
    if settings.token is None:
        raise ConfigError("telegram", "token", "required")
    if settings.mode == "webhook" and (context.webhooks is None or settings.secret_token is None):
        raise ConfigError(
            "telegram", "mode", "webhook mode needs a webhook server and secret_token"
        )
    return TelegramChannel(settings, context, settings.token.get_secret_value())
