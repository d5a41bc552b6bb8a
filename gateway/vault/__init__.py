"""The vault: secrets encrypted at rest (AES-256-GCM), read by the mesh and the channels.

`Vault` is the store; `load_key` finds the master key; `check_name`, `clean_value`
and `render_listing` serve the `stockade vault` commands; `resolve_channel_credentials`
replaces the channels' "vault:NAME" settings with their values when the channels start.
Values leave only through `Vault.get`; nothing here logs, prints or repr()s a value or
the key.
"""

from __future__ import annotations

from gateway.vault._format import SecretEntry
from gateway.vault._key import load_key
from gateway.vault._lazy import VaultOnDemand
from gateway.vault._listing import age, render_listing
from gateway.vault._refs import (
    Reference,
    entry_name,
    references,
    resolve_channel_credentials,
    substitute,
)
from gateway.vault._rules import MAX_VALUE_BYTES, check_name, clean_value
from gateway.vault._vault import Vault

__all__ = [
    "MAX_VALUE_BYTES",
    "Reference",
    "SecretEntry",
    "Vault",
    "VaultOnDemand",
    "age",
    "check_name",
    "clean_value",
    "entry_name",
    "load_key",
    "references",
    "render_listing",
    "resolve_channel_credentials",
    "substitute",
]
