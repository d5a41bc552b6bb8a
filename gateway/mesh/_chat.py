"""One door's chat endpoint: the agent's model calls, each answered once per turn.

An agent restarted in the middle of a turn replays it from its saved memory and sends
the same requests again; while the turn is replayed, a repeated request gets the first
call's answer (or waits for it) instead of running, and being paid for, twice. A
streamed call is never repeated from an answer: it runs as asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from typing import Any, Final

import redis.asyncio as aioredis
from aiohttp import web

from gateway.bus import Bus, Delivery, out_stream
from gateway.envelope import reply
from gateway.errors import RedisUnavailable
from gateway.mesh._answers import TurnAnswers
from gateway.mesh._calls import ModelCalls
from gateway.mesh._controls import stopped
from gateway.mesh._http import read_body
from gateway.mesh._protocol import (
    ChatRequest,
    ProviderFailed,
    error_body,
    parse_chat,
    refuse_credential_headers,
)
from gateway.mesh._turns import OpenTurns

MODEL_CALLS_PER_AGENT: Final = 4
"""Concurrent model calls one agent may have in flight; the rest wait their turn."""
MAX_ANSWERS: Final = 32
"""Model answers of the current turn kept per agent, for a restarted agent replaying it."""

_EVENT_STREAM: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

log = logging.getLogger("stockade.mesh")


def call_key(chat: ChatRequest) -> str:
    """Identifies a model call by what was asked: the model and every parameter."""
    canonical = json.dumps([chat.alias, chat.params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a call's failure as seen: the agent that asked may be gone."""
    if not task.cancelled():
        task.exception()


class Chat:
    """POST /v1/chat/completions for one agent, and what it keeps of the current turn's calls.

    `redis` keeps the turn's answers for a replay after the mesh restarted; without it
    only the answers in memory are reused.
    """

    def __init__(
        self,
        user_id: str,
        calls: ModelCalls,
        bus: Bus,
        turns: OpenTurns,
        max_request_bytes: int,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self._user_id = user_id
        self._calls = calls
        self._bus = bus
        self._turns = turns
        self._max_request_bytes = max_request_bytes
        self._model_slots = asyncio.Semaphore(MODEL_CALLS_PER_AGENT)
        self._calling: set[asyncio.Task[Any]] = set()
        """Handlers of model calls in flight (or waiting for a slot)."""
        self._stopping: set[asyncio.Task[Any]] = set()
        """Of those, the ones `stop` cancelled: they answer "stopped"."""
        self._stopped = False
        """A turn was stopped: model calls are refused until the next message is taken."""
        self._answers: OrderedDict[str, asyncio.Task[dict[str, Any]]] = OrderedDict()
        """The current turn's model calls by `call_key`."""
        self._replaying = False
        """The turns were handed out again to a restarted agent (`replay`), or the bus
        delivered the turn before (the mesh restarted too): only then is a repeated
        request answered from the first; otherwise an agent asking the same twice (for
        another sample) gets a new answer."""
        self._recorded = TurnAnswers(redis, user_id) if redis is not None else None
        """The current turn's answers in Redis, for a replay after the mesh restarted."""
        self._turn: str | None = None
        """The turn handed out last: the one the agent's model calls belong to."""

    # -- what the door tells it ----------------------------------------------------------

    def take(self, delivery: Delivery, *, new_turn: bool) -> None:
        """The agent took `delivery`'s message: its model calls belong to that turn now."""
        self._stopped = False
        if new_turn:
            # The last turn's answers can never be asked for again. A turn the bus
            # delivered before may have called the model before a restart.
            self._answers.clear()
            self._replaying = delivery.deliveries > 1
        self._turn = delivery.entry_id

    def replay(self) -> None:
        """The open turns go out again to a restarted agent: its repeated calls are
        answered from the first."""
        self._replaying = True

    def in_flight(self) -> list[asyncio.Task[Any]]:
        """The handlers of the model calls in flight (or waiting for a slot)."""
        return [*self._calling]

    def stop(self, calls: list[asyncio.Task[Any]]) -> None:
        """Stop the turn: refuse its model calls from now and cancel `calls`, which then
        answer "stopped". Nothing is awaited."""
        self._stopped = True
        self.forget_answers()
        for task in calls:
            self._stopping.add(task)
            task.cancel()

    def forget_answers(self) -> None:
        for task in self._answers.values():
            task.cancel()
        self._answers.clear()

    # -- POST /v1/chat/completions -----------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
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

    def _absorb_stop(self) -> bool:
        """In a model call's handler that caught CancelledError: True when `stop`
        alone cancelled it, which is then answered rather than passed on."""
        task = asyncio.current_task()
        if task is None or task not in self._stopping:
            return False
        self._stopping.discard(task)
        return task.uncancel() == 0

    async def _chat_call(self, request: web.Request) -> web.StreamResponse:
        refuse_credential_headers(request.headers.keys())
        if self._stopped:
            raise stopped()
        body = await read_body(request, self._max_request_bytes)
        chat = parse_chat(body, await self._calls.choices(self._user_id))
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
            log.info(
                "%s repeated a model call of this turn: answered from the first", self._user_id
            )
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
                    self._user_id,
                )
                return earlier
        async with self._model_slots:
            if self._stopped:
                raise stopped()
            answer = await self._calls.chat(self._user_id, chat, self._notify)
        if turn is not None and recorded is not None:
            # Before the agent has it: a replay after a restart finds it.
            await recorded.record(turn, key, answer)
        return answer

    async def _chat_stream(self, request: web.Request, chat: ChatRequest) -> web.StreamResponse:
        """Server-sent events, as OpenAI sends them; an agent that hangs up ends the call."""
        response: web.StreamResponse | None = None
        async with contextlib.aclosing(
            self._calls.stream(self._user_id, chat, self._notify)
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
                log.info("%s hung up during a streamed answer", self._user_id)
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
        turn = self._turns.latest()
        if turn is None:
            log.warning("no open message of %s to attach a notice to", self._user_id)
            return
        suffix = "notice-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        envelope = reply(turn.inbound, text, suffix, self._user_id)
        try:
            await self._bus.publish(
                out_stream(turn.inbound.channel), envelope, dedupe=envelope.outbound_id
            )
        except RedisUnavailable:
            log.warning("could not send a notice to %s: Redis is unavailable", self._user_id)
