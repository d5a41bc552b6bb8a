"""The Discord adapter under the contract suite: the real adapter against `tests/fakes/discord`.

Events are gateway dispatches on the fake's WebSocket; `deliver` returns once the
dispatch went out on the identified connection. A redelivery is the same dispatch
again under a new sequence number, as after a resume that replays it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from pydantic import SecretStr

from channels.base import Channel, ChannelContext
from channels.discord.adapter import build
from gateway.settings import DiscordSettings
from tests.channels.contract import Event, OpenHarness, Sent
from tests.fakes.discord import BOT_USER, FakeDiscord, running_fake_discord, user

FILE_BYTES: Final = b"a small text file\n"
GUILD_ID: Final = "700000000000000001"
FEATURES: Final = frozenset(("redelivery", "rate_limit", "groups", "files"))


def group_channel(title: str) -> str:
    """A stable channel id for a group title."""
    return str(710_000_000_000_000_000 + zlib.crc32(title.encode()))


def dm_channel(sender_id: str) -> str:
    return str(720_000_000_000_000_000 + zlib.crc32(sender_id.encode()))


def sender_id(event: Event) -> str:
    """Discord ids are snowflakes: a non-numeric test id is mapped to a number."""
    return (
        event.sender_id if event.sender_id.isdigit() else str(zlib.crc32(event.sender_id.encode()))
    )


class DiscordHarness:
    name = "discord"
    max_text = 2_000
    features = FEATURES

    def __init__(self, fake: FakeDiscord, channel: Channel) -> None:
        self.fake = fake
        self.channel = channel

    def bold(self, word: str) -> str:
        return f"**{word}**"

    async def deliver(self, event: Event) -> str:
        await self.fake.wait_ready()
        author = user(sender_id(event), event.sender_name, global_name=event.sender_name)
        files = (
            [self.fake.add_file(event.file_name, FILE_BYTES, "text/plain")]
            if event.file_name
            else None
        )
        if event.group_title:
            channel = group_channel(event.group_title)
            self.fake.add_channel(channel, event.group_title, guild_id=GUILD_ID)
            return await self.fake.message_create(
                f"<@{BOT_USER['id']}> {event.text}",
                author=author,
                channel_id=channel,
                guild_id=GUILD_ID,
                mentions=[BOT_USER],
                attachments=files,
            )
        return await self.fake.message_create(
            event.text, author=author, channel_id=dm_channel(author["id"]), attachments=files
        )

    async def redeliver(self, event_id: str) -> None:
        await self.fake.redispatch(self.fake.seq_of(event_id))

    async def forged(self, event: Event) -> int:
        raise NotImplementedError("the gateway is a connection we open; nothing is signed")

    def throttle_next_send(self, retry_after_s: float) -> None:
        self.fake.throttle_next_send(retry_after_s)

    def sent(self) -> list[Sent]:
        return [Sent(s.channel_id, s.content) for s in self.fake.sent]

    def refused_sends(self) -> int:
        return self.fake.refused


def settings_for(fake: FakeDiscord, command_guilds: tuple[int, ...] = ()) -> DiscordSettings:
    return DiscordSettings(
        enabled=True,
        token=SecretStr(fake.token),
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        command_guilds=command_guilds,
    )


@asynccontextmanager
async def open_harness(context: ChannelContext) -> AsyncIterator[DiscordHarness]:
    async with running_fake_discord() as fake:
        yield DiscordHarness(fake, build(settings_for(fake), context))


_OPENS_A_HARNESS: OpenHarness = open_harness
