"""The vault store: encrypted at rest, authenticated per entry, shared safely between
processes, and silent about values and the key."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.errors import SecretNotFound, VaultCorrupt, VaultError
from gateway.vault import Vault
from tests.gateway.vault.conftest import assert_absent

REPO = Path(__file__).resolve().parents[3]


def edit(store: Path, change: object) -> None:
    """Rewrite the store's JSON in place, as an attacker with file access could."""
    data = json.loads(store.read_text())
    assert callable(change)
    change(data)
    store.write_text(json.dumps(data))


def test_a_value_comes_back_as_it_was_set(store: Path, key: bytes, canary: str) -> None:
    vault = Vault(store, key)
    vault.set("openai", f"  {canary}\n")
    assert vault.get("openai") == canary
    assert "openai" in vault
    assert "other" not in vault
    assert 42 not in vault


def test_unicode_and_multiline_values_round_trip(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    value = "-----BEGIN KEY-----\nclé 🔑\n-----END KEY-----"
    vault.set("pem", value)
    assert Vault(store, key).get("pem") == value


def test_the_file_holds_no_plaintext_and_no_key(store: Path, key: bytes, canary: str) -> None:
    vault = Vault(store, key)
    vault.set("openai", canary)
    vault.rotate("openai", canary + "-2")
    vault.set("other", canary)
    raw = store.read_bytes()
    assert_absent(canary, raw)
    assert_absent(key, raw)
    for leftover in store.parent.iterdir():
        assert_absent(canary, leftover.read_bytes())


def test_the_store_is_private_and_replaced_without_leftovers(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    vault.set("a", "1")
    vault.set("b", "2")
    vault.remove("a")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in store.parent.iterdir()) == ["secrets.json", "secrets.json.lock"]


def test_each_write_uses_a_fresh_nonce(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    vault.set("a", "same")
    first = json.loads(store.read_text())["entries"]["a"]
    vault.set("a", "same")
    second = json.loads(store.read_text())["entries"]["a"]
    vault.set("b", "same")
    third = json.loads(store.read_text())["entries"]["b"]
    assert len({first["nonce"], second["nonce"], third["nonce"]}) == 3
    assert len(base64.b64decode(first["nonce"])) == 12
    assert first["ciphertext"] != second["ciphertext"]


def test_the_wrong_key_names_the_entry_and_writes_nothing(
    store: Path, key: bytes, canary: str
) -> None:
    Vault(store, key).set("openai", canary)
    before = store.read_bytes()
    stranger = Vault(store, os.urandom(32))
    with pytest.raises(VaultCorrupt) as caught:
        stranger.get("openai")
    assert caught.value.entry == "openai"
    assert "'openai'" in str(caught.value)
    assert "master key does not match" in str(caught.value)
    with pytest.raises(VaultCorrupt, match="nothing was changed"):
        stranger.set("other", "x")
    assert store.read_bytes() == before
    assert Vault(store, key).get("openai") == canary


def test_a_tampered_ciphertext_fails_authentication(store: Path, key: bytes, canary: str) -> None:
    vault = Vault(store, key)
    vault.set("openai", canary)

    def flip(data: dict[str, dict[str, dict[str, str]]]) -> None:
        sealed = bytearray(base64.b64decode(data["entries"]["openai"]["ciphertext"]))
        sealed[0] ^= 1
        data["entries"]["openai"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()

    edit(store, flip)
    with pytest.raises(VaultCorrupt) as caught:
        vault.get("openai")
    assert caught.value.entry == "openai"
    assert "'openai' failed authentication" in str(caught.value)
    assert_absent(canary, str(caught.value))


def test_swapped_entries_fail_to_open(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    vault.set("alpha", "value-of-alpha")
    vault.set("beta", "value-of-beta")

    def swap(data: dict[str, dict[str, dict[str, str]]]) -> None:
        entries = data["entries"]
        for field in ("nonce", "ciphertext"):
            entries["alpha"][field], entries["beta"][field] = (
                entries["beta"][field],
                entries["alpha"][field],
            )

    edit(store, swap)
    for name in ("alpha", "beta"):
        with pytest.raises(VaultCorrupt) as caught:
            vault.get(name)
        assert caught.value.entry == name
        assert "value-of" not in str(caught.value)


def test_an_entry_renamed_in_the_file_fails_to_open(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    vault.set("cheap", "value")
    edit(store, lambda data: data["entries"].update(premium=data["entries"].pop("cheap")))
    with pytest.raises(VaultCorrupt, match="'premium'"):
        vault.get("premium")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "fields"),
        (b'{"version": 2, "key_check": {}, "entries": {}}', "format 2"),
        (b'{"version": 1, "entries": {}}', "fields"),
    ],
)
def test_a_malformed_store_is_reported(
    store: Path, key: bytes, content: bytes, problem: str
) -> None:
    store.parent.mkdir(parents=True)
    store.write_bytes(content)
    vault = Vault(store, key)
    for call in (lambda: vault.get("a"), vault.entries, lambda: vault.set("a", "b")):
        with pytest.raises(VaultCorrupt, match=problem):
            call()
    assert store.read_bytes() == content


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nonce", "AAAA"),
        ("nonce", 7),
        ("ciphertext", "not base64!"),
        ("created_at", "yesterday"),
        ("rotated_at", 12),
        ("extra", "x"),
    ],
)
def test_a_malformed_entry_is_reported_by_name(
    store: Path, key: bytes, field: str, value: object
) -> None:
    vault = Vault(store, key)
    vault.set("openai", "sk-1")
    edit(store, lambda data: data["entries"]["openai"].__setitem__(field, value))
    with pytest.raises(VaultCorrupt, match="'openai'") as caught:
        vault.get("openai")
    assert caught.value.entry == "openai"


