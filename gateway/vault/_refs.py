"""Channel credentials written "vault:NAME" in settings, replaced by the entries' values.

`entry_name` is the rule for one setting's value, `references` lists what the enabled
channels refer to, and `substitute` puts values in and runs the settings' own checks
on them: pure functions. `resolve_channel_credentials` is the shell that reads the
vault, once, when the channels start. Every failure is a `ConfigError` naming the
setting and the entry, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, SecretStr, ValidationError

from gateway.errors import ConfigError, SecretNotFound, VaultError
from gateway.settings import CHANNEL_CREDENTIALS, VAULT_PREFIX, ChannelsSettings, Settings
from gateway.vault._rules import NAME_PATTERN, NAME_RULE
from gateway.vault._vault import Vault


@dataclass(frozen=True, slots=True)
class Reference:
    """One channel setting that names a vault entry."""

    platform: str
    field: str
    entry: str

    @property
    def key(self) -> str:
        return f"channels.{self.platform}.{self.field}"


def entry_name(value: str) -> str | None:
    """The entry "vault:NAME" names, or None for a value that is the credential itself.

    Raises `VaultError` for a name the vault would refuse, without repeating it: a
    credential pasted after the prefix must not reach a terminal or a log.
    """
    if not value.startswith(VAULT_PREFIX):
        return None
    name = value.removeprefix(VAULT_PREFIX)
    if NAME_PATTERN.fullmatch(name) is None:
        raise VaultError(f'"{VAULT_PREFIX}" must be followed by a vault entry name of {NAME_RULE}')
    return name


def references(channels: ChannelsSettings) -> list[Reference]:
    """The vault references among the credentials of the enabled channels."""
    found: list[Reference] = []
    for platform, fields in CHANNEL_CREDENTIALS.items():
        part = getattr(channels, platform)
        if not part.enabled:
            continue
        for field in fields:
            value: SecretStr | None = getattr(part, field)
            entry = None if value is None else entry_name(value.get_secret_value())
            if entry is not None:
                found.append(Reference(platform, field, entry))
    return found


def substitute(
    channels: ChannelsSettings, values: Mapping[Reference, str], source: str
) -> ChannelsSettings:
    """`channels` with each reference replaced by its value, checked as a value written in
    the settings would be; `source` (where the values came from) opens any error."""
    parts: dict[str, BaseModel] = {}
    for platform in dict.fromkeys(ref.platform for ref in values):
        mine = [ref for ref in values if ref.platform == platform]
        for ref in mine:
            if values[ref].startswith(VAULT_PREFIX):
                raise ConfigError(
                    source,
                    ref.key,
                    f"vault entry {ref.entry!r} holds another vault reference; "
                    "store the credential itself",
                )
        part: BaseModel = getattr(channels, platform)
        resolved = {ref.field: SecretStr(values[ref]) for ref in mine}
        try:
            parts[platform] = type(part).model_validate({**dict(part), **resolved})
        except ValidationError as exc:
            raise _refused(exc, platform, mine, source) from None
    return channels.model_copy(update=parts)


def _refused(
    error: ValidationError, platform: str, mine: list[Reference], source: str
) -> ConfigError:
    """The first check a value from the vault failed, as the settings would word it."""
    first = error.errors(include_url=False, include_input=False, include_context=False)[0]
    problem = str(first["msg"]).removeprefix("Value error, ")
    field = str(first["loc"][0]) if first["loc"] else ""
    # Checks across fields name theirs inside the message: "secret_token: 16 to 256 …".
    named, sep, rest = problem.partition(": ")
    if not field and sep:
        field, problem = named, rest
    entry = next((ref.entry for ref in mine if ref.field == field), None)
    if entry is not None:
        problem = f"the value of vault entry {entry!r} fails this setting's check: {problem}"
    return ConfigError(source, ".".join(filter(None, ("channels", platform, field))), problem)


def resolve_channel_credentials(settings: Settings) -> Settings:
    """`settings` with the enabled channels' "vault:NAME" credentials read from the vault
    the mesh uses; the same `settings` when there are none (the vault is not opened)."""
    wanted = references(settings.channels)
    if not wanted:
        return settings
    source = str(settings.vault_store())
    try:
        vault = Vault.from_settings(settings)
    except VaultError as exc:
        raise _unreadable(source, wanted[0], exc) from None
    values: dict[Reference, str] = {}
    for ref in wanted:
        try:
            values[ref] = vault.get(ref.entry)
        except SecretNotFound as exc:
            raise ConfigError(source, ref.key, str(exc)) from None
        except VaultError as exc:
            raise _unreadable(source, ref, exc) from None
    channels = substitute(settings.channels, values, source)
    return settings.model_copy(update={"channels": channels})


def _unreadable(source: str, ref: Reference, error: VaultError) -> ConfigError:
    return ConfigError(source, ref.key, f"vault entry {ref.entry!r} cannot be read: {error}")
