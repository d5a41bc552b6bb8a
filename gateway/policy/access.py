"""Who may talk to the bot, and who may run it: pure decisions over plain values.

The router gathers a sender's `Standing` from Redis in one round trip and asks
`decide`; nothing here does I/O. Deny unless allowed: a sender the policy does not
admit never reaches an agent and never costs money.

    from a bot (and bots not allowed)         -> IGNORE
    group: groups disabled, or not addressed  -> IGNORE
    an admin of this channel (from config)    -> ADMIT as admin (always)
    denied (/deny)                            -> REFUSE
    allowed (/allow, pairing, config `allow`) -> ADMIT
    dm_policy "open"                          -> ADMIT
    direct message, dm_policy "pairing"       -> PAIR (the sender gets a code)
    anything else                             -> REFUSE
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.envelope import Inbound
from gateway.settings import ChannelAccess


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


class Verdict(StrEnum):
    ADMIT = "admit"
    PAIR = "pair"
    """An unknown sender in a direct chat on a pairing channel: they get a code."""
    REFUSE = "refuse"
    """Not allowed: dropped without an answer (answering would invite probing)."""
    IGNORE = "ignore"
    """Not for the bot at all: another bot, or group chatter not addressed to it."""


@dataclass(frozen=True, slots=True)
class Standing:
    """What Redis knows of a sender: their internal id (if any) and the operators' lists."""

    user_id: str = ""
    """Empty for a sender never admitted: no identity is made before admission."""
    allowed: bool = False
    denied: bool = False
    paused: bool = False
    """Their agent is paused (alone or with everyone)."""
    conversation_count: int = 0
    """Messages in this conversation during the last 60 s (a sliding estimate), this one
    included."""
    conversation_paused: bool = False
    """The loop guard paused this conversation."""


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    role: Role = Role.USER
    reason: str = ""
    """For the log: why a message was not admitted."""


def role_of(policy: ChannelAccess, sender_id: str) -> Role:
    """Admin only when the configuration names this platform id on this channel."""
    return Role.ADMIN if sender_id in policy.admins else Role.USER


def precheck(inbound: Inbound, policy: ChannelAccess, *, allow_bots: bool) -> Decision | None:
    """IGNORE for what is not for the bot at all, before anything is looked up; else None."""
    if inbound.from_bot and not allow_bots:
        return Decision(Verdict.IGNORE, reason="sent by a bot")
    if not inbound.is_direct:
        if policy.groups == "disabled":
            return Decision(Verdict.IGNORE, reason="groups are disabled on this channel")
        if policy.groups == "mention" and not inbound.mentioned:
            return Decision(Verdict.IGNORE, reason="group message not addressed to the bot")
    return None


def decide(
    inbound: Inbound, policy: ChannelAccess, standing: Standing, *, allow_bots: bool
) -> Decision:
    """Whether `inbound` reaches the core, and in which role."""
    ignored = precheck(inbound, policy, allow_bots=allow_bots)
    if ignored is not None:
        return ignored
    if role_of(policy, inbound.sender_id) is Role.ADMIN:
        return Decision(Verdict.ADMIT, Role.ADMIN)
    if standing.denied:
        return Decision(Verdict.REFUSE, reason="denied by an operator")
    if standing.allowed or inbound.sender_id in policy.allow or policy.dm_policy == "open":
        return Decision(Verdict.ADMIT)
    if not inbound.is_direct:
        return Decision(Verdict.REFUSE, reason="unknown sender in a group")
    if policy.dm_policy == "pairing":
        return Decision(Verdict.PAIR, reason="unknown sender: pairing")
    return Decision(Verdict.REFUSE, reason=f"direct messages are {policy.dm_policy}")


def loop_guard_trips(standing: Standing, per_minute: int) -> bool:
    """Whether this message takes the conversation over its rate (it is then paused)."""
    return standing.conversation_count > per_minute


# Letters and digits people cannot mistake for one another: no 0/O, 1/I/L, 5/S, 2/Z, 8/B.
CODE_ALPHABET: Final = "ACDEFGHJKMNPQRTUVWXY34679"
CODE_LENGTH: Final = 8


def new_code() -> str:
    """A pairing code, e.g. "K7FD-QX4M" without the dash: 25^8 ≈ 1.5e11 possibilities."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normal_code(text: str) -> str | None:
    """The code a person typed (any case, spaces or dashes), or None if it cannot be one."""
    cleaned = "".join(ch for ch in text.upper() if ch not in " -")
    if len(cleaned) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def shown_code(code: str) -> str:
    """A code as people read it: two groups of four."""
    return f"{code[:4]}-{code[4:]}"
