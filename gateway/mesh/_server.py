"""One agent's door: an aiohttp server on that agent's own unix socket.

The socket is the agent's identity. Every request on it acts for the one user
the door was opened for; nothing in a request can name another user, a stream,
a conversation or a key. A file is handed out only while the message it came
with is open on this door.

The operator steers the door: while the user's agent is paused it hands out no
message and makes no model call, and `cancel_turn` ends the turn in progress
(its model calls are cut off, its messages answered "Stopped.").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import stat
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError, ResponseError

from gateway.bus import (
    Blobs,
    Bus,
    Delivery,
    TypingCue,
    agent_stream,
    announce_typing,
    out_stream,
)
from gateway.envelope import Inbound, reply
from gateway.errors import RedisUnavailable, StaleDelivery
from gateway.mesh._answers import TurnAnswers
from gateway.mesh._calls import ModelCalls
from gateway.mesh._controls import STOPPED_TEXT, stopped
from gateway.mesh._protocol import (
    ChatRequest,
    ProviderFailed,
    Rejected,
    error_body,
    next_body,
    no_such_file,
    parse_chat,
    parse_file_id,
    parse_json,
    parse_reply,
    parse_wait,
    refuse_credential_headers,
    reply_text,
)
from gateway.settings import MeshSettings

AGENT_GROUP: Final = "agent"
SOCKET_NAME: Final = "mesh.sock"

MAX_OPEN_TURNS: Final = 32
"""Messages handed out and not yet finished, per agent; the oldest is forgotten past this.

A well-behaved agent works on one at a time. A forgotten one stays pending in Redis
and comes back through the bus's reclaim path."""
MODEL_CALLS_PER_AGENT: Final = 4
"""Concurrent model calls one agent may have in flight; the rest wait their turn."""
_POLL_SLICE_S: Final = 1.0
"""A long poll waits on Redis in slices of this length, checking its agent is still there."""
_SHUTDOWN_S: Final = 1.0
"""How long closing a door lets requests in flight finish (long polls are ended at once)."""
_CUE_TIMEOUT_S: Final = 2.0
"""A typing cue not published by then is dropped: the indicator would come too late."""
_STOP_WAIT_S: Final = 2.0
MAX_ANSWERS: Final = 32
"""Model answers of the current turn kept per agent, for a restarted agent replaying it."""
"""How long stopping a turn waits for its cancelled model calls to wind down."""

log = logging.getLogger("stockade.mesh")


@dataclass(slots=True)
class _Turn:
    delivery: Delivery
    inbound: Inbound
    replies: int = 0


