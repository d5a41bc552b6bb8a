"""AES-256-GCM sealing of vault entries, each bound to its name and the format version.

The associated data names the entry, so a ciphertext moved to another entry fails to
open, and the format version, so a future format cannot be confused with this one.
A separate key check (an empty plaintext under its own associated data) tells a wrong
key apart from an altered entry, and stops a wrong key from ever writing to a store.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import VaultKeyError

FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
"""GCM's native nonce size; random nonces are safe far beyond the writes a vault sees."""
TAG_BYTES: Final = 16

_AAD_PREFIX: Final = f"stockade-vault/v{FORMAT_VERSION}/".encode()
# Names cannot hold "/", so no entry's associated data equals the key check's.
_KEY_CHECK_AAD: Final = _AAD_PREFIX + b"key-check"


@dataclass(frozen=True, slots=True)
class Sealed:
    """One AES-GCM output: the nonce it was made with and the ciphertext with its tag."""

    nonce: bytes
    ciphertext: bytes


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str, source: str) -> bytes:
    """Decode a base64 master key; `source` names where it came from, the error never the text."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise VaultKeyError(f"{source}: not a vault key (base64 of {KEY_BYTES} random bytes)")
    return key


def _entry_aad(name: str) -> bytes:
    return _AAD_PREFIX + b"entry/" + name.encode("utf-8")


class Cipher:
    """Seals and opens entries under one master key; holds the key only inside AESGCM."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultKeyError(f"the vault master key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Cipher(<key hidden>)"

    def seal_entry(self, name: str, plaintext: bytes) -> Sealed:
        return self._seal(_entry_aad(name), plaintext)

    def open_entry(self, name: str, sealed: Sealed) -> bytes:
        """Raise `InvalidTag` for a wrong key, altered bytes or a ciphertext of another entry."""
        return self._aead.decrypt(sealed.nonce, sealed.ciphertext, _entry_aad(name))

    def seal_key_check(self) -> Sealed:
        return self._seal(_KEY_CHECK_AAD, b"")

    def opens(self, key_check: Sealed) -> bool:
        """Whether this key made `key_check`."""
        try:
            self._aead.decrypt(key_check.nonce, key_check.ciphertext, _KEY_CHECK_AAD)
        except InvalidTag:
            return False
        return True

    def _seal(self, aad: bytes, plaintext: bytes) -> Sealed:
        # A fresh random nonce per write: GCM breaks if a nonce repeats under one key.
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(nonce, self._aead.encrypt(nonce, plaintext, aad))
