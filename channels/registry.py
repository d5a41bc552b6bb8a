"""Channel name → adapter module, imported only when that channel is enabled, so the SDKs
of unused platforms are never loaded."""

from __future__ import annotations

import importlib
from typing import Final, Protocol, cast

from channels.base import Channel, ChannelContext

KNOWN: Final[dict[str, str]] = {
    "console": "channels.console.adapter",
    "telegram": "channels.telegram.adapter",
    "slack": "channels.slack.adapter",
    "whatsapp": "channels.whatsapp.adapter",
    "discord": "channels.discord.adapter",
    "matrix": "channels.matrix.adapter",
}


class _AdapterModule(Protocol):
    def build(self, settings: object, context: ChannelContext) -> Channel: ...


def adapter_module(name: str) -> str:
    try:
        return KNOWN[name]
    except KeyError:
        raise ValueError(f"unknown channel {name!r}; known: {', '.join(sorted(KNOWN))}") from None


def load(name: str) -> object:
    """The adapter module for `name`, imported on first use."""
    return importlib.import_module(adapter_module(name))


def build(name: str, settings: object, context: ChannelContext) -> Channel:
    """The channel `name`, built from its own settings part."""
    module = cast(_AdapterModule, load(name))
    return module.build(settings, context)
