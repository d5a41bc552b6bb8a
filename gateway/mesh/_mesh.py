"""The mesh: one door (a unix socket and its server) per running agent, opened on demand."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Final

import redis.asyncio as aioredis

from gateway.bus import Bus
from gateway.mesh._calls import ModelCalls
from gateway.mesh._server import SOCKET_NAME, Door
from gateway.settings import MeshSettings

SOCKET_PATH_MAX: Final = 107
"""Bytes in a unix socket path, the terminating NUL excluded (sun_path is 108 on Linux)."""

# A user id becomes a directory name: nothing that could climb out of socket_dir.
_USER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

log = logging.getLogger("stockade.mesh")


def socket_dir_of(socket_dir: Path, user_id: str) -> Path:
    """The directory holding `user_id`'s socket; refuses ids that are not a plain name."""
    if _USER_ID.fullmatch(user_id) is None:
        raise ValueError(f"not a valid user id for a socket directory: {user_id[:40]!r}")
    return socket_dir / user_id


class Mesh:
    """The agent-facing server: `open` a user's door before their agent starts, `close` after.

    `redis` (the bus's client) is where attachments wait and typing cues go; a mesh
    without it hands out messages and their file list but serves no files and
    announces no typing.
    """

    def __init__(
        self,
        bus: Bus,
        calls: ModelCalls,
        mesh: MeshSettings,
        socket_dir: Path,
        *,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self._bus = bus
        self._redis = redis
        self._calls = calls
        self._settings = mesh
        self._socket_dir = socket_dir
        self._doors: dict[str, Door] = {}
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        """Load the model client and prices now rather than on the first agent's first call."""
        await self._calls.warm()

    async def open(self, user_id: str) -> Path:
        """Listen on `user_id`'s socket; the directory to mount into the agent (idempotent).

        The directory is created 0700: whoever mounts it hands it to the agent's uid.
        The socket inside is 0666, so only that directory's permissions guard it.
        """
        directory = socket_dir_of(self._socket_dir, user_id)
        path = directory / SOCKET_NAME
        if len(bytes(path)) > SOCKET_PATH_MAX:
            raise ValueError(
                f"socket path {path} is {len(bytes(path))} bytes; unix sockets allow "
                f"{SOCKET_PATH_MAX}: choose a shorter socket directory"
            )
        async with self._lock:
            if user_id in self._doors:
                return directory
            self._socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            door = Door(user_id, path, self._bus, self._calls, self._settings, self._redis)
            await door.start()
            self._doors[user_id] = door
        log.info("opened the door of %s", user_id)
        return directory

    async def close(self, user_id: str) -> None:
        """Stop listening for `user_id`; their unfinished messages stay pending in Redis."""
        async with self._lock:
            door = self._doors.pop(user_id, None)
            if door is not None:
                await door.stop()
                log.info("closed the door of %s", user_id)

    async def cancel_turn(self, user_id: str) -> bool:
        """End `user_id`'s current turn now (/stop, /kill, /reset); True when one was in flight.

        Its model calls are cancelled and settled, its open message is answered
        "Stopped." and acked, and the agent's later model calls and replies for it
        are refused; the agent goes on with its next message. False when the user's
        door is not open here or no turn was in flight.
        """
        door = self._doors.get(user_id)
        if door is None:
            return False
        return await door.cancel_turn()

    async def requeue_open(self, user_id: str) -> int:
        """After `user_id`'s agent restarted: its unfinished messages are handed out again
        at its first poll, not after the bus's reclaim delay. The number requeued."""
        door = self._doors.get(user_id)
        return 0 if door is None else door.requeue_open()

    async def aclose(self) -> None:
        """Close every door."""
        async with self._lock:
            doors, self._doors = list(self._doors.values()), {}
            await asyncio.gather(*(door.stop() for door in doors))

    def is_open(self, user_id: str) -> bool:
        return user_id in self._doors
