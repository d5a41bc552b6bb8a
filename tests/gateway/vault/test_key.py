"""The master key: made once with tight permissions, refused when others can read it,
and overridden by `vault.key` from the settings."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.errors import VaultKeyError
from gateway.settings import Settings, VaultSettings
from gateway.vault import Vault, load_key
from tests.gateway.vault.conftest import assert_absent


def write_key(path: Path, key: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(mode)


def test_a_missing_key_file_is_an_error_unless_asked_to_create(tmp_path: Path) -> None:
    key_file = tmp_path / "vault" / "master.key"
    with pytest.raises(VaultKeyError, match="stockade vault set"):
        load_key(VaultSettings(), key_file, create=False)
    assert not key_file.exists()


def test_a_created_key_file_is_private_and_read_back_the_same(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "vault" / "master.key"
    key = load_key(VaultSettings(), key_file, create=True)
    assert len(key) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert base64.b64decode(key_file.read_text().strip()) == key
    assert load_key(VaultSettings(), key_file, create=True) == key
    assert load_key(VaultSettings(), key_file, create=False) == key
    assert [p.name for p in key_file.parent.iterdir()] == ["master.key"]


def test_two_creators_at_once_end_with_one_key(tmp_path: Path) -> None:
    key_file = tmp_path / "vault" / "master.key"
    barrier = threading.Barrier(8)
    keys: list[bytes] = []

    def create() -> None:
        barrier.wait()
        keys.append(load_key(VaultSettings(), key_file, create=True))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8
    assert set(keys) == {base64.b64decode(key_file.read_text())}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_key_file_others_can_reach_is_refused(tmp_path: Path, key: bytes, mode: int) -> None:
    key_file = tmp_path / "master.key"
    write_key(key_file, key, mode)
    with pytest.raises(VaultKeyError) as caught:
        load_key(VaultSettings(), key_file, create=True)
    message = str(caught.value)
    assert f"{mode:04o}" in message
    assert f"chmod 600 {key_file}" in message
    assert_absent(key, message)
    assert stat.S_IMODE(key_file.stat().st_mode) == mode  # never "fixed" behind the user's back


def test_a_read_only_owner_key_file_is_fine(tmp_path: Path, key: bytes) -> None:
    key_file = tmp_path / "master.key"
    write_key(key_file, key, 0o400)
    assert load_key(VaultSettings(), key_file, create=False) == key


@pytest.mark.parametrize(
    "content", ["", "not base64 at all!", base64.b64encode(b"short").decode(), "\xff"]
)
def test_a_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(content, encoding="latin-1")
    key_file.chmod(0o600)
    with pytest.raises(VaultKeyError, match="not a vault key"):
        load_key(VaultSettings(), key_file, create=True)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.mkdir(mode=0o700)
    with pytest.raises(VaultKeyError):
        load_key(VaultSettings(), key_file, create=False)


def test_the_key_from_settings_wins_over_the_key_file(tmp_path: Path, key: bytes) -> None:
    key_file = tmp_path / "master.key"
    write_key(key_file, os.urandom(32), 0o644)  # wrong and too open: never even read
    configured = VaultSettings(key=SecretStr(base64.b64encode(key).decode()))
    assert load_key(configured, key_file, create=True) == key
    missing = tmp_path / "absent.key"
    assert load_key(configured, missing, create=True) == key
    assert not missing.exists()


def test_a_malformed_key_in_settings_is_refused_without_quoting_it() -> None:
    bad = "sk-canary-not-a-key"
    with pytest.raises(VaultKeyError) as caught:
        load_key(VaultSettings(key=SecretStr(bad)), Path("/nonexistent"), create=True)
    assert "vault.key" in str(caught.value)
    assert bad not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_the_key_from_the_environment_opens_the_vault(
    tmp_path: Path, key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_VAULT__KEY", base64.b64encode(key).decode())
    settings = Settings(data_dir=tmp_path)
    Vault.from_settings(settings, create_key=True).set("openai", "sk-1")
    assert not settings.vault_key_file().exists()
    assert Vault(settings.vault_store(), key).get("openai") == "sk-1"


def test_a_store_whose_key_file_was_lost_is_not_given_a_new_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    Vault.from_settings(settings, create_key=True).set("openai", "sk-1")
    settings.vault_key_file().unlink()
    with pytest.raises(VaultKeyError, match="missing"):
        Vault.from_settings(settings, create_key=True)
    assert not settings.vault_key_file().exists()
    with pytest.raises(VaultKeyError, match="no vault master key"):
        Vault.from_settings(settings)


def test_a_vault_refuses_a_key_of_the_wrong_size(store: Path) -> None:
    with pytest.raises(VaultKeyError, match="32 bytes"):
        Vault(store, os.urandom(16))
