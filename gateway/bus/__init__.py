"""The Redis Streams bus between the channels, the router, the supervisor and the mesh.

Stream names come from `keys` (also re-exported below); `Bus` does the rest.
"""

from __future__ import annotations

from gateway.bus._streams import Bus, DeadLetter, Delivery, Handler, keys

IN_STREAM = keys.IN_STREAM
WAKE_STREAM = keys.WAKE_STREAM
agent_stream = keys.agent
out_stream = keys.out
dead_letter_stream = keys.dead

__all__ = [
    "IN_STREAM",
    "WAKE_STREAM",
    "Bus",
    "DeadLetter",
    "Delivery",
    "Handler",
    "agent_stream",
    "dead_letter_stream",
    "keys",
    "out_stream",
]
