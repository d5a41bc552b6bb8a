"""The store file's JSON shape, parsed and rendered by pure functions.

    {"version": 1,
     "key_check": {"nonce": B64, "ciphertext": B64},
     "entries": {NAME: {"nonce": B64, "ciphertext": B64,
                        "created_at": "2025-01-31T12:00:00Z", "rotated_at": null | TIME}}}

Parsing is strict: an unknown key, a wrong type or a short nonce is `VaultCorrupt`,
naming the file and the entry but never quoting content.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from gateway.errors import VaultCorrupt, VaultError
from gateway.vault._crypto import FORMAT_VERSION, NONCE_BYTES, TAG_BYTES, Sealed
from gateway.vault._rules import check_name

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
_SEALED_KEYS: Final = frozenset({"nonce", "ciphertext"})
_ENTRY_KEYS: Final = _SEALED_KEYS | {"created_at", "rotated_at"}
_TOP_KEYS: Final = frozenset({"version", "key_check", "entries"})


@dataclass(frozen=True, slots=True)
class SecretEntry:
    """What may be shown about a secret: its name and dates, never its value."""

    name: str
    created_at: datetime
    rotated_at: datetime | None

    @property
    def changed_at(self) -> datetime:
        """When the current value was written."""
        return self.rotated_at or self.created_at


@dataclass(frozen=True, slots=True)
class Record:
    """One stored entry: its sealed value and its dates."""

    sealed: Sealed
    created_at: datetime
    rotated_at: datetime | None

    def entry(self, name: str) -> SecretEntry:
        return SecretEntry(name, self.created_at, self.rotated_at)


@dataclass(frozen=True, slots=True)
class Document:
    """A whole store. `key_check` is None only for a store not yet written."""

    key_check: Sealed | None
    entries: Mapping[str, Record]


EMPTY: Final = Document(None, {})


def render(key_check: Sealed, entries: Mapping[str, Record]) -> bytes:
    """The file's bytes: a store on disk always carries its key check."""
    data = {
        "version": FORMAT_VERSION,
        "key_check": _render_sealed(key_check),
        "entries": {
            name: {
                **_render_sealed(record.sealed),
                "created_at": _render_time(record.created_at),
                "rotated_at": None
                if record.rotated_at is None
                else _render_time(record.rotated_at),
            }
            for name, record in sorted(entries.items())
        },
    }
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def parse(raw: bytes, source: str) -> Document:
    """Parse a store file's bytes; `source` (the path) goes into error messages."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VaultCorrupt(f"{source}: not a vault store (not JSON)") from None
    top = _object(data, _TOP_KEYS, source, "the file")
    if top["version"] != FORMAT_VERSION:
        raise VaultCorrupt(
            f"{source}: store format {top['version']!r} is not {FORMAT_VERSION}; "
            "it was written by another version of Stockade"
        )
    check_fields = _object(top["key_check"], _SEALED_KEYS, source, "key_check")
    key_check = _parse_sealed(check_fields, source, "key_check", None)
    raw_entries = top["entries"]
    if not isinstance(raw_entries, dict):
        raise VaultCorrupt(f"{source}: entries is not an object")
    entries: dict[str, Record] = {}
    for name, value in raw_entries.items():
        try:
            check_name(name)
        except VaultError:
            raise VaultCorrupt(f"{source}: an entry has an invalid name") from None
        fields = _object(value, _ENTRY_KEYS, source, f"entry {name!r}", name)
        rotated = fields["rotated_at"]
        entries[name] = Record(
            sealed=_parse_sealed(fields, source, f"entry {name!r}", name),
            created_at=_parse_time(fields["created_at"], source, name),
            rotated_at=None if rotated is None else _parse_time(rotated, source, name),
        )
    return Document(key_check, entries)


def _object(
    value: Any, keys: frozenset[str], source: str, what: str, entry: str | None = None
) -> dict[str, Any]:
    if not isinstance(value, dict) or not keys <= value.keys() <= keys:
        raise VaultCorrupt(f"{source}: {what} does not have the fields {sorted(keys)}", entry)
    return value


def _parse_sealed(fields: dict[str, Any], source: str, what: str, entry: str | None) -> Sealed:
    try:
        nonce = base64.b64decode(fields["nonce"], validate=True)
        ciphertext = base64.b64decode(fields["ciphertext"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise VaultCorrupt(f"{source}: {what} is not base64", entry) from None
    if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        raise VaultCorrupt(f"{source}: {what} is truncated", entry)
    return Sealed(nonce, ciphertext)


def _render_sealed(sealed: Sealed) -> dict[str, str]:
    return {
        "nonce": base64.b64encode(sealed.nonce).decode("ascii"),
        "ciphertext": base64.b64encode(sealed.ciphertext).decode("ascii"),
    }


def _render_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _parse_time(value: Any, source: str, entry: str) -> datetime:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise VaultCorrupt(f"{source}: entry {entry!r} has a malformed date", entry) from None
