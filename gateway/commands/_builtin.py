"""The commands everyone has: /help, /whoami and /usage."""

from __future__ import annotations

from gateway.commands._registry import Command, CommandContext, Registry
from gateway.commands._usage import UsageOf, usage_command
from gateway.errors import CommandError


async def _help(context: CommandContext, args: tuple[str, ...]) -> str:
    if args:
        raise CommandError("/help takes no arguments.", "help")
    return context.registry.help_text(admin=context.is_admin)


async def _whoami(context: CommandContext, args: tuple[str, ...]) -> str:
    if args:
        raise CommandError("/whoami takes no arguments.", "whoami")
    inbound = context.inbound
    shown = inbound.sender_name and inbound.sender_name != inbound.sender_id
    name = f" ({inbound.sender_name})" if shown else ""
    return (
        f"You are {context.user_id}: {inbound.sender_id}{name} on {inbound.channel}.\n"
        f"Role: {context.role}."
    )


def default_registry(prefix: str = "/", usage_of: UsageOf | None = None) -> Registry:
    """The commands everyone has; /usage where the budget gate can be read."""
    registry = Registry(prefix)
    registry.add(Command("help", "list the commands", "help", _help))
    registry.add(Command("whoami", "show who Stockade thinks you are", "whoami", _whoami))
    if usage_of is not None:
        registry.add(usage_command(usage_of))
    return registry
