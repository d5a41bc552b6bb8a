"""The seam between the supervisor and the mesh: a socket directory per agent, and its turn."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class MeshDoor(Protocol):
    """The part of the mesh the supervisor needs: a socket directory per agent."""

    async def open(self, user_id: str) -> Path: ...

    async def close(self, user_id: str) -> None: ...

    def is_open(self, user_id: str) -> bool: ...

    async def cancel_turn(self, user_id: str) -> bool:
        """End the user's current turn and answer it; True when a turn was in flight."""
        ...

    async def requeue_open(self, user_id: str) -> int:
        """Hand the user's unfinished messages to their restarted agent at once."""
        ...