_USER: Final = web.AppKey("user_id", str)
_EVENT_STREAM: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _gone(request: web.Request) -> bool:
    """The agent closed the connection this request came on."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _user(request: web.Request) -> str:
    return request.app[_USER]


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The per-request task boundary: every failure becomes a JSON error without secrets."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Rejected as exc:
        return web.json_response(error_body(exc.kind, exc.message), status=exc.status)
    except web.HTTPException as exc:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        body = error_body(kind.get(exc.status, "http_error"), exc.reason)
        return web.json_response(body, status=exc.status)
    except RedisUnavailable:
        log.warning(
            "%s %s for %s: Redis is unavailable", request.method, request.path, _user(request)
        )
        return web.json_response(error_body("unavailable", "try again shortly"), status=503)
    except Exception as exc:  # the request boundary: log, answer 500, serve on
        log.error(
            "%s %s for %s failed: %s",
            request.method,
            request.path,
            _user(request),
            type(exc).__name__,
        )
        log.debug("traceback of the failed request", exc_info=True)
        return web.json_response(error_body("internal_error", "the mesh failed"), status=500)


def call_key(chat: ChatRequest) -> str:
    """Identifies a model call by what was asked: the model and every parameter."""
    canonical = json.dumps([chat.alias, chat.params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a call's failure as seen: the agent that asked may be gone."""
    if not task.cancelled():
        task.exception()


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
        self._redis = redis
        self._blobs = Blobs(redis) if redis is not None else None
        self._cues: set[asyncio.Task[None]] = set()
        self._calls = calls
        self._settings = settings
        self._stream = agent_stream(user_id)
        self._turns: OrderedDict[str, _Turn] = OrderedDict()
        self._next_lock = asyncio.Lock()
        self._model_slots = asyncio.Semaphore(MODEL_CALLS_PER_AGENT)
        self._runner: web.AppRunner | None = None
        self._polls: set[asyncio.Task[Any]] = set()
        self._unclaimed: deque[tuple[Delivery, Inbound]] = deque()
        self._calling: set[asyncio.Task[Any]] = set()
        """Handlers of model calls in flight (or waiting for a slot)."""
        self._stopping: set[asyncio.Task[Any]] = set()
        """Of those, the ones `cancel_turn` cancelled: they answer "stopped"."""
        self._stopped = False
        """A turn was stopped: model calls are refused until the next message is taken."""
        self._answers: OrderedDict[str, asyncio.Task[dict[str, Any]]] = OrderedDict()
        """The current turn's model calls by a hash of the request. An agent restarted in
        the middle of a turn replays it from its saved memory and sends the same requests:
        they get the first call's answer (or wait for it) instead of running, and being
        paid for, twice."""
        self._replaying = False
        """The turns were handed out again to a restarted agent (`requeue_open`), or the
        bus delivered the turn before (the mesh restarted too): only then is a repeated
        request answered from the first; otherwise an agent asking the same twice (for
        another sample) gets a new answer."""
        self._recorded = TurnAnswers(redis, user_id) if redis is not None else None
        """The current turn's answers in Redis, for a replay after the mesh restarted."""
        self._turn: str | None = None
        """The turn handed out last: the one the agent's model calls belong to."""

    def _app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._settings.max_request_bytes, middlewares=[_errors]
        )
        app[_USER] = self.user_id
        app.router.add_get("/v1/next", self._next)
        app.router.add_get("/v1/files/{blob}", self._file)
        app.router.add_post("/v1/reply", self._reply)
        app.router.add_post("/v1/chat/completions", self._chat)
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
        polls = [*self._polls, *self._cues]
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        self._turns.clear()
        self._unclaimed.clear()
        self._forget_answers()
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
        turns = list(self._turns.values())
        self._turns.clear()
        calls = list(self._calling)
        if not turns and not calls:
            return False
        # Before anything is awaited: no model call may start for the stopped turn.
        self._stopped = True
        self._forget_answers()
        for task in calls:
            self._stopping.add(task)
            task.cancel()
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

    def _absorb_stop(self) -> bool:
        """In a model call's handler that caught CancelledError: True when `cancel_turn`
        alone cancelled it, which is then answered rather than passed on."""
        task = asyncio.current_task()
        if task is None or task not in self._stopping:
            return False
        self._stopping.discard(task)
        return task.uncancel() == 0

    # -- request bodies ----------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        limit = self._settings.max_request_bytes
        too_large = Rejected(413, "too_large", f"the body is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        return parse_json(raw)

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
            while not _gone(request):
                if await self._calls.paused(self.user_id):
                    # Paused: nothing is handed out; the poll waits as if nothing came.
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, _POLL_SLICE_S))
                    continue
                if self._unclaimed:
                    return self._hand_out(*self._unclaimed.popleft())
                remaining = deadline - loop.time()
                # Short slices: a poll whose agent went away ends within one, and frees
                # the lock for the agent's next poll. 0 means "do not wait" to the bus.
                block_s = min(remaining, _POLL_SLICE_S)
                block_ms = max(1, int(block_s * 1000)) if block_s > 0 else 0
                for delivery in await self._read_one(block_ms):
                    inbound = await self._admit(delivery)
                    if inbound is None:
                        continue
                    if _gone(request):
                        # Read for an agent that left: keep it for the next poll.
                        self._unclaimed.append((delivery, inbound))
                        break
                    return self._hand_out(delivery, inbound)
                if loop.time() >= deadline:
                    break
        return web.Response(status=204)

    def requeue_open(self) -> int:
        """Hand the open turns out again at the next poll: their agent was restarted
        and lost them. The number requeued."""
        waiting = {delivery.entry_id for delivery, _ in self._unclaimed}
        requeued = 0
        for turn in self._turns.values():
            if turn.delivery.entry_id not in waiting:
                self._unclaimed.append((turn.delivery, turn.inbound))
                requeued += 1
        self._replaying = self._replaying or requeued > 0
        return requeued

    def _forget_answers(self) -> None:
        for task in self._answers.values():
            task.cancel()
        self._answers.clear()

    def _hand_out(self, delivery: Delivery, inbound: Inbound) -> web.Response:
        self._stopped = False
        if delivery.entry_id not in self._turns:
            # A new turn: the last one's answers can never be asked for again. One the
            # bus delivered before may have called the model before a restart.
            self._answers.clear()
            self._replaying = delivery.deliveries > 1
        message_id = self._remember(delivery, inbound)
        self._turn = message_id
        self._announce(message_id, inbound)
        return web.json_response(next_body(message_id, inbound))

    def _announce(self, message_id: str, inbound: Inbound) -> None:
        """Tell the message's channel the agent is on it, once the turn has taken
        `typing_after_s`, without making the agent wait.

        A quicker answer shows no indicator: it would only flash, and each cue costs a
        Redis publish here and a platform call in the channel."""
        if self._redis is None:
            return
        cue = TypingCue(
            inbound.channel, inbound.conversation_id, inbound.thread_id, inbound.event_id
        )
        task = asyncio.create_task(self._send_cue(self._redis, message_id, cue))
        self._cues.add(task)
        task.add_done_callback(self._cues.discard)

    async def _send_cue(self, redis: aioredis.Redis, message_id: str, cue: TypingCue) -> None:
        await asyncio.sleep(self._settings.typing_after_s)
        if message_id not in self._turns:
            return  # answered already
        try:
            async with asyncio.timeout(_CUE_TIMEOUT_S):
                await announce_typing(redis, cue)
        except (RedisUnavailable, RedisError, TimeoutError, OSError) as exc:
            # A lost cue loses an indicator only; the hand-out never hears of it.
            log.debug(
                "no typing cue for %s on %s: %s", self.user_id, cue.channel, type(exc).__name__
            )

    def _remember(self, delivery: Delivery, inbound: Inbound) -> str:
        message_id = delivery.entry_id
        turn = self._turns.pop(message_id, None)
        if turn is None:
            turn = _Turn(delivery, inbound)
        else:
            turn.delivery = delivery  # a redelivery: its count is newer
        self._turns[message_id] = turn
        while len(self._turns) > MAX_OPEN_TURNS:
            self._turns.popitem(last=False)
        return message_id

    # -- GET /v1/files/{blob} ----------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        try:
            blob = parse_file_id(request.match_info["blob"])
        except Rejected:
            log.warning("%s asked for a file by a malformed id", self.user_id)
            raise
        if not self._holds(blob):
            log.warning(
                "%s asked for file %s..., which no open message of theirs holds",
                self.user_id,
                blob[:12],
            )
            raise no_such_file()
        if self._blobs is None:
            raise Rejected(503, "unavailable", "this mesh keeps no files")
        data = await self._blobs.get(blob)
        if data is None:
            log.info("file %s... of %s expired before it was fetched", blob[:12], self.user_id)
            raise Rejected(410, "gone", "the file expired before it was fetched")
        log.info("file %s... (%d bytes) to %s", blob[:12], len(data), self.user_id)
        return web.Response(body=data, content_type="application/octet-stream")

    def _holds(self, blob: str) -> bool:
        """`blob` came with a message handed out to this agent and not yet finished."""
        return any(
            attachment.blob == blob
            for turn in self._turns.values()
            for attachment in turn.inbound.attachments
        )

    # -- POST /v1/reply ----------------------------------------------------------------

    async def _reply(self, request: web.Request) -> web.Response:
        request_body = parse_reply(await self._body(request))
        turn = self._turns.get(request_body.message_id)
        if turn is None:
            raise Rejected(404, "unknown_message", "no open message has this id")
        text = reply_text(request_body.text, self._settings.max_reply_chars)
        stream = out_stream(turn.inbound.channel)
        sent = bool(text.strip())
        if request_body.final:
            self._turns.pop(request_body.message_id, None)
            try:
                if sent:
                    envelope = reply(turn.inbound, text, "final", self.user_id)
                    # The reply and the ack in one step: the turn is done exactly once.
                    await self._bus.forward(turn.delivery, stream, envelope)
                else:
                    await self._bus.ack(turn.delivery)
            except StaleDelivery:
                raise Rejected(
                    404, "unknown_message", "this message was already finished"
                ) from None
            except BaseException:
                self._turns.setdefault(request_body.message_id, turn)
                raise
        elif sent:
            turn.replies += 1
            envelope = reply(turn.inbound, text, f"r{turn.replies}", self.user_id)
            await self._bus.publish(stream, envelope, dedupe=envelope.outbound_id)
        log.info(
            "reply from %s to %s (final=%s, sent=%s, %d chars)",
            self.user_id,
            request_body.message_id,
            request_body.final,
            sent,
            len(text),
        )
        return web.json_response({"ok": True, "sent": sent})

    # -- POST /v1/chat/completions -----------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # aiohttp runs every handler in a task of its own
            return await self._chat_call(request)
        self._calling.add(task)
        try:
            return await self._chat_call(request)
        except asyncio.CancelledError:
            if not self._absorb_stop():
                raise
            raise stopped() from None
        finally:
            self._calling.discard(task)
            self._stopping.discard(task)

    async def _chat_call(self, request: web.Request) -> web.StreamResponse:
        refuse_credential_headers(request.headers.keys())
        if self._stopped:
            raise stopped()
        body = await self._body(request)
        chat = parse_chat(body, await self._calls.choices(self.user_id))
        if not chat.stream:
            return web.json_response(await self._answer_once(chat))
        async with self._model_slots:
            if self._stopped:
                raise stopped()
            return await self._chat_stream(request, chat)

    async def _answer_once(self, chat: ChatRequest) -> dict[str, Any]:
        """The answer to `chat`, from the turn's identical call if there was one."""
        key = call_key(chat)
        task = self._answers.get(key) if self._replaying else None
        if task is not None and task.done() and (task.cancelled() or task.exception()):
            task = None  # a failed call answers nothing: this one is made afresh
        if task is None:
            task = asyncio.create_task(self._call_model(chat, key))
            task.add_done_callback(_retrieve)
            self._answers[key] = task
            self._answers.move_to_end(key)
            while len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
        else:
            log.info("%s repeated a model call of this turn: answered from the first", self.user_id)
        # Shielded: an agent that dies waiting leaves the call to finish for its successor.
        return await asyncio.shield(task)

    async def _call_model(self, chat: ChatRequest, key: str) -> dict[str, Any]:
        turn, recorded = self._turn, self._recorded
        if self._replaying and turn is not None and recorded is not None:
            earlier = await recorded.recall(turn, key)
            if earlier is not None:
                log.info(
                    "%s repeated a model call of a turn begun before a restart: answered "
                    "from the record",
                    self.user_id,
                )
                return earlier
        async with self._model_slots:
            if self._stopped:
                raise stopped()
            answer = await self._calls.chat(self.user_id, chat, self._notify)
        if turn is not None and recorded is not None:
            # Before the agent has it: a replay after a restart finds it.
            await recorded.record(turn, key, answer)
        return answer

    async def _chat_stream(self, request: web.Request, chat: ChatRequest) -> web.StreamResponse:
        """Server-sent events, as OpenAI sends them; an agent that hangs up ends the call."""
        response: web.StreamResponse | None = None
        async with contextlib.aclosing(
            self._calls.stream(self.user_id, chat, self._notify)
        ) as chunks:
            try:
                async for chunk in chunks:
                    if response is None:
                        response = web.StreamResponse(headers=_EVENT_STREAM)
                        await response.prepare(request)
                    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            except ProviderFailed as failure:
                if response is None:
                    raise  # nothing sent yet: an ordinary JSON error
                # Mid-stream: the status is sent already; the error travels as an event.
                body = error_body(failure.kind, failure.message)
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
            except ConnectionResetError:
                log.info("%s hung up during a streamed answer", self.user_id)
                return response or web.Response(status=499)
            except asyncio.CancelledError:
                if response is None or not self._absorb_stop():
                    raise
                # Stopped mid-stream: the status is sent already; the refusal is an event.
                refusal = stopped()
                body = error_body(refusal.kind, refusal.message)
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        if response is None:  # a provider that sent no chunk at all
            response = web.StreamResponse(headers=_EVENT_STREAM)
            await response.prepare(request)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _notify(self, text: str) -> None:
        """Tell the user something from the gateway (a budget warning), in their latest chat."""
        turn = next(reversed(self._turns.values()), None)
        if turn is None:
            log.warning("no open message of %s to attach a notice to", self.user_id)
            return
        suffix = "notice-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        envelope = reply(turn.inbound, text, suffix, self.user_id)
        try:
            await self._bus.publish(
                out_stream(turn.inbound.channel), envelope, dedupe=envelope.outbound_id
            )
        except RedisUnavailable:
            log.warning("could not send a notice to %s: Redis is unavailable", self.user_id)
