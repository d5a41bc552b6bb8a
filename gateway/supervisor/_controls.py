"""Carries out the operator controls of the control stream on this host, and reports each.

The rules and the stream reader are in `_control`; this is the I/O around them: agents
stopped under the lock the reconcile pass holds, an audit line and a notice for each
control done, and the loop that reads, retries and acks the stream in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway._aio import raise_if_cancelling
from gateway.audit import AuditLog
from gateway.bus import Bus, out_stream
from gateway.controls import EVERYONE, Control
from gateway.envelope import Outbound
from gateway.errors import EnvelopeError, RedisUnavailable, StockadeError
from gateway.supervisor import _control, _spec
from gateway.supervisor._door import MeshDoor
from gateway.supervisor._fleet import Fleet
from gateway.supervisor._runtime import Runtime

_CONTROL_BATCH: Final = 10
_CONTROL_BLOCK_MS: Final = 1000
"""Below redis-py's default socket timeout of 5 s, so a quiet stream is no lost link."""
_CONTROL_ATTEMPTS: Final = 3
"""A control that fails this often (the engine refusing) is logged and dropped."""
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0

log = logging.getLogger("stockade.supervisor")


class StopAgent(Protocol):
    """The supervisor's way to remove a user's container and close their door."""

    async def __call__(self, user_id: str, *, forget: bool) -> None: ...


