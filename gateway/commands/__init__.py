"""Chat commands: parsed and authorised once here, the same on every channel."""

from gateway.commands._builtin import default_registry
from gateway.commands._registry import (
    Command,
    CommandContext,
    Invocation,
    Registry,
    parse,
)

__all__ = ["Command", "CommandContext", "Invocation", "Registry", "default_registry", "parse"]
