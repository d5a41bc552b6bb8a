"""The channels role with credentials kept in the vault: a real vault file, the Telegram
fake (which answers only the right token), a real Redis; nothing secret in any log line."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis

from gateway import settings as settings_module
from gateway.bus import IN_STREAM
from gateway.commands import default_registry
from gateway.edge import run_channels
from gateway.envelope import Inbound, decode_inbound
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.vault import Vault
from tests.fakes.telegram import FakeTelegram, running_telegram
from tests.gateway.vault.conftest import assert_absent

HOOK_SECRET: Final = "hook-secret_from_the_vault_0123"
CANARY: Final = f"sk-canary-{secrets.token_hex(16)}"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STOCKADE_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with running_telegram() as server:
        yield server


def telegram_settings(data_dir: Path, fake: FakeTelegram, **telegram: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        channels={
            "webhooks": {"host": "127.0.0.1", "port": 0, "public_url": "https://bot.example.org"},
            "telegram": {
                "enabled": True,
                "token": "vault:telegram-token",
                "api_base": fake.api_base,
                "poll_timeout_s": 1,
                **telegram,
            },
        },
    )


@asynccontextmanager
async def channels_role(
    redis: aioredis.Redis, settings: Settings
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_channels(redis, settings, default_registry(), "channels-1"))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def first_inbound(redis: aioredis.Redis, role: asyncio.Task[None]) -> Inbound:
    deadline = time.monotonic() + 15
    while not await redis.xlen(IN_STREAM):
        if role.done():
            role.result()  # the role's own error, if it stopped
            raise AssertionError("the channels role ended")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing reached {IN_STREAM}")
        await asyncio.sleep(0.02)
    [(_, fields)] = await redis.xrange(IN_STREAM)
    return decode_inbound(fields)


async def until_called(fake: FakeTelegram, method: str) -> None:
    deadline = time.monotonic() + 15
    while method not in [called for called, _ in fake.calls]:
        if time.monotonic() > deadline:
            raise AssertionError(f"Telegram was never asked {method}")
        await asyncio.sleep(0.02)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])


async def test_telegram_starts_with_its_token_from_the_vault(
    redis: aioredis.Redis,
    fake: FakeTelegram,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = telegram_settings(tmp_path, fake)
    Vault.from_settings(settings, create_key=True).set("telegram-token", fake.token)
    async with channels_role(redis, settings) as role:
        fake.add_update(fake.message("hello by way of the vault"))
        envelope = await first_inbound(redis, role)
    assert envelope.text == "hello by way of the vault"
    assert "getMe" in [method for method, _ in fake.calls]
    assert_absent(fake.token, log_text(caplog))


async def test_telegram_is_told_the_webhook_secret_from_the_vault(
    redis: aioredis.Redis,
    fake: FakeTelegram,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = telegram_settings(tmp_path, fake, mode="webhook", secret_token="vault:telegram-hook")
    vault = Vault.from_settings(settings, create_key=True)
    vault.set("telegram-token", fake.token)
    vault.set("telegram-hook", HOOK_SECRET)
    async with channels_role(redis, settings):
        await fake.webhook_set(timeout_s=15)
    assert fake.webhook_url == "https://bot.example.org/telegram"
    assert fake.webhook_secret == HOOK_SECRET
    assert_absent(fake.token, log_text(caplog))
    assert_absent(HOOK_SECRET, log_text(caplog))


async def test_a_missing_entry_stops_the_role_before_any_adapter_is_built(
    redis: aioredis.Redis,
    fake: FakeTelegram,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = telegram_settings(tmp_path, fake, mode="webhook", secret_token="vault:absent-hook")
    vault = Vault.from_settings(settings, create_key=True)
    vault.set("telegram-token", CANARY)
    with pytest.raises(ConfigError) as caught:
        await run_channels(redis, settings, default_registry(), "channels-1")
    error = caught.value
    assert error.key == "channels.telegram.secret_token"
    assert "no secret 'absent-hook' in the vault" in str(error)
    assert fake.calls == []
    assert not (tmp_path / "channels").exists()
    assert_absent(CANARY, str(error), log_text(caplog))


async def test_a_value_from_the_vault_that_breaks_the_settings_rule_stops_the_role(
    redis: aioredis.Redis, fake: FakeTelegram, tmp_path: Path
) -> None:
    settings = telegram_settings(tmp_path, fake, mode="webhook", secret_token="vault:telegram-hook")
    vault = Vault.from_settings(settings, create_key=True)
    vault.set("telegram-token", fake.token)
    vault.set("telegram-hook", "not/a/valid/secret/token")
    with pytest.raises(ConfigError, match="16 to 256 characters") as caught:
        await run_channels(redis, settings, default_registry(), "channels-1")
    assert caught.value.key == "channels.telegram.secret_token"
    assert "vault entry 'telegram-hook'" in str(caught.value)
    assert "not/a/valid" not in str(caught.value)
    assert fake.calls == []


@pytest.mark.parametrize("written", ["file", "environment", "vault"])
async def test_only_a_plain_credential_in_the_file_is_warned_about_once_by_key(
    redis: aioredis.Redis,
    fake: FakeTelegram,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    written: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    lines = [
        f'data_dir = "{tmp_path}"',
        "[channels.telegram]",
        "enabled = true",
        f'api_base = "{fake.api_base}"',
        "poll_timeout_s = 1",
    ]
    if written == "file":
        lines.append(f'token = "{fake.token}"')
    elif written == "environment":
        monkeypatch.setenv("STOCKADE_CHANNELS__TELEGRAM__TOKEN", fake.token)
    else:
        lines.append('token = "vault:telegram-token"')
        Vault.from_settings(Settings(data_dir=tmp_path), create_key=True).set(
            "telegram-token", fake.token
        )
    path = tmp_path / "stockade.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = settings_module.load(path)
    async with channels_role(redis, settings):
        await until_called(fake, "getUpdates")
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "stockade.channels"
    ]
    if written == "file":
        [warning] = warnings
        assert "channels.telegram.token written out in the settings file" in warning
        assert "stockade vault set" in warning
    else:
        assert warnings == []
    assert_absent(fake.token, log_text(caplog))