class Controls:
    """One supervisor's operator controls: kill, reset, stop, pause and resume."""

    def __init__(
        self,
        client: aioredis.Redis,
        bus: Bus,
        runtime: Runtime,
        mesh: MeshDoor,
        fleet: Fleet,
        stop: StopAgent,
    ) -> None:
        self._client = client
        self._bus = bus
        self._runtime = runtime
        self._mesh = mesh
        self._fleet = fleet
        self._stop = stop
        self._audit = AuditLog(client)

    async def _end_turn(self, user_id: str) -> bool:
        return await self._mesh.cancel_turn(user_id)

    async def apply(self, control: Control, age_s: float = 0.0) -> _control.Outcome:
        """Carry out one control on this host; what it did."""
        if not _control.still_due(control, age_s):
            log.info("not stopping the turn of %s: the request is %.0f s old", control.user, age_s)
            return _control.Outcome(too_late=True)
        user_id = control.user
        if control.action == "stop":
            return _control.Outcome(turn_ended=await self._end_turn(user_id))
        if control.action == "resume":
            # The router cleared the pause keys before sending this: a pass starts them.
            self._fleet.kick.set()
            return _control.Outcome()
        async with self._fleet.lock:
            if control.action == "pause":
                if user_id == EVERYONE:
                    users = [c.user_id for c in await self._runtime.agents() if c.user_id]
                else:
                    users = [user_id] if await self._runtime.get(user_id) else []
                for each in users:
                    await self._stop(each, forget=False)
                self._fleet.running -= set(users)
                self._fleet.paused_out.update(users)
                if user_id == EVERYONE:
                    removed = len(self._fleet.paused_out)
                else:
                    removed = int(user_id in self._fleet.paused_out)
                log.info("paused %d agent(s) for %s", removed, control.by)
                outcome = _control.Outcome(removed=removed)
            else:
                ended = await self._end_turn(user_id)
                had = await self._runtime.get(user_id) is not None
                await self._stop(user_id, forget=True)
                self._fleet.running -= {user_id}
                if control.action == "reset":
                    await self._runtime.remove_workspace(user_id)
                log.info("%s: the agent of %s, for %s", control.action, user_id, control.by)
                outcome = _control.Outcome(removed=int(had), turn_ended=ended)
        self._fleet.kick.set()  # the status shows the change at once
        return outcome

    async def _report(self, control: Control, outcome: _control.Outcome) -> None:
        if outcome.removed or outcome.turn_ended:
            # What was really done on this host, beside the request the router audited.
            detail = f"{outcome.removed} removed, turn ended: {outcome.turn_ended}"
            await self._audit.append(
                control.by,
                f"{control.action}.done",
                control.user,
                f"{detail}; request {control.request_id}",
            )
        text = _control.notice(control, outcome)
        if not control.notify_channel or not text:
            return
        outbound_id = f"control:{control.request_id}"
        notice = Outbound(
            channel=control.notify_channel,
            conversation_id=control.notify_conversation,
            thread_id=control.notify_thread,
            text=text,
            outbound_id=outbound_id,
            user_id=control.by,
        )
        # Deduplicated by the request: a control read again (or by a second host) reports once.
        await self._bus.publish(out_stream(notice.channel), notice, dedupe=outbound_id)

    async def _handle_control(
        self, feed: _control.ControlFeed, entry: _control.Entry, now_ms: int
    ) -> None:
        entry_id, fields = entry
        try:
            if fields is None:
                raise EnvelopeError("the entry was trimmed before it was read")
            control = Control.from_fields(fields)
            if control.user != EVERYONE:
                _spec.check_user_id(control.user)
        except (EnvelopeError, ValueError, AttributeError) as exc:
            # AttributeError: JSON that is no object. Retrying cannot repair it: it is
            # dropped, so it never holds up the controls after it.
            log.warning("dropping malformed control %s: %s", entry_id, exc)
            await feed.ack(entry_id)
            return
        outcome = await self.apply(control, _control.entry_age_s(entry_id, now_ms))
        await self._report(control, outcome)
        await feed.ack(entry_id)

    async def consume(self, consumer: str) -> None:
        """Carry out the controls of the stream until cancelled; each is acked once done."""
        feed: _control.ControlFeed | None = None
        attempts: dict[str, int] = {}
        backoff = _BACKOFF_MIN_S
        outage = False
        while True:
            raise_if_cancelling()
            try:
                if feed is None:
                    group = _control.control_group(await self._runtime.engine_id())
                    feed = _control.ControlFeed(self._client, group, consumer)
                    await feed.ensure_group()
                entries = await feed.read(_CONTROL_BATCH, _CONTROL_BLOCK_MS)
                if outage:
                    log.info("Redis answers again; the supervisor reads controls")
                    outage = False
                backoff = _BACKOFF_MIN_S
                if not entries:
                    continue
                now_ms = await feed.now_ms()
                for entry in entries:
                    try:
                        await self._handle_control(feed, entry, now_ms)
                    except (RedisConnectionError, RedisTimeoutError, RedisUnavailable):
                        raise
                    except Exception as exc:  # noqa: BLE001 - task boundary: log, retry, go on
                        entry_id = entry[0]
                        attempts[entry_id] = attempts.get(entry_id, 0) + 1
                        detail = str(exc) if isinstance(exc, StockadeError) else ""
                        log.warning(
                            "control %s failed (attempt %d): %s %s",
                            entry_id,
                            attempts[entry_id],
                            type(exc).__name__,
                            detail,
                        )
                        if attempts[entry_id] >= _CONTROL_ATTEMPTS:
                            log.error(
                                "dropping control %s after %d attempts", entry_id, _CONTROL_ATTEMPTS
                            )
                            await feed.ack(entry_id)
                            attempts.pop(entry_id, None)
                        else:
                            feed.retry()
                            await asyncio.sleep(backoff)
                            backoff = min(backoff * 2, _BACKOFF_MAX_S)
                        break  # controls keep their order: nothing after a failed one yet
                    else:
                        attempts.pop(entry[0], None)
            except (RedisConnectionError, RedisTimeoutError, RedisUnavailable) as exc:
                if not outage:
                    log.warning("Redis is unavailable (%s); controls wait", type(exc).__name__)
                    outage = True
                if feed is not None:
                    feed.retry()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            except ResponseError as exc:
                # NOGROUP: the stream or group was deleted; made again on the next turn.
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                log.warning("the control group disappeared; creating it again")
                feed = None
