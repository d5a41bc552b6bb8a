"""Runs one channel: inbound events onto the bus, replies from its out stream to the platform."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from channels.base import Channel
from gateway.bus import IN_STREAM, Bus, Delivery, out_stream
from gateway.envelope import Inbound, Outbound
from gateway.errors import EnvelopeError

SENDER_GROUP: Final = "senders"

log = logging.getLogger("stockade.channels")


async def run_channel(channel: Channel, bus: Bus, consumer: str, group: str = SENDER_GROUP) -> None:
    """Receive and send until cancelled; a reply is acked only after the platform took it."""

    async def publish(inbound: Inbound) -> bool:
        return await bus.publish(IN_STREAM, inbound, dedupe=inbound.dedupe_key) is not None

    async def deliver(delivery: Delivery) -> None:
        outbound = delivery.envelope
        if not isinstance(outbound, Outbound):
            raise EnvelopeError("an out stream carried an inbound envelope")
        await channel.send(outbound)

    async with asyncio.TaskGroup() as group_tasks:
        group_tasks.create_task(channel.receive(publish))
        group_tasks.create_task(bus.consume(out_stream(channel.name), group, consumer, deliver))
