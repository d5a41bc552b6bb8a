"""Channel credentials written "vault:NAME": the reference rule, the settings' checks on the
values read, and reading them from a real vault, with nothing secret in any error."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import settings as settings_module
from gateway.errors import ConfigError, VaultError
from gateway.settings import CHANNEL_CREDENTIALS, ChannelsSettings, Settings
from gateway.vault import (
    Reference,
    Vault,
    entry_name,
    references,
    resolve_channel_credentials,
    substitute,
)
from tests.gateway.vault.conftest import assert_absent

HOOK_SECRET = "hook-secret_0123456789"
"""A Telegram secret_token that passes its rule: 16 to 256 of [A-Za-z0-9_-]."""
PUBLIC = {"webhooks": {"public_url": "https://bot.example.org"}}


def channels(**parts: dict[str, object]) -> ChannelsSettings:
    return ChannelsSettings.model_validate({**PUBLIC, **parts})


def telegram(**fields: object) -> dict[str, object]:
    return {"enabled": True, "token": "vault:telegram-token", **fields}


def settings_in(data_dir: Path, **parts: dict[str, object]) -> Settings:
    return Settings(data_dir=data_dir, channels=channels(**parts))


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stockade.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the reference rule (pure) -------------------------------------------------------------


def test_a_reference_names_its_entry_and_any_other_value_is_the_credential() -> None:
    assert entry_name("vault:telegram-token") == "telegram-token"
    assert entry_name("vault:a") == "a"
    assert entry_name("vault:Slack.bot_2") == "Slack.bot_2"
    assert entry_name("123:AAabc") is None
    assert entry_name("xoxb-1-2-vault:x") is None
    assert entry_name("") is None


@pytest.mark.parametrize(
    "value",
    ["vault:", "vault:-leading-dash", "vault:two words", "vault:a/b", "vault:" + "x" * 65],
    ids=["empty", "dash", "space", "slash", "too-long"],
)
def test_a_reference_to_an_invalid_name_is_refused_without_repeating_it(value: str) -> None:
    with pytest.raises(VaultError, match="must be followed by a vault entry name") as caught:
        entry_name(value)
    name = value.removeprefix("vault:")
    assert not name or name not in str(caught.value)


def test_a_bad_reference_in_the_file_stops_load_naming_the_file_and_the_key(
    tmp_path: Path,
) -> None:
    pasted = "xoxb-123-456-pasted token"
    path = write_toml(tmp_path, f'[channels.slack]\nbot_token = "vault:{pasted}"\n')
    with pytest.raises(ConfigError) as caught:
        settings_module.load(path)
    error = caught.value
    assert (error.source, error.key) == (str(path), "channels.slack.bot_token")
    assert "must be followed by a vault entry name of 1 to 64" in error.problem
    assert pasted not in str(error)
    assert "\n" not in str(error)


def test_a_bad_reference_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_CHANNELS__DISCORD__TOKEN", "vault:no spaces allowed")
    with pytest.raises(ConfigError) as caught:
        settings_module.load(write_toml(tmp_path, ""))
    assert caught.value.source == "environment STOCKADE_CHANNELS__DISCORD__TOKEN"
    assert caught.value.key == "channels.discord.token"
    assert "no spaces allowed" not in str(caught.value)


def test_a_reference_passes_the_checks_of_a_value_until_it_is_read() -> None:
    part = channels(telegram=telegram(mode="webhook", secret_token="vault:telegram-hook"))
    assert part.telegram.secret_token is not None
    with pytest.raises(ValueError, match="16 to 256"):
        channels(telegram=telegram(mode="webhook", secret_token="short"))


def test_the_references_of_enabled_channels_are_listed_and_plain_values_are_not() -> None:
    part = channels(
        telegram=telegram(mode="webhook", secret_token=HOOK_SECRET),
        slack={
            "enabled": True,
            "bot_token": "vault:slack-bot",
            "app_token": "vault:slack-app",
            "signing_secret": "vault:slack-signing",
        },
        discord={"enabled": False, "token": "vault:discord-token"},
        matrix={
            "enabled": True,
            "homeserver": "https://matrix.example.org",
            "user_id": "@bot:example.org",
            "password": "vault:matrix-password",
        },
    )
    assert references(part) == [
        Reference("telegram", "token", "telegram-token"),
        Reference("slack", "bot_token", "slack-bot"),
        Reference("slack", "app_token", "slack-app"),
        Reference("slack", "signing_secret", "slack-signing"),
        Reference("matrix", "password", "matrix-password"),
    ]
    assert Reference("slack", "bot_token", "x").key == "channels.slack.bot_token"


def test_every_secret_field_of_a_channel_is_a_listed_credential() -> None:
    secret_fields: dict[str, tuple[str, ...]] = {}
    for platform, field in ChannelsSettings.model_fields.items():
        model: Any = field.annotation
        secrets = tuple(
            name
            for name, inner in model.model_fields.items()
            if "SecretStr" in str(inner.annotation)
        )
        if secrets:
            secret_fields[platform] = secrets
    assert secret_fields == dict(CHANNEL_CREDENTIALS)


# -- substitution and the settings' checks (pure) -------------------------------------------


def test_values_replace_the_references_and_every_other_setting_stays() -> None:
    part = channels(
        telegram=telegram(mode="webhook", secret_token="vault:hook", poll_timeout_s=7),
        discord={"enabled": True, "token": "plain-discord-token"},
    )
    token = Reference("telegram", "token", "telegram-token")
    hook = Reference("telegram", "secret_token", "hook")
    resolved = substitute(part, {token: "123:AAvalue", hook: HOOK_SECRET}, "store")
    tg = resolved.telegram
    assert tg.token is not None and tg.token.get_secret_value() == "123:AAvalue"
    assert tg.secret_token is not None and tg.secret_token.get_secret_value() == HOOK_SECRET
    assert (tg.mode, tg.poll_timeout_s) == ("webhook", 7)
    assert resolved.discord == part.discord
    assert resolved.webhooks == part.webhooks
    assert references(resolved) == []


@pytest.mark.parametrize("bad", ["short", "has spaces in it, sixteen+", "x" * 257])
def test_a_value_from_the_vault_meets_the_rule_a_written_value_meets(bad: str) -> None:
    part = channels(telegram=telegram(mode="webhook", secret_token="vault:hook"))
    values = {
        Reference("telegram", "token", "telegram-token"): "123:AAvalue",
        Reference("telegram", "secret_token", "hook"): bad,
    }
    with pytest.raises(ConfigError) as caught:
        substitute(part, values, "/data/vault/secrets.json")
    error = caught.value
    assert (error.source, error.key) == (
        "/data/vault/secrets.json",
        "channels.telegram.secret_token",
    )
    assert "vault entry 'hook'" in error.problem
    assert "16 to 256 characters" in error.problem
    assert bad not in str(error) and "123:AAvalue" not in str(error)


def test_an_entry_that_holds_another_reference_is_refused() -> None:
    part = channels(discord={"enabled": True, "token": "vault:discord-token"})
    values = {Reference("discord", "token", "discord-token"): "vault:elsewhere"}
    with pytest.raises(ConfigError, match="holds another vault reference") as caught:
        substitute(part, values, "store")
    assert caught.value.key == "channels.discord.token"


# -- where a credential was written (pure, through load) ------------------------------------


def test_plain_credentials_in_the_file_are_reported_by_key_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path,
        '[channels.telegram]\ntoken = "123:AAfromfile"\nsecret_token = "vault:hook"\n'
        '[channels.slack]\nbot_token = "xoxb-from-file"\n',
    )
    monkeypatch.setenv("STOCKADE_CHANNELS__DISCORD__TOKEN", "from-the-environment")
    loaded = settings_module.load(path)
    assert loaded.plain_credentials_in_file() == (
        "channels.telegram.token",
        "channels.slack.bot_token",
    )
    assert settings_module.load(write_toml(tmp_path, "")).plain_credentials_in_file() == ()
    assert Settings().plain_credentials_in_file() == ()


# -- reading a real vault -------------------------------------------------------------------


def test_references_are_read_from_the_vault_the_mesh_uses(tmp_path: Path, canary: str) -> None:
    wanted = settings_in(
        tmp_path,
        telegram=telegram(mode="webhook", secret_token="vault:telegram-hook"),
        slack={"enabled": True, "bot_token": "xoxb-plain", "app_token": "vault:slack-app"},
    )
    vault = Vault.from_settings(wanted, create_key=True)
    vault.set("telegram-token", canary)
    vault.set("telegram-hook", HOOK_SECRET)
    vault.set("slack-app", "xapp-" + canary)
    resolved = resolve_channel_credentials(wanted)
    tg, slack = resolved.channels.telegram, resolved.channels.slack
    assert tg.token is not None and tg.token.get_secret_value() == canary
    assert tg.secret_token is not None and tg.secret_token.get_secret_value() == HOOK_SECRET
    assert slack.app_token is not None and slack.app_token.get_secret_value() == "xapp-" + canary
    assert slack.bot_token is not None and slack.bot_token.get_secret_value() == "xoxb-plain"
    assert resolved.data_dir == wanted.data_dir and resolved.vault == wanted.vault
    assert_absent(canary, repr(resolved), str(resolved), resolved.model_dump_json())


def test_the_master_key_from_vault_key_opens_it_as_for_the_mesh(
    tmp_path: Path, key: bytes, canary: str
) -> None:
    encoded = base64.b64encode(key).decode()
    wanted = Settings(
        data_dir=tmp_path,
        vault={"key": encoded, "store": str(tmp_path / "elsewhere.json")},
        channels=channels(discord={"enabled": True, "token": "vault:discord-token"}),
    )
    Vault(tmp_path / "elsewhere.json", key).set("discord-token", canary)
    token = resolve_channel_credentials(wanted).channels.discord.token
    assert token is not None and token.get_secret_value() == canary
    assert not (tmp_path / "vault").exists()


def test_with_no_reference_the_vault_is_not_opened(tmp_path: Path) -> None:
    plain = settings_in(tmp_path, telegram=telegram(token="123:AAplain"))
    disabled = settings_in(tmp_path, discord={"enabled": False, "token": "vault:absent"})
    assert resolve_channel_credentials(plain) is plain
    assert resolve_channel_credentials(disabled) is disabled
    assert not (tmp_path / "vault").exists()


def test_a_missing_entry_names_the_key_the_entry_and_how_to_add_it(
    tmp_path: Path, canary: str
) -> None:
    wanted = settings_in(tmp_path, telegram=telegram())
    Vault.from_settings(wanted, create_key=True).set("other", canary)
    with pytest.raises(ConfigError) as caught:
        resolve_channel_credentials(wanted)
    error = caught.value
    assert error.source == str(tmp_path / "vault" / "secrets.json")
    assert error.key == "channels.telegram.token"
    assert "no secret 'telegram-token' in the vault" in error.problem
    assert "stockade vault set telegram-token" in error.problem
    assert_absent(canary, str(error))


def _no_key_file(data_dir: Path) -> None:
    pass


def _open_key_file(data_dir: Path) -> None:
    (data_dir / "vault" / "master.key").chmod(0o644)


def _other_key_file(data_dir: Path) -> None:
    key_file = data_dir / "vault" / "master.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key_file.chmod(0o600)


def _garbled_key_file(data_dir: Path) -> None:
    (data_dir / "vault" / "master.key").write_text("not a key\n")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_no_key_file, "no vault master key"),
        (_open_key_file, "permissions 0644 are too open"),
        (_other_key_file, "the master key does not match"),
        (_garbled_key_file, "not a vault key"),
    ],
    ids=["missing", "too-open", "another-key", "garbled"],
)
def test_a_master_key_that_cannot_open_the_entry_is_one_line_naming_key_and_entry(
    tmp_path: Path, canary: str, spoil: Callable[[Path], None], reason: str
) -> None:
    wanted = settings_in(tmp_path, whatsapp={
        "enabled": True, "account_sid": "AC1", "from_number": "whatsapp:+1",
        "auth_token": "vault:twilio-auth",
    })  # fmt: skip
    if spoil is not _no_key_file:
        Vault.from_settings(wanted, create_key=True).set("twilio-auth", canary)
    spoil(tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve_channel_credentials(wanted)
    error = caught.value
    assert error.key == "channels.whatsapp.auth_token"
    assert "vault entry 'twilio-auth' cannot be read" in error.problem
    assert reason in error.problem
    assert "\n" not in str(error)
    assert_absent(canary, str(error), repr(error))
    assert error.__cause__ is None and error.__suppress_context__
