"""The channels role: every enabled platform adapter in this process, with what they share.

Reads the credentials written "vault:NAME" from the vault first, builds one
`ChannelContext` (blob store, media policy, delivery receipts, the shared webhook
server when a channel takes webhooks, the command menu) and runs each adapter with
`run_channel` until cancelled. One adapter failing to start stops the role with its
error: a half-started gateway would silently drop a platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from channels import registry
from channels._shared import MediaPolicy, RateLimiter, WebhookLimits, WebhookServer, run_channel
from channels.base import Channel, ChannelContext
from gateway.bus import Blobs, Bus, Deliveries, typing_cues
from gateway.commands import Registry
from gateway.heartbeat import stopped_consumers
from gateway.settings import ChannelsSettings, Settings
from gateway.vault import resolve_channel_credentials

log = logging.getLogger("stockade.channels")

PLATFORMS = ("telegram", "slack", "whatsapp", "discord", "matrix")
"""Channels a deployment enables in settings; the console runs from `stockade chat`."""


def enabled(settings: ChannelsSettings) -> list[str]:
    return [name for name in PLATFORMS if getattr(settings, name).enabled]


def needs_webhooks(settings: ChannelsSettings) -> bool:
    return (
        (settings.telegram.enabled and settings.telegram.mode == "webhook")
        or (settings.slack.enabled and settings.slack.mode == "http")
        or settings.whatsapp.enabled
    )


def media_policy(settings: ChannelsSettings) -> MediaPolicy:
    return MediaPolicy(
        max_bytes=settings.media.max_bytes, allowed_types=tuple(settings.media.allowed_types)
    )


def webhook_server(settings: ChannelsSettings) -> WebhookServer:
    hooks = settings.webhooks
    return WebhookServer(
        hooks.host,
        hooks.port,
        WebhookLimits(
            max_body_bytes=hooks.max_body_bytes,
            per_peer_per_s=hooks.per_peer_per_s,
            per_peer_burst=hooks.per_peer_burst,
            public_base_url=hooks.public_url,
            trust_forwarded_for=hooks.trust_forwarded_for,
        ),
    )


def menu(commands: Registry, *, operators: bool = False) -> tuple[tuple[str, str], ...]:
    """The commands a platform menu shows: everyone's, or every one for `operators`."""
    return tuple((c.name, c.summary) for c in commands if operators or not c.admin_only)


@contextlib.asynccontextmanager
async def _webhooks(settings: ChannelsSettings) -> AsyncIterator[WebhookServer | None]:
    if not needs_webhooks(settings):
        yield None
        return
    async with webhook_server(settings) as server:
        yield server


async def run_channels(
    client: aioredis.Redis, settings: Settings, commands: Registry, consumer: str
) -> None:
    """Run every enabled platform channel until cancelled; returns at once if none is."""
    names = enabled(settings.channels)
    if not names:
        log.info("no platform channel is enabled; talk to Stockade with `stockade chat`")
        return
    plain = settings.plain_credentials_in_file()
    if plain:
        log.warning(
            "%s written out in the settings file; keep credentials in the vault "
            '(`stockade vault set NAME`, then KEY = "vault:NAME") or in the environment',
            ", ".join(plain),
        )
    # Before any adapter is built: a credential the vault cannot give stops the role here.
    settings = resolve_channel_credentials(settings)
    # Takes over the replies a stopped channels process was sending.
    bus = Bus(client, settings.bus, gone=stopped_consumers(client))
    ingress = settings.channels.ingress
    async with _webhooks(settings.channels) as webhooks:
        context = ChannelContext(
            blobs=Blobs(client),
            media=media_policy(settings.channels),
            deliveries=Deliveries(client),
            webhooks=webhooks,
            commands=menu(commands),
            operator_commands=menu(commands, operators=True),
            operators={name: settings.access.of(name).admins for name in names},
            state_dir=settings.data_dir / "channels",
        )
        channels: list[Channel] = [
            registry.build(name, getattr(settings.channels, name), context) for name in names
        ]
        async with asyncio.TaskGroup() as tasks:
            for channel in channels:
                senders = RateLimiter(ingress.per_sender_per_s, ingress.per_sender_burst)
                tasks.create_task(
                    run_channel(
                        channel,
                        bus,
                        consumer,
                        senders=senders,
                        cues=typing_cues(client, channel.name),
                    ),
                    name=f"channel {channel.name}",
                )
            log.info("channels up: %s", ", ".join(names))
