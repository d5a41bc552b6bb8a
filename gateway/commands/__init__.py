"""Chat commands: parsed and authorised once here, the same on every channel."""

from gateway.commands._admin import render_pairings, settle_pairing
from gateway.commands._assemble import fleet_registry
from gateway.commands._builtin import default_registry
from gateway.commands._fleet import Fleet, target
from gateway.commands._registry import (
    Command,
    CommandContext,
    Invocation,
    Registry,
    parse,
)

__all__ = [
    "Command",
    "CommandContext",
    "Fleet",
    "Invocation",
    "Registry",
    "default_registry",
    "fleet_registry",
    "parse",
    "render_pairings",
    "settle_pairing",
    "target",
]
