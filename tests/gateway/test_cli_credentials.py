"""`stockade up` and `stockade run channels` with channel credentials in the vault, as an
operator runs them: `stockade vault set`, then "vault:NAME" in the settings file."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis

from gateway.bus import IN_STREAM
from gateway.envelope import decode_inbound
from tests.fakes.telegram import running_telegram
from tests.gateway.vault.conftest import assert_absent, environment, stockade
from tests.services import RedisProcess

CANARY: Final = f"sk-canary-{secrets.token_hex(16)}"


def vault_set(data_dir: Path, name: str, value: str) -> None:
    result = stockade(data_dir, "vault", "set", name, stdin=value + "\n")
    assert result.returncode == 0, result.stderr


def settings_file(data_dir: Path, *lines: str) -> Path:
    path = data_dir / "stockade.toml"
    path.write_text("\n".join(["[channels.telegram]", "enabled = true", *lines]) + "\n")
    return path


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("entries", [(), ("other",)], ids=["no-master-key", "no-entry"])
def test_up_stops_before_starting_anything_when_the_vault_lacks_a_credential(
    tmp_path: Path, entries: tuple[str, ...]
) -> None:
    for name in entries:
        vault_set(tmp_path, name, CANARY)
    path = settings_file(tmp_path, 'token = "vault:telegram-token"')
    result = stockade(tmp_path, "--config", str(path), "up")
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"stockade: {tmp_path / 'vault' / 'secrets.json'}: ")
    assert "channels.telegram.token" in line and "'telegram-token'" in line
    assert ("no vault master key" if not entries else "stockade vault set telegram-token") in line
    assert not (tmp_path / "redis").exists()  # the private Redis was never started
    assert_absent(CANARY, result.stdout, result.stderr)


def test_up_stops_on_a_reference_to_an_invalid_name_without_repeating_it(tmp_path: Path) -> None:
    path = settings_file(tmp_path, f'token = "vault:{CANARY} pasted"')
    result = stockade(tmp_path, "--config", str(path), "up")
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith(f"stockade: {path}: channels.telegram.token: ")
    assert "must be followed by a vault entry name" in line
    assert_absent(CANARY, result.stdout, result.stderr)


def test_run_channels_stops_with_status_2_when_an_entry_is_missing(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    vault_set(tmp_path, "telegram-token", CANARY)
    path = settings_file(
        tmp_path,
        'token = "vault:telegram-token"',
        'mode = "webhook"',
        'secret_token = "vault:telegram-hook"',
        "[channels.webhooks]",
        'public_url = "https://bot.example.org"',
    )
    result = stockade(
        tmp_path, "--config", str(path), "run", "channels",
        env={"STOCKADE_REDIS__URL": redis_server.url},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert "channels.telegram.secret_token" in line
    assert "no secret 'telegram-hook' in the vault" in line
    assert_absent(CANARY, result.stdout, result.stderr)


async def test_run_channels_takes_the_token_vault_set_stored(
    tmp_path: Path, redis: aioredis.Redis, redis_server: RedisProcess
) -> None:
    async with running_telegram() as telegram:
        await asyncio.to_thread(vault_set, tmp_path, "telegram-token", telegram.token)
        path = settings_file(
            tmp_path,
            'token = "vault:telegram-token"',
            f'api_base = "{telegram.api_base}"',
            "poll_timeout_s = 1",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "--config", str(path), "-v", "run", "channels",
            env=environment(tmp_path, {"STOCKADE_REDIS__URL": redis_server.url}),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            telegram.add_update(telegram.message("hello, token from the vault"))
            async with asyncio.timeout(30):
                while not await redis.xlen(IN_STREAM):
                    await asyncio.sleep(0.05)
            [(_, fields)] = await redis.xrange(IN_STREAM)
            assert decode_inbound(fields).text == "hello, token from the vault"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "written out in the settings file" not in err.decode()
        assert_absent(telegram.token, err)
