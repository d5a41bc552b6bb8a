"""The router: Inbound → internal user → a command answered in the core, or the user's agent.

It consumes `stockade:in` in a consumer group, so several routers can share the
load. Each decision is handed on with the inbound entry's ack in one Redis
transaction, so a crash never runs a message twice or loses it. A message for an
agent goes to the user's own stream (their order) and to the supervisor's wake
stream, which starts the user's container if it is not running.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

from gateway.bus import IN_STREAM, WAKE_STREAM, Bus, Delivery, agent_stream, out_stream
from gateway.commands import CommandContext, Registry
from gateway.envelope import Envelope, Inbound, reply
from gateway.errors import EnvelopeError
from gateway.policy import Identities

ROUTER_GROUP: Final = "router"

log = logging.getLogger("stockade.router")


def addressed(inbound: Inbound) -> bool:
    """Whether the bot should answer: always in a direct chat; in a group only when
    mentioned or replied to (the channel decides what counts as that)."""
    return inbound.is_direct or inbound.mentioned


class Router:
    def __init__(self, bus: Bus, identities: Identities, commands: Registry) -> None:
        self._bus = bus
        self._identities = identities
        self._commands = commands

    async def handle(self, delivery: Delivery) -> None:
        inbound = delivery.envelope
        if not isinstance(inbound, Inbound):
            raise EnvelopeError("the inbound stream carried an outbound envelope")
        if not addressed(inbound):
            # Group chatter not meant for the bot: no identity made, no agent woken.
            await self._bus.ack(delivery)
            return
        user_id = await self._identities.resolve(inbound.channel, inbound.sender_id)
        inbound = dataclasses.replace(inbound, user_id=user_id)
        invocation = self._commands.parse(inbound.text)
        targets: list[tuple[str, Envelope]]
        if invocation is not None:
            context = CommandContext(inbound=inbound, user_id=user_id, registry=self._commands)
            answer = await self._commands.run(invocation, context)
            targets = [(out_stream(inbound.channel), reply(inbound, answer, "cmd"))]
            log.info("command /%s from %s", invocation.name, user_id)
        else:
            targets = [(agent_stream(user_id), inbound), (WAKE_STREAM, inbound)]
        await self._bus.forward_many(delivery, targets)

    async def run(self, consumer: str) -> None:
        """Route until cancelled."""
        await self._bus.consume(IN_STREAM, ROUTER_GROUP, consumer, self.handle)
