"""Lanes for `Bus.consume`: which entries must be handled one after another."""

from __future__ import annotations

from collections.abc import Hashable

from gateway.bus._streams import Delivery
from gateway.envelope import Inbound


def by_sender(delivery: Delivery) -> Hashable:
    """One person on one channel: their messages reach their agent in the order sent."""
    envelope = delivery.envelope
    if isinstance(envelope, Inbound):
        return (envelope.channel, envelope.sender_id)
    return delivery.entry_id


def by_conversation(delivery: Delivery) -> Hashable:
    """One chat (and thread): its replies are sent in the order they were written."""
    envelope = delivery.envelope
    return (envelope.channel, envelope.conversation_id, envelope.thread_id)
