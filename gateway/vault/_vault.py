"""`Vault`: get, set, rotate and remove secrets in one encrypted store file.

Synchronous on purpose: a read is a stat, a dict lookup and one AES-GCM decryption,
cheap enough for the mesh's event loop. Readers take no lock (the file is replaced
atomically); writers serialize on a lock file and re-read the store under it, so two
CLI writers never lose each other's change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag

from gateway.errors import SecretNotFound, VaultCorrupt, VaultKeyError
from gateway.settings import Settings
from gateway.vault._crypto import Cipher
from gateway.vault._files import Stamp, exclusive_lock, read_stamped, replace_atomically, stamp
from gateway.vault._format import EMPTY, Document, Record, SecretEntry, parse, render
from gateway.vault._key import load_key
from gateway.vault._rules import check_name, clean_value

_Change = Callable[[dict[str, Record]], None]


class Vault:
    """The secrets in `store`, opened with `key`; never holds a plaintext value."""

    __slots__ = ("_cached", "_cipher", "_lock", "_store")

    def __init__(self, store: Path, key: bytes) -> None:
        self._store = store
        self._lock = store.with_name(store.name + ".lock")
        self._cipher = Cipher(key)
        self._cached: tuple[Stamp, Document] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, create_key: bool = False) -> Vault:
        """The configured vault. `create_key` makes a key file when there is neither a key
        nor a store yet (a new key could not open an existing store)."""
        store, key_file = settings.vault_store(), settings.vault_key_file()
        no_key = settings.vault.key is None and not key_file.exists()
        if create_key and no_key and store.exists():
            raise VaultKeyError(
                f"{store} exists but its master key {key_file} is missing; restore the key "
                "file or set vault.key (a new key cannot open the secrets already stored)"
            )
        return cls(store, load_key(settings.vault, key_file, create=create_key))

    def __repr__(self) -> str:
        return f"Vault(store={str(self._store)!r})"

    @property
    def store(self) -> Path:
        return self._store

    def get(self, name: str) -> str:
        """The value of `name`, as stored now; a change by another process is seen at once."""
        check_name(name)
        document = self._current()
        record = document.entries.get(name)
        if record is None:
            raise SecretNotFound(name)
        try:
            plaintext = self._cipher.open_entry(name, record.sealed)
        except InvalidTag:
            raise self._failure(document, name) from None
        return plaintext.decode("utf-8", "surrogatepass")

    def set(self, name: str, value: str) -> None:
        """Create `name` or replace its value (a replacement counts as a rotation)."""
        self._write(check_name(name), clean_value(value), must_exist=False)

    def rotate(self, name: str, value: str) -> None:
        """Replace the value of `name`, which must exist; raises `SecretNotFound`."""
        self._write(check_name(name), clean_value(value), must_exist=True)

    def remove(self, name: str) -> None:
        """Delete `name`; raises `SecretNotFound`."""
        check_name(name)

        def drop(entries: dict[str, Record]) -> None:
            if entries.pop(name, None) is None:
                raise SecretNotFound(name)

        self._change(drop)

    def entries(self) -> list[SecretEntry]:
        """Names and dates of every secret, by name; no value is decrypted."""
        entries = self._current().entries
        return [entries[name].entry(name) for name in sorted(entries)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._current().entries

    def _write(self, name: str, value: str, *, must_exist: bool) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        sealed = self._cipher.seal_entry(name, value.encode("utf-8", "surrogatepass"))

        def put(entries: dict[str, Record]) -> None:
            old = entries.get(name)
            if old is None and must_exist:
                raise SecretNotFound(name)
            created, rotated = (now, None) if old is None else (old.created_at, now)
            entries[name] = Record(sealed, created, rotated)

        self._change(put)

    def _change(self, change: _Change) -> None:
        with exclusive_lock(self._lock):
            # Re-read under the lock: the cached copy may predate another writer's change.
            document = self._read() or EMPTY
            key_check = document.key_check
            if key_check is None:
                key_check = self._cipher.seal_key_check()
            elif not self._cipher.opens(key_check):
                raise VaultCorrupt(
                    f"the master key does not open {self._store} "
                    "(a different key, or the file was altered); nothing was changed"
                )
            entries = dict(document.entries)
            change(entries)
            replace_atomically(self._store, render(key_check, entries))
            self._cached = None

    def _current(self) -> Document:
        """The store as it is on disk now, re-parsed only when its stamp changed."""
        try:
            now = stamp(self._store)
        except FileNotFoundError:
            self._cached = None
            return EMPTY
        if self._cached is not None and self._cached[0] == now:
            return self._cached[1]
        return self._read() or EMPTY

    def _read(self) -> Document | None:
        try:
            file_stamp, raw = read_stamped(self._store)
        except FileNotFoundError:
            self._cached = None
            return None
        document = parse(raw, str(self._store))
        self._cached = (file_stamp, document)
        return document

    def _failure(self, document: Document, name: str) -> VaultCorrupt:
        if document.key_check is not None and self._cipher.opens(document.key_check):
            return VaultCorrupt(
                f"secret {name!r} failed authentication: {self._store} was altered "
                "(or the entry was copied from another one); set it again",
                name,
            )
        return VaultCorrupt(
            f"secret {name!r} cannot be opened: the master key does not match {self._store} "
            "(a different key, or the file was altered)",
            name,
        )
