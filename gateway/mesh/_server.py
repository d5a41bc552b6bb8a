"""One agent's door: an aiohttp server on that agent's own unix socket.

The socket is the agent's identity. Every request on it acts for the one user
the door was opened for; nothing in a request can name another user, a stream,
a conversation or a key. A file is handed out only while the message it came
with is open on this door.

The operator steers the door: while the user's agent is paused it hands out no
message and makes no model call, and `cancel_turn` ends the turn in progress
(its model calls are cut off, its messages answered "Stopped.").

The door composes its parts: the open turns (`_turns`), their typing cues
(`_typing`), the chat endpoint (`_chat`) and the reply and file endpoints
(`_replies`); the error middleware and request bodies are in `_http`.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError

from gateway.bus import Blobs, Bus, Delivery, agent_stream, out_stream
from gateway.envelope import Inbound, reply
from gateway.errors import RedisUnavailable, StaleDelivery
from gateway.mesh._calls import ModelCalls
from gateway.mesh._chat import Chat
from gateway.mesh._controls import STOPPED_TEXT
from gateway.mesh._http import USER, errors, gone
from gateway.mesh._protocol import (
    next_body,
    parse_wait,
)
from gateway.mesh._replies import Replies
from gateway.mesh._turns import OpenTurns
from gateway.mesh._typing import Typing
from gateway.settings import MeshSettings

AGENT_GROUP: Final = "agent"
SOCKET_NAME: Final = "mesh.sock"

_POLL_SLICE_S: Final = 1.0
"""A long poll waits on Redis in slices of this length, checking its agent is still there."""
_SHUTDOWN_S: Final = 1.0
"""How long closing a door lets requests in flight finish (long polls are ended at once)."""
_STOP_WAIT_S: Final = 2.0
"""How long stopping a turn waits for its cancelled model calls to wind down."""

log = logging.getLogger("stockade.mesh")


class Door:
    """The server on one agent's socket, and what it remembers about that agent's turns.

    `redis` holds the attachments' blobs and carries typing cues; without it the door
    serves no files (503) and announces nothing.
    """

    def __init__(
        self,
        user_id: str,
        path: Path,
        bus: Bus,
        calls: ModelCalls,
        settings: MeshSettings,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.user_id = user_id
        self.path = path
        self._bus = bus
        self._calls = calls
        self._settings = settings
        self._stream = agent_stream(user_id)
        self._turns = OpenTurns()
        self._typing = Typing(user_id, redis, settings.typing_after_s, self._turns)
        self._chat = Chat(user_id, calls, bus, self._turns, settings.max_request_bytes, redis)
        blobs = Blobs(redis) if redis is not None else None
        self._replies = Replies(user_id, bus, self._turns, settings, blobs)
        self._next_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._polls: set[asyncio.Task[Any]] = set()

    def _app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._settings.max_request_bytes, middlewares=[errors]
        )
        app[USER] = self.user_id
        app.router.add_get("/v1/next", self._next)
        app.router.add_get("/v1/files/{blob}", self._replies.file)
        app.router.add_post("/v1/reply", self._replies.reply)
        app.router.add_post("/v1/chat/completions", self._chat.handle)
        return app

    async def start(self) -> None:
        await self._bus.ensure_group(self._stream, AGENT_GROUP)
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=_SHUTDOWN_S)
        await runner.setup()
        try:
            await web.UnixSite(runner, str(self.path)).start()
            # The agent (another uid) must be able to connect. chmod follows symlinks, so
            # it runs only on the socket we just bound; the agent sees this directory
            # through a read-only mount and cannot swap anything in.
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"{self.path} is not the socket just bound")
            self.path.chmod(0o666)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        # Long polls end now rather than at the shutdown timeout; what one of them had
        # just read stays pending in Redis and is reclaimed later.
        polls = [*self._polls, *self._typing.pending()]
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        self._turns.clear()
        self._chat.forget_answers()
        try:
            self.path.unlink(missing_ok=True)
        except PermissionError:
            log.warning("could not remove the socket of %s: permission denied", self.user_id)

    async def cancel_turn(self) -> bool:
        """End the turn in progress now; True when there was one (or a model call).

        Its model calls are cancelled (their reservations settle as any cancelled
        call's do), its open messages are answered "Stopped." and acked, and the
        agent's further model calls and replies for them are refused until it takes
        its next message. RedisUnavailable when a message could not be finished: it
        stays pending and comes back through the bus's reclaim path.
        """
        turns = self._turns.take_all()
        calls = self._chat.in_flight()
        if not turns and not calls:
            return False
        # Before anything is awaited: no model call may start for the stopped turn.
        self._chat.stop(calls)
        unfinished = 0
        for turn in turns:
            envelope = reply(turn.inbound, STOPPED_TEXT, "final", self.user_id)
            try:
                await self._bus.forward(turn.delivery, out_stream(turn.inbound.channel), envelope)
            except StaleDelivery:
                log.info("stopped %s: it was already finished", turn.delivery.entry_id)
            except RedisUnavailable:
                unfinished += 1
        if calls:
            await asyncio.wait(calls, timeout=_STOP_WAIT_S)
        log.info(
            "stopped the turn of %s: %d message(s) answered, %d model call(s) cancelled",
            self.user_id,
            len(turns) - unfinished,
            len(calls),
        )
        if unfinished:
            raise RedisUnavailable(f"{unfinished} stopped message(s) not answered")
        return True

    def requeue_open(self) -> int:
        """Hand the open turns out again at the next poll: their agent was restarted
        and lost them. The number requeued."""
        requeued = self._turns.requeue()
        if requeued > 0:
            self._chat.replay()
        return requeued

    # -- GET /v1/next ------------------------------------------------------------------

    async def _read_one(self, block_ms: int) -> list[Delivery]:
        try:
            return await self._bus.read(
                self._stream, AGENT_GROUP, self.user_id, count=1, block_ms=block_ms
            )
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # The stream was deleted (a reset): start again from an empty group.
            await self._bus.ensure_group(self._stream, AGENT_GROUP)
            return []

    async def _admit(self, delivery: Delivery) -> Inbound | None:
        inbound = delivery.envelope
        if isinstance(inbound, Inbound) and inbound.user_id == self.user_id:
            return inbound
        # Never hand an agent anything that is not a message routed to its own user.
        log.error(
            "entry %s of %s is not a message for %s", delivery.entry_id, self._stream, self.user_id
        )
        await self._bus.fail(delivery, "not an inbound message routed to this stream's user")
        return None

    async def _next(self, request: web.Request) -> web.Response:
        wait = parse_wait(request.query.get("wait"), self._settings.next_wait_s)
        deadline = asyncio.get_running_loop().time() + wait
        task = asyncio.current_task()
        if task is None:  # aiohttp runs every handler in a task of its own
            return await self._wait_for_next(request, deadline)
        self._polls.add(task)
        try:
            return await self._wait_for_next(request, deadline)
        finally:
            self._polls.discard(task)

    async def _wait_for_next(self, request: web.Request, deadline: float) -> web.Response:
        loop = asyncio.get_running_loop()
        async with self._next_lock:
            while not gone(request):
                if await self._calls.paused(self.user_id):
                    # Paused: nothing is handed out; the poll waits as if nothing came.
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, _POLL_SLICE_S))
                    continue
                waiting = self._turns.unclaimed()
                if waiting is not None:
                    return self._hand_out(*waiting)
                remaining = deadline - loop.time()
                # Short slices: a poll whose agent went away ends within one, and frees
                # the lock for the agent's next poll. 0 means "do not wait" to the bus.
                block_s = min(remaining, _POLL_SLICE_S)
                block_ms = max(1, int(block_s * 1000)) if block_s > 0 else 0
                for delivery in await self._read_one(block_ms):
                    inbound = await self._admit(delivery)
                    if inbound is None:
                        continue
                    if gone(request):
                        # Read for an agent that left: keep it for the next poll.
                        self._turns.park(delivery, inbound)
                        break
                    return self._hand_out(delivery, inbound)
                if loop.time() >= deadline:
                    break
        return web.Response(status=204)

    def _hand_out(self, delivery: Delivery, inbound: Inbound) -> web.Response:
        self._chat.take(delivery, new_turn=delivery.entry_id not in self._turns)
        message_id = self._turns.remember(delivery, inbound)
        self._typing.announce(message_id, inbound)
        return web.json_response(next_body(message_id, inbound))
