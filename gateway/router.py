"""The router: Inbound → access decision → a command answered in the core, or the user's agent.

It consumes `stockade:in` in a consumer group, so several routers can share the
load. Each decision is handed on with the inbound entry's ack in one Redis
transaction, so a crash never runs a message twice or loses it. A message for an
agent goes to the user's own stream (their order) and to the supervisor's wake
stream, which starts the user's container if it is not running.

Nobody is given an internal id, and nothing reaches an agent, before the access
policy admits them (`gateway.policy.access`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Final

from gateway.audit import AuditLog
from gateway.bus import IN_STREAM, WAKE_STREAM, Bus, Delivery, agent_stream, by_sender, out_stream
from gateway.commands import CommandContext, Invocation, Registry
from gateway.envelope import Envelope, Inbound, reply
from gateway.errors import EnvelopeError
from gateway.policy import AccessStore, Identities
from gateway.policy.access import (
    Decision,
    Verdict,
    decide,
    loop_guard_trips,
    precheck,
    shown_code,
)
from gateway.settings import AccessSettings

ROUTER_GROUP: Final = "router"

log = logging.getLogger("stockade.router")


def pairing_text(code: str, minutes: int, *, again: bool) -> str:
    start = (
        "Your pairing code is still" if again else "Hi! I don't know you yet. Your pairing code is"
    )
    return (
        f"{start} {shown_code(code)}. Send it to the operator of this assistant; once they "
        f"approve it you can talk to me. It expires in {minutes} minutes."
    )


def paused_text() -> str:
    return (
        "Your assistant is paused by the operator. Your messages are kept and will be "
        "answered when it resumes."
    )


def loop_text(per_minute: int, pause_s: int) -> str:
    return (
        f"This conversation sent more than {per_minute} messages in a minute, so I am "
        f"pausing here for {max(1, pause_s // 60)} minutes."
    )


class Router:
    def __init__(
        self,
        bus: Bus,
        identities: Identities,
        commands: Registry,
        access: AccessStore,
        settings: AccessSettings,
        audit: AuditLog,
    ) -> None:
        self._bus = bus
        self._identities = identities
        self._commands = commands
        self._access = access
        self._settings = settings
        self._audit = audit

    async def handle(self, delivery: Delivery) -> None:
        inbound = delivery.envelope
        if not isinstance(inbound, Inbound):
            raise EnvelopeError("the inbound stream carried an outbound envelope")
        policy = self._settings.of(inbound.channel)
        ignored = precheck(inbound, policy, allow_bots=self._settings.allow_bots)
        if ignored is not None:
            # Not for the bot (group chatter, another bot): not even looked up.
            await self._bus.ack(delivery)
            return
        standing = await self._access.standing(inbound)
        decision = decide(inbound, policy, standing, allow_bots=self._settings.allow_bots)
        if decision.verdict is Verdict.PAIR:
            await self._pair(delivery, inbound)
            return
        if decision.verdict is not Verdict.ADMIT:
            # Not allowed: no identity made, no agent woken, no answer.
            log.debug("dropped a message on %s: %s", inbound.channel, decision.reason)
            await self._bus.ack(delivery)
            return
        user_id = standing.user_id or await self._identities.resolve(
            inbound.channel, inbound.sender_id
        )
        inbound = dataclasses.replace(inbound, user_id=user_id)
        invocation = self._commands.parse(inbound.text)
        if invocation is not None:
            await self._command(delivery, inbound, decision, invocation)
            return
        guard = self._settings.loop_guard
        if standing.conversation_paused:
            await self._bus.ack(delivery)
            return
        if loop_guard_trips(standing, guard.per_conversation_per_min):
            await self._hold(delivery, inbound)
            return
        # While paused, the message waits in the user's stream and the wake only marks
        # them wanted: the supervisors start no paused agent, and start it on /resume.
        targets: list[tuple[str, Envelope]] = [
            (agent_stream(user_id), inbound),
            (WAKE_STREAM, inbound),
        ]
        if standing.paused and await self._access.first_paused_notice(user_id):
            targets.append((out_stream(inbound.channel), reply(inbound, paused_text(), "paused")))
        await self._bus.forward_many(delivery, targets)

    async def _command(
        self, delivery: Delivery, inbound: Inbound, decision: Decision, invocation: Invocation
    ) -> None:
        refused = self._commands.refusal(invocation, decision.role)
        if refused is not None:
            await self._audit.append(
                inbound.user_id,
                "command.denied",
                f"/{invocation.name}",
                f"via {inbound.channel}:{inbound.sender_id}",
                outcome="refused",
            )
            log.warning("refused /%s to %s: not an admin", invocation.name, inbound.user_id)
            answer = refused
        else:
            context = CommandContext(
                inbound=inbound,
                user_id=inbound.user_id,
                registry=self._commands,
                role=decision.role,
            )
            answer = await self._commands.run(invocation, context)
            log.info("command /%s from %s (%s)", invocation.name, inbound.user_id, decision.role)
        if not answer:
            await self._bus.ack(delivery)
            return
        await self._bus.forward_many(
            delivery, [(out_stream(inbound.channel), reply(inbound, answer, "cmd"))]
        )

    async def _pair(self, delivery: Delivery, inbound: Inbound) -> None:
        offer = await self._access.request_pairing(inbound)
        if offer is None:
            log.info("no pairing code for a sender on %s: too many waiting", inbound.channel)
            await self._bus.ack(delivery)
            return
        if offer.new:
            await self._audit.append(
                "system",
                "pair.request",
                f"{inbound.channel}:{inbound.sender_id}",
                f"code {offer.code}",
            )
        minutes = max(1, self._settings.pairing_ttl_s // 60)
        text = pairing_text(offer.code, minutes, again=not offer.new)
        await self._bus.forward_many(
            delivery, [(out_stream(inbound.channel), reply(inbound, text, "pair"))]
        )

    async def _hold(self, delivery: Delivery, inbound: Inbound) -> None:
        guard = self._settings.loop_guard
        targets: list[tuple[str, Envelope]] = []
        if await self._access.hold_conversation(inbound.channel, inbound.conversation_id):
            await self._audit.append(
                "system",
                "loop.pause",
                f"{inbound.channel}:{inbound.conversation_id}",
                f"over {guard.per_conversation_per_min}/min; paused {guard.pause_s} s",
            )
            text = loop_text(guard.per_conversation_per_min, guard.pause_s)
            targets.append((out_stream(inbound.channel), reply(inbound, text, "loop")))
        if targets:
            await self._bus.forward_many(delivery, targets)
        else:
            await self._bus.ack(delivery)

    async def run(self, consumer: str) -> None:
        """Route until cancelled: different senders' messages at once, each one's in order."""
        await self._bus.consume(IN_STREAM, ROUTER_GROUP, consumer, self.handle, lane=by_sender)
