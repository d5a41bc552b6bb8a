"""/usage: what the user has spent, per window and per model, with their caps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.commands._registry import Command, CommandContext
from gateway.errors import BudgetUnavailable, CommandError
from gateway.policy.budget import Usage, render_usage

UsageOf = Callable[[str], Awaitable[Usage]]
"""A user's spending now, read from the budget gate."""


def usage_command(usage_of: UsageOf) -> Command:
    async def _usage(context: CommandContext, args: tuple[str, ...]) -> str:
        if args:
            raise CommandError("/usage takes no arguments.", "usage")
        try:
            usage = await usage_of(context.user_id)
        except BudgetUnavailable:
            return "Your spending cannot be read right now; please try again shortly."
        # Everyone's spend together is the operator's business, not each user's.
        return render_usage(usage, include_total=False)

    return Command("usage", "show what you have spent and your budgets", "usage", _usage)
