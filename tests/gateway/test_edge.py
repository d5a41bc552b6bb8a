"""The channels role's choices: which adapters run, when the webhook server starts, and
that a process with no platform enabled runs none."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from channels import registry
from gateway.bus import IN_STREAM
from gateway.commands import Command, CommandContext, default_registry
from gateway.edge import PLATFORMS, enabled, media_policy, menu, needs_webhooks, run_channels
from gateway.envelope import decode_inbound
from gateway.settings import ChannelsSettings, Settings
from tests.fakes.telegram import running_telegram
from tests.services import RedisProcess

REPO = Path(__file__).resolve().parents[2]


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


def test_the_operators_menu_has_every_command_and_everyones_leaves_theirs_out() -> None:
    registry_ = default_registry()
    registry_.add(Command("kill", "remove an agent", "/kill USER", _no_handler, admin_only=True))
    everyone = [name for name, _ in menu(registry_)]
    operators = [name for name, _ in menu(registry_, operators=True)]
    assert "kill" not in everyone and "help" in everyone
    assert operators == [*everyone, "kill"]


async def _no_handler(context: CommandContext, args: tuple[str, ...]) -> str:
    raise AssertionError("not run")


@pytest.mark.parametrize("name", PLATFORMS)
def test_every_platform_adapter_module_has_a_build_function(name: str) -> None:
    assert callable(getattr(importlib.import_module(registry.adapter_module(name)), "build", None))


def test_an_unknown_channel_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="unknown channel 'fax'"):
        registry.adapter_module("fax")


async def test_with_no_platform_enabled_the_role_returns_at_once(redis: aioredis.Redis) -> None:
    await run_channels(redis, Settings(), default_registry(), "c1")


async def test_the_channels_role_runs_alone_and_stops_cleanly(
    redis: aioredis.Redis, redis_server: RedisProcess
) -> None:
    """`stockade run channels` as its own process: Telegram's updates reach the shared
    Redis, and SIGTERM ends it with status 0."""
    async with running_telegram() as telegram:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCKADE_")}
        env |= {
            "PYTHONPATH": str(REPO),
            "STOCKADE_REDIS__URL": redis_server.url,
            "STOCKADE_CHANNELS__TELEGRAM__ENABLED": "true",
            "STOCKADE_CHANNELS__TELEGRAM__TOKEN": telegram.token,
            "STOCKADE_CHANNELS__TELEGRAM__API_BASE": telegram.api_base,
            "STOCKADE_CHANNELS__TELEGRAM__POLL_TIMEOUT_S": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", "channels",
            env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            telegram.add_update(telegram.message("hello from a lone channels role"))
            async with asyncio.timeout(30):
                while not await redis.xlen(IN_STREAM):
                    await asyncio.sleep(0.05)
            [(_, fields)] = await redis.xrange(IN_STREAM)
            assert decode_inbound(fields).text == "hello from a lone channels role"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert telegram.token not in err.decode()
