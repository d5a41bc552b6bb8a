"""Channel name → adapter factory, imported lazily so unused SDKs are never loaded."""

from __future__ import annotations

import importlib
from typing import Final

KNOWN: Final[dict[str, str]] = {
    "console": "channels.console.adapter",
}


def adapter_module(name: str) -> str:
    try:
        return KNOWN[name]
    except KeyError:
        raise ValueError(f"unknown channel {name!r}; known: {', '.join(sorted(KNOWN))}") from None


def load(name: str) -> object:
    """The adapter module for `name`, imported on first use."""
    return importlib.import_module(adapter_module(name))
