"""The full command set of a running Stockade: everyone's, self-service and the operators'."""

from __future__ import annotations

from gateway.commands._admin import Reply, admin_commands
from gateway.commands._builtin import default_registry
from gateway.commands._fleet import Fleet
from gateway.commands._registry import Registry
from gateway.commands._self import reset_command, stop_command
from gateway.commands._status import agents_command, status_command


def fleet_registry(prefix: str, fleet: Fleet, send: Reply) -> Registry:
    """Every command; `send` delivers messages to people other than the caller."""
    registry = default_registry(prefix, fleet.budget.usage)
    registry.add(reset_command(fleet))
    registry.add(stop_command(fleet))
    registry.add(status_command(fleet))
    registry.add(agents_command(fleet))
    for command in admin_commands(fleet, send):
        registry.add(command)
    return registry
