"""The operators' commands: /allow /deny /pair /pause /resume /kill /model /budget /audit.

Each one is authorised by the registry (admin only), checks its arguments, acts,
and appends what it did to the audit trail before answering.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Final, Literal

from gateway.audit import render as render_audit
from gateway.commands._fleet import Fleet, actor_detail, control, target
from gateway.commands._registry import Command, CommandContext
from gateway.controls import EVERYONE, MODEL_KEY
from gateway.envelope import Outbound
from gateway.errors import CommandError
from gateway.policy import Pending
from gateway.policy.access import normal_code, shown_code
from gateway.policy.budget import NANO_PER_USD, Period, Scope, render_usage
from gateway.settings import Caps

AUDIT_DEFAULT: Final = 10
AUDIT_MAX: Final = 50
MAX_CAP_USD: Final = 1_000_000

Reply = Callable[[Outbound], Awaitable[None]]
"""Sends a message to someone other than the caller (a paired user's welcome)."""


def _one(args: tuple[str, ...], usage: str) -> str:
    if len(args) != 1:
        raise CommandError("Give exactly one user.", usage)
    return args[0]


def parse_amount(text: str, usage: str) -> float | None:
    """US dollars as typed ("5", "2.50", "$10"), or None for "none"/"off" (no cap)."""
    if text.lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = Decimal(text.removeprefix("$"))
    except InvalidOperation:
        raise CommandError(f"{text[:20]!r} is not an amount in dollars.", usage) from None
    if not value.is_finite() or value < 0 or value > MAX_CAP_USD:
        raise CommandError(f"An amount is between 0 and {MAX_CAP_USD:,} dollars.", usage)
    return float(value)


def _allow(fleet: Fleet) -> Command:
    usage = "allow USER"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        user = await target(fleet, _one(args, usage), usage, create=True)
        changed = await fleet.access.allow(user)
        await fleet.audit.append(context.user_id, "allow", user, actor_detail(context))
        return f"{user} may talk to the assistant." + ("" if changed else " (They already could.)")

    return Command("allow", "let a user in", usage, run, admin_only=True)


def _deny(fleet: Fleet) -> Command:
    usage = "deny USER"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        user = await target(fleet, _one(args, usage), usage, create=True)
        if user == context.user_id:
            raise CommandError("You cannot deny yourself.", usage)
        changed = await fleet.access.deny(user)
        await fleet.audit.append(context.user_id, "deny", user, actor_detail(context))
        note = "" if changed else " (They already were.)"
        return f"{user} is kept out: their messages are dropped.{note}"

    return Command("deny", "keep a user out", usage, run, admin_only=True)


def render_pairings(waiting: list[Pending], now: float) -> str:
    if not waiting:
        return "No pairing requests are waiting."
    lines = ["Waiting for approval:"]
    for p in waiting:
        name = f" ({p.sender_name})" if p.sender_name else ""
        minutes = max(1, math.ceil((p.expires - now) / 60))
        lines.append(
            f"  {shown_code(p.code)}  {p.channel}:{p.sender_id}{name}, expires in {minutes} min"
        )
    return "\n".join(lines)


async def settle_pairing(
    fleet: Fleet, code: str, *, approve: bool, actor: str, detail: str, send: Reply
) -> str:
    """Approve or refuse the request under `code` (normalised); the answer for the admin.

    Shared by /pair and `stockade pair`. An approved sender is allowed, gets their
    internal id, and is told in the conversation they wrote from."""
    pending = await fleet.access.take_pairing(code)
    if pending is None:
        return f"No pairing request {shown_code(code)} is waiting (it may have expired)."
    who = f"{pending.channel}:{pending.sender_id}"
    if not approve:
        await fleet.audit.append(actor, "pair.deny", who, f"code {code} {detail}")
        return f"Refused {who}."
    user = await fleet.identities.resolve(pending.channel, pending.sender_id)
    await fleet.access.allow(user)
    await fleet.audit.append(actor, "pair.approve", user, f"{who} code {code} {detail}")
    await send(
        Outbound(
            channel=pending.channel,
            conversation_id=pending.conversation_id,
            thread_id=pending.thread_id,
            text="You're in: an operator approved you. Say hello!",
            outbound_id=f"pair:{code}",
            user_id=user,
        )
    )
    return f"Approved {who}; they are {user}."


def _pair(fleet: Fleet, send: Reply) -> Command:
    usage = "pair [approve|deny CODE]"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if not args:
            return render_pairings(await fleet.access.pairings(), fleet.clock())
        if len(args) != 2 or args[0].lower() not in ("approve", "deny"):
            raise CommandError("Say approve or deny, then the code.", usage)
        code = normal_code(args[1])
        if code is None:
            raise CommandError(f"{args[1][:20]!r} is not a pairing code.", usage)
        return await settle_pairing(
            fleet,
            code,
            approve=args[0].lower() == "approve",
            actor=context.user_id,
            detail=actor_detail(context),
            send=send,
        )

    return Command("pair", "list, approve or deny pairing requests", usage, run, admin_only=True)


def _pausing(fleet: Fleet, action: Literal["pause", "resume"], summary: str) -> Command:
    """/pause and /resume: the lists change at once, then the supervisors act and report."""
    usage = f"{action} USER|all"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        arg = _one(args, usage)
        user = EVERYONE if arg.lower() == "all" else await target(fleet, arg, usage)
        if action == "pause":
            await fleet.access.pause(user)
        else:
            await fleet.access.resume(user)
        await fleet.audit.append(context.user_id, action, user, actor_detail(context))
        await control(fleet, context, action, user)
        return ""

    return Command(action, summary, usage, run, admin_only=True)


def _kill(fleet: Fleet) -> Command:
    usage = "kill USER"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        user = await target(fleet, _one(args, usage), usage)
        await fleet.audit.append(context.user_id, "kill", user, actor_detail(context))
        await control(fleet, context, "kill", user)
        return ""

    return Command("kill", "stop a user's container now", usage, run, admin_only=True)


def _model(fleet: Fleet) -> Command:
    usage = "model USER [MODEL]"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if len(args) not in (1, 2):
            raise CommandError("Give a user, and a model to choose one.", usage)
        user = await target(fleet, args[0], usage)
        allowed = fleet.mesh.allowed_models_by_user.get(user, fleet.mesh.allowed_models)
        if len(args) == 1:
            raw = await fleet.client.hget(MODEL_KEY, user)
            chosen = raw.decode() if isinstance(raw, bytes) else raw
            current = chosen if chosen in allowed else allowed[0]
            return f"{user} uses {current}. Allowed: {', '.join(allowed)}."
        model = args[1]
        if model not in allowed:
            raise CommandError(
                f"{model[:40]!r} is not allowed for {user}; allowed: {', '.join(allowed)}.", usage
            )
        await fleet.client.hset(MODEL_KEY, user, model)
        await fleet.audit.append(
            context.user_id, "model.set", user, f"{model} {actor_detail(context)}"
        )
        return f"{user} now uses {model}."

    return Command("model", "show or choose a user's model", usage, run, admin_only=True)


def _cap_usd(nano: int | None) -> float | None:
    return None if nano is None else nano / NANO_PER_USD


def _budget(fleet: Fleet) -> Command:
    usage = "budget USER [daily|monthly AMOUNT]"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if len(args) not in (1, 3):
            raise CommandError("Give a user, or a user, a window and an amount.", usage)
        user = await target(fleet, args[0], usage)
        if len(args) == 1:
            report = await fleet.budget.usage(user)
            return render_usage(report, heading=f"Spending of {user}:", include_total=False)
        window = args[1].lower()
        if window not in ("daily", "monthly"):
            raise CommandError(f"The window is daily or monthly, not {args[1][:20]!r}.", usage)
        amount = parse_amount(args[2], usage)
        now = await fleet.budget.usage(user)
        daily = _cap_usd(now.window(Scope.USER, Period.DAY).cap_nano)
        monthly = _cap_usd(now.window(Scope.USER, Period.MONTH).cap_nano)
        caps = Caps(
            daily_usd=amount if window == "daily" else daily,
            monthly_usd=amount if window == "monthly" else monthly,
        )
        await fleet.budget.set_caps(user, caps)
        shown = "no cap" if amount is None else f"${amount:,.2f}"
        await fleet.audit.append(
            context.user_id, "budget.set", user, f"{window} {shown} {actor_detail(context)}"
        )
        report = await fleet.budget.usage(user)
        return render_usage(
            report, heading=f"{user}'s {window} cap is now {shown}.", include_total=False
        )

    return Command("budget", "show or set a user's budget", usage, run, admin_only=True)


def _audit(fleet: Fleet) -> Command:
    usage = f"audit [N ≤ {AUDIT_MAX}]"

    async def run(context: CommandContext, args: tuple[str, ...]) -> str:
        if len(args) > 1 or (args and not args[0].isdecimal()):
            raise CommandError("Give at most one number.", usage)
        count = min(AUDIT_MAX, max(1, int(args[0]))) if args else AUDIT_DEFAULT
        entries = await fleet.audit.tail(count)
        return render_audit(entries) if entries else "The audit trail is empty."

    return Command("audit", "the latest entries of the audit trail", usage, run, admin_only=True)


def admin_commands(fleet: Fleet, send: Reply) -> list[Command]:
    return [
        _allow(fleet),
        _deny(fleet),
        _pair(fleet, send),
        _pausing(fleet, "pause", "stop an agent (or all) until resumed; messages wait"),
        _pausing(fleet, "resume", "let paused agents run again"),
        _kill(fleet),
        _model(fleet),
        _budget(fleet),
        _audit(fleet),
    ]
