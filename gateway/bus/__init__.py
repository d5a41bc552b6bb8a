"""The Redis Streams bus between the channels, the router, the supervisor and the mesh.

Stream names come from `keys` (also re-exported below); `Bus` does the rest.
"""

from __future__ import annotations

from gateway.bus._blobs import Blobs, blob_id
from gateway.bus._cues import TypingCue, announce_typing, typing_cues
from gateway.bus._deliveries import Deliveries, Receipt, failed_stream
from gateway.bus._lanes import by_conversation, by_sender
from gateway.bus._streams import Bus, DeadLetter, Delivery, Handler, Lane, keys

IN_STREAM = keys.IN_STREAM
WAKE_STREAM = keys.WAKE_STREAM
agent_stream = keys.agent
out_stream = keys.out
dead_letter_stream = keys.dead

__all__ = [
    "IN_STREAM",
    "WAKE_STREAM",
    "Blobs",
    "Bus",
    "DeadLetter",
    "Deliveries",
    "Delivery",
    "Handler",
    "Lane",
    "Receipt",
    "TypingCue",
    "agent_stream",
    "announce_typing",
    "blob_id",
    "by_conversation",
    "by_sender",
    "dead_letter_stream",
    "failed_stream",
    "keys",
    "out_stream",
    "typing_cues",
]
