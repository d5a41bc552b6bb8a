"""The Telegram adapter against the Bot API fake, as the contract suite sees a platform.

With a webhook server in the context the adapter runs in webhook mode (so forged
requests can be sent); without one it long-polls.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from pydantic import SecretStr

from channels._shared.chunking import TELEGRAM_LIMIT
from channels.base import ChannelContext
from channels.telegram.adapter import TelegramChannel, build
from gateway.settings import TelegramSettings
from tests.channels.contract import Event, Sent
from tests.fakes import telegram as tg
from tests.fakes.telegram import FakeTelegram, running_telegram

SECRET: Final = "contract-secret_0123456789"
FILE_BYTES: Final = b"a small text file\n"
POLL_TIMEOUT_S: Final = 2


def settings_for(fake: FakeTelegram, *, webhook: bool) -> TelegramSettings:
    return TelegramSettings(
        enabled=True,
        token=SecretStr(fake.token),
        api_base=fake.api_base,
        poll_timeout_s=POLL_TIMEOUT_S,
        mode="webhook" if webhook else "polling",
        secret_token=SecretStr(SECRET) if webhook else None,
    )


FEATURES: Final = frozenset(("redelivery", "rate_limit", "groups", "files", "signatures"))
"""What the contract suite may check: it always gives a webhook server (webhook mode)."""


class TelegramHarness:
    name = "telegram"
    max_text = TELEGRAM_LIMIT

    def __init__(self, fake: FakeTelegram, context: ChannelContext) -> None:
        self.fake = fake
        self.webhook = context.webhooks is not None
        self.features = frozenset(
            ("redelivery", "rate_limit", "groups", "files")
            + (("signatures",) if self.webhook else ())
        )
        self.settings = settings_for(fake, webhook=self.webhook)
        self.channel: TelegramChannel = build(self.settings, context)
        self._files = itertools.count(1)

    def bold(self, word: str) -> str:
        return f"<b>{word}</b>"

    def message(self, event: Event) -> dict[str, Any]:
        first, _, last = event.sender_name.partition(" ")
        sender_id = int(event.sender_id) if event.sender_id.isdigit() else 1001
        sender = tg.user(sender_id, first, last, "")
        text = f"@{tg.BOT_USERNAME} {event.text}" if event.group_title else event.text
        chat = tg.group_chat(title=event.group_title) if event.group_title else None
        entities = tg.mention_entities(text) if event.group_title else None
        if not event.file_name:
            return self.fake.message(text, sender=sender, chat=chat, entities=entities)
        file_id = f"doc-{next(self._files)}"
        self.fake.add_file(file_id, FILE_BYTES, f"documents/{file_id}.txt", "text/plain")
        return self.fake.message(
            sender=sender,
            chat=chat,
            entities=entities,
            caption=text,
            document=tg.document(file_id, event.file_name, "text/plain", len(FILE_BYTES)),
        )

    async def _post(self, update: dict[str, Any], secret: str | None = None) -> int:
        await self.fake.webhook_set()
        return await self.fake.post_update(update, secret)

    async def deliver(self, event: Event) -> str:
        if not self.webhook:
            return str(self.fake.add_update(self.message(event)))
        update = self.fake.make_update(self.message(event))
        status = await self._post(update)
        if status != 200:
            raise AssertionError(f"the adapter answered an update with {status}")
        return str(update["update_id"])

    async def redeliver(self, event_id: str) -> None:
        if not self.webhook:
            self.fake.redeliver(int(event_id))
            return
        status = await self._post(self.fake.updates[int(event_id)])
        if status != 200:
            raise AssertionError(f"the adapter answered a redelivery with {status}")

    async def forged(self, event: Event) -> int:
        return await self._post(
            self.fake.make_update(self.message(event)), "forged-secret_0123456789"
        )

    def throttle_next_send(self, retry_after_s: float) -> None:
        self.fake.throttle_next_send(retry_after_s)

    def sent(self) -> list[Sent]:
        return [
            Sent(conversation_id=m.chat_id, text=m.text, thread_id=m.message_thread_id)
            for m in self.fake.sent
        ]

    def refused_sends(self) -> int:
        return self.fake.refused


@asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[TelegramHarness]:
    async with running_telegram() as fake:
        yield TelegramHarness(fake, context)