def test_missing_entries_raise_secret_not_found(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    with pytest.raises(SecretNotFound, match="stockade vault set openai") as caught:
        vault.get("openai")
    assert caught.value.name == "openai"
    with pytest.raises(SecretNotFound):
        vault.rotate("openai", "x")
    with pytest.raises(SecretNotFound):
        vault.remove("openai")
    assert not store.exists() or vault.entries() == []


def test_invalid_names_and_values_are_refused(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    for call in (
        lambda: vault.set("bad name", "x"),
        lambda: vault.get("../etc"),
        lambda: vault.remove(""),
        lambda: vault.set("ok", "   "),
        lambda: vault.rotate("ok", "x" * 20_000),
    ):
        with pytest.raises(VaultError):
            call()
    assert not store.exists()


def test_set_replaces_and_rotate_records_when(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    start = datetime.now(UTC) - timedelta(seconds=1)
    vault.set("openai", "one")
    [entry] = vault.entries()
    assert entry.name == "openai"
    assert entry.rotated_at is None
    assert start <= entry.created_at <= datetime.now(UTC)
    vault.rotate("openai", "two")
    [rotated] = vault.entries()
    assert rotated.created_at == entry.created_at
    assert rotated.rotated_at is not None
    assert vault.get("openai") == "two"
    vault.set("openai", "three")
    assert vault.get("openai") == "three"
    assert vault.entries()[0].created_at == entry.created_at


def test_entries_are_sorted_and_carry_no_value(store: Path, key: bytes, canary: str) -> None:
    vault = Vault(store, key)
    for name in ("zeta", "alpha", "Mid"):
        vault.set(name, canary)
    entries = vault.entries()
    assert [e.name for e in entries] == ["Mid", "alpha", "zeta"]
    assert_absent(canary, repr(entries))


def test_remove_deletes_only_that_entry(store: Path, key: bytes) -> None:
    vault = Vault(store, key)
    vault.set("a", "1")
    vault.set("b", "2")
    vault.remove("a")
    assert "a" not in vault
    assert vault.get("b") == "2"


def test_another_vault_object_sees_changes_without_restart(store: Path, key: bytes) -> None:
    writer, reader = Vault(store, key), Vault(store, key)
    with pytest.raises(SecretNotFound):
        reader.get("openai")
    writer.set("openai", "sk-old-aaaa")
    assert reader.get("openai") == "sk-old-aaaa"
    writer.rotate("openai", "sk-new-bbbb")  # same length: the file keeps its size
    assert reader.get("openai") == "sk-new-bbbb"
    writer.remove("openai")
    assert "openai" not in reader
    store.unlink()
    assert reader.entries() == []


def test_concurrent_threads_lose_no_write(store: Path, key: bytes) -> None:
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def write(worker: int) -> None:
        vault = Vault(store, key)
        barrier.wait()
        try:
            for n in range(15):
                vault.set(f"t{worker}-{n}", f"value-{worker}-{n}")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    vault = Vault(store, key)
    assert len(vault.entries()) == 8 * 15
    assert vault.get("t7-14") == "value-7-14"


_WRITER = """
import base64, sys, time
from pathlib import Path
from gateway.vault import Vault
store, key, go, worker = sys.argv[1:]
vault = Vault(Path(store), base64.b64decode(key))
go = Path(go)
(go.parent / f"ready-{worker}").touch()
while not go.exists():
    time.sleep(0.005)
for n in range(20):
    vault.set(f"p{worker}-{n}", f"value-{worker}-{n}")
"""


def test_concurrent_processes_lose_no_write(store: Path, key: bytes, tmp_path: Path) -> None:
    go = tmp_path / "go"
    encoded = base64.b64encode(key).decode()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(store), encoded, str(go), str(worker)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for worker in range(4)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < len(writers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all four are past their imports: their writes overlap
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0, 0]
    vault = Vault(store, key)
    assert len(vault.entries()) == 4 * 20
    assert vault.get("p3-19") == "value-3-19"


def test_repr_and_errors_carry_no_value_or_key(store: Path, key: bytes, canary: str) -> None:
    vault = Vault(store, key)
    vault.set("openai", canary)
    shown = [repr(vault), str(vault), f"{vault!r}"]
    assert str(store) in shown[0]
    messages: list[str] = []
    for call in (
        lambda: Vault(store, os.urandom(32)).get("openai"),
        lambda: vault.get("missing"),
        lambda: vault.set("openai", canary * 1_000),
        lambda: vault.set(canary * 3, "x"),
    ):
        with pytest.raises(VaultError) as caught:
            call()
        messages += [str(caught.value), repr(caught.value)]
    for text in shown + messages:
        assert_absent(canary, text)
        assert_absent(key, text)
    assert not hasattr(vault, "__dict__")
