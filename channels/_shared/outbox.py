"""Sending a reply's parts each once, even when the reply itself is delivered again.

A reply leaves its out stream only after every part went out. When part 2 of 3 fails
for good (the platform asked for too long a wait, or kept failing), the reply comes
back from the bus later; the parts the platform already took are skipped then. The
one duplicate left possible is a part sent just before a crash, before it was marked.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from channels._shared.retry import send_with_retry
from gateway.bus import Deliveries
from gateway.envelope import Outbound

P = TypeVar("P")


async def send_parts(
    deliveries: Deliveries,
    outbound: Outbound,
    parts: Sequence[P],
    send_part: Callable[[int, P], Awaitable[object]],
) -> None:
    """`send_part(index, part)` for each part not sent before, retried as the platform asks."""
    for index, part in enumerate(parts):
        if await deliveries.part_sent(outbound.channel, outbound.outbound_id, index):
            continue
        await send_with_retry(functools.partial(send_part, index, part))
        await deliveries.mark_part(outbound.channel, outbound.outbound_id, index)
