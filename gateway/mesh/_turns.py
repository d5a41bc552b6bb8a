"""The turns one door handed out and has not finished, and the messages waiting to go out.

Nothing here awaits: the door reads and changes its turns between two awaits, so a
request sees them as one step left them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final

from gateway.bus import Delivery
from gateway.envelope import Inbound

MAX_OPEN_TURNS: Final = 32
"""Messages handed out and not yet finished, per agent; the oldest is forgotten past this.

A well-behaved agent works on one at a time. A forgotten one stays pending in Redis
and comes back through the bus's reclaim path."""


@dataclass(slots=True)
class Turn:
    """A message handed out to the agent, and how many interim replies it has sent."""

    delivery: Delivery
    inbound: Inbound
    replies: int = 0


class OpenTurns:
    """One agent's open turns by message id, oldest first, and its unclaimed messages.

    An unclaimed message was read for the agent and not taken (its poll hung up, or its
    agent restarted and lost it): the next poll hands it out before reading anew.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[str, Turn] = OrderedDict()
        self._unclaimed: deque[tuple[Delivery, Inbound]] = deque()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._open

    def get(self, message_id: str) -> Turn | None:
        return self._open.get(message_id)

    def pop(self, message_id: str) -> None:
        """The turn is finished (or about to be): it is no longer open."""
        self._open.pop(message_id, None)

    def restore(self, message_id: str, turn: Turn) -> None:
        """Open `turn` again after finishing it failed, unless it was opened anew meanwhile."""
        self._open.setdefault(message_id, turn)

    def take_all(self) -> list[Turn]:
        """Every open turn, oldest first; none is open afterwards."""
        turns = list(self._open.values())
        self._open.clear()
        return turns

    def latest(self) -> Turn | None:
        """The turn handed out last, if it is open."""
        return next(reversed(self._open.values()), None)

    def holds(self, blob: str) -> bool:
        """`blob` came with a message handed out to this agent and not yet finished."""
        return any(
            attachment.blob == blob
            for turn in self._open.values()
            for attachment in turn.inbound.attachments
        )

    def remember(self, delivery: Delivery, inbound: Inbound) -> str:
        """Open (or refresh) the turn of `delivery`, as the latest; its message id."""
        message_id = delivery.entry_id
        turn = self._open.pop(message_id, None)
        if turn is None:
            turn = Turn(delivery, inbound)
        else:
            turn.delivery = delivery  # a redelivery: its count is newer
        self._open[message_id] = turn
        while len(self._open) > MAX_OPEN_TURNS:
            self._open.popitem(last=False)
        return message_id

    def park(self, delivery: Delivery, inbound: Inbound) -> None:
        """Keep a message read for an agent that left, for its next poll."""
        self._unclaimed.append((delivery, inbound))

    def unclaimed(self) -> tuple[Delivery, Inbound] | None:
        """The oldest unclaimed message, taken off the queue; None when there is none."""
        return self._unclaimed.popleft() if self._unclaimed else None

    def requeue(self) -> int:
        """Queue every open turn not queued already to go out again. The number queued."""
        waiting = {delivery.entry_id for delivery, _ in self._unclaimed}
        requeued = 0
        for turn in self._open.values():
            if turn.delivery.entry_id not in waiting:
                self._unclaimed.append((turn.delivery, turn.inbound))
                requeued += 1
        return requeued

    def clear(self) -> None:
        """Forget every open turn and unclaimed message."""
        self._open.clear()
        self._unclaimed.clear()
