"""The vault as the mesh uses it: opened on first use, so the gateway can start first."""

from __future__ import annotations

from gateway.settings import Settings
from gateway.vault._vault import Vault


class VaultOnDemand:
    """Opens the configured vault when a key is first asked for, and retries a failed open.

    `stockade up` may run before the operator's first `stockade vault set` has made
    the master key; the calls that need a key fail with `VaultKeyError` until it
    exists, and then work without a restart.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._vault: Vault | None = None

    def __repr__(self) -> str:
        return f"VaultOnDemand(store={str(self._settings.vault_store())!r})"

    def get(self, name: str) -> str:
        if self._vault is None:
            self._vault = Vault.from_settings(self._settings)
        return self._vault.get(name)
