"""/reset and /stop: what people may do to their own agent."""

from __future__ import annotations

from typing import Final

from gateway.commands._fleet import Fleet, control
from gateway.commands._registry import Command, CommandContext
from gateway.errors import CommandError

CONFIRM_WORD: Final = "confirm"
CONFIRM_S: Final = 120
_PENDING: Final = "stockade:reset:pending:"


def reset_command(fleet: Fleet) -> Command:
    async def _reset(context: CommandContext, args: tuple[str, ...]) -> str:
        prefix = context.registry.prefix
        key = _PENDING + context.user_id
        if not args:
            await fleet.client.set(key, "1", ex=CONFIRM_S)
            return (
                "This deletes your assistant's memory and files for good. To go ahead, send "
                f"{prefix}reset {CONFIRM_WORD} within {CONFIRM_S // 60} minutes."
            )
        if args != (CONFIRM_WORD,):
            raise CommandError(
                f"{prefix}reset takes nothing, or {CONFIRM_WORD}.", "reset [confirm]"
            )
        if not await fleet.client.getdel(key):
            return f"Nothing to confirm: send {prefix}reset first."
        await control(fleet, context, "reset", context.user_id)
        await fleet.audit.append(context.user_id, "reset", context.user_id, "by the user")
        return "Deleting your assistant's memory and files…"

    return Command(
        "reset", "delete your assistant's memory and files (asks first)", "reset", _reset
    )


def stop_command(fleet: Fleet) -> Command:
    async def _stop(context: CommandContext, args: tuple[str, ...]) -> str:
        if args:
            raise CommandError(f"{context.registry.prefix}stop takes no arguments.", "stop")
        await control(fleet, context, "stop", context.user_id)
        # The supervisor answers: "Stopped." from the turn, or that nothing was running.
        return ""

    return Command("stop", "stop what your assistant is doing now", "stop", _stop)
