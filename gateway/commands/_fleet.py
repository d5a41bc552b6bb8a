"""What operator and self-service commands act on, and the pieces they share.

`Fleet` bundles the stores a command may touch; each command receives it when the
registry is built, never a whole Settings. `target` turns a USER argument into an
internal user id; `control` sends one request to the supervisors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from gateway.audit import AuditLog
from gateway.commands._registry import CommandContext
from gateway.controls import Action, Control, new_request_id, send_control
from gateway.errors import CommandError
from gateway.policy import AccessStore, BudgetGate, Identities
from gateway.settings import MeshSettings

INTERNAL_ID: Final = re.compile(r"u[0-9a-f]{16}")
_IDENTITY: Final = re.compile(r"([a-z]{2,16}):(\S{1,256})")


@dataclass(frozen=True, slots=True)
class Fleet:
    client: aioredis.Redis
    access: AccessStore
    identities: Identities
    budget: BudgetGate
    audit: AuditLog
    mesh: MeshSettings
    """The allowed models, for /model."""
    channels: tuple[str, ...]
    """Enabled channels, for the lag of their reply streams in /status."""
    clock: Callable[[], float] = time.time


async def target(fleet: Fleet, arg: str, usage: str, *, create: bool = False) -> str:
    """The internal id a USER argument names: "u0123…" or "channel:platform-id".

    With `create`, a platform identity never seen gets its id now (to allow or deny
    someone before they first write); otherwise an unknown one is an error."""
    if INTERNAL_ID.fullmatch(arg):
        return arg
    match = _IDENTITY.fullmatch(arg)
    if match is None:
        raise CommandError(
            f"{arg[:40]!r} is not a user: give an id like u0123456789abcdef or "
            "channel:platform-id (e.g. telegram:12345)",
            usage,
        )
    channel, platform_user = match.groups()
    if create:
        return await fleet.identities.resolve(channel, platform_user)
    found = await fleet.identities.lookup(channel, platform_user)
    if found is None:
        raise CommandError(f"nobody is known as {arg[:80]}", usage)
    return found


async def control(fleet: Fleet, context: CommandContext, action: Action, user: str) -> str:
    """Ask the supervisors to act; they report the outcome in this conversation."""
    inbound = context.inbound
    request = Control(
        action=action,
        user=user,
        by=context.user_id,
        request_id=new_request_id(),
        notify_channel=inbound.channel,
        notify_conversation=inbound.conversation_id,
        notify_thread=inbound.thread_id,
    )
    await send_control(fleet.client, request)
    return request.request_id


def actor_detail(context: CommandContext) -> str:
    """Where an action came from, for the audit trail."""
    inbound = context.inbound
    return f"via {inbound.channel}:{inbound.sender_id}"
