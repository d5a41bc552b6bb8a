"""The channels role's choices: which adapters run, when the webhook server starts, and
that a process with no platform enabled runs none."""

from __future__ import annotations

import importlib

import pytest
import redis.asyncio as aioredis

from channels import registry
from gateway.commands import default_registry
from gateway.edge import PLATFORMS, enabled, media_policy, menu, needs_webhooks, run_channels
from gateway.settings import ChannelsSettings, Settings


def channels(**parts: dict[str, object]) -> ChannelsSettings:
    return ChannelsSettings.model_validate(
        {"webhooks": {"public_url": "https://bot.example.org"}, **parts}
    )


def test_only_enabled_platforms_run_and_the_console_is_not_one() -> None:
    assert enabled(ChannelsSettings()) == []
    both = channels(
        telegram={"enabled": True, "token": "t"},
        slack={"enabled": True, "bot_token": "b", "app_token": "a"},
    )
    assert enabled(both) == ["telegram", "slack"]


@pytest.mark.parametrize(
    ("parts", "needed"),
    [
        ({"telegram": {"enabled": True, "token": "t"}}, False),
        (
            {
                "telegram": {
                    "enabled": True,
                    "token": "t",
                    "mode": "webhook",
                    "secret_token": "s" * 32,
                }
            },
            True,
        ),
        ({"slack": {"enabled": True, "bot_token": "b", "app_token": "a"}}, False),
        (
            {"slack": {"enabled": True, "bot_token": "b", "mode": "http", "signing_secret": "s"}},
            True,
        ),
        (
            {
                "whatsapp": {
                    "enabled": True,
                    "account_sid": "AC1",
                    "auth_token": "t",
                    "from_number": "whatsapp:+1",
                }
            },
            True,
        ),
    ],
)
def test_the_webhook_server_starts_only_for_a_channel_that_takes_webhooks(
    parts: dict[str, dict[str, object]], needed: bool
) -> None:
    assert needs_webhooks(channels(**parts)) is needed


def test_the_media_policy_and_the_menu_come_from_settings_and_commands() -> None:
    policy = media_policy(channels(media={"max_bytes": 4096, "allowed_types": ["image/*"]}))
    assert (policy.max_bytes, policy.allowed_types) == (4096, ("image/*",))
    assert ("help", "list the commands") in menu(default_registry())


@pytest.mark.parametrize("name", PLATFORMS)
def test_every_platform_adapter_module_has_a_build_function(name: str) -> None:
    assert callable(getattr(importlib.import_module(registry.adapter_module(name)), "build", None))


def test_an_unknown_channel_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="unknown channel 'fax'"):
        registry.adapter_module("fax")


async def test_with_no_platform_enabled_the_role_returns_at_once(redis: aioredis.Redis) -> None:
    await run_channels(redis, Settings(), default_registry(), "c1")
