"""The supervisor: one container per user, started on demand, restarted on crash, stopped when idle.

It reconciles what should run (users with recent messages, kept in Redis) with
what does run (containers found by their labels), so a restarted gateway adopts
its running agents and removes any it no longer wants: nothing is leaked. It also
carries out operator controls (kill, reset, stop, pause, resume) from the control
stream, and writes each agent's status to Redis for the router to show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway._aio import raise_if_cancelling
from gateway.audit import AuditLog
from gateway.bus import WAKE_STREAM, Bus, Delivery, agent_stream, by_sender, out_stream
from gateway.controls import EVERYONE, PAUSED_ALL_KEY, PAUSED_KEY, Control
from gateway.envelope import Inbound, Outbound
from gateway.errors import EnvelopeError, RedisUnavailable, StockadeError
from gateway.mesh import AGENT_GROUP
from gateway.settings import SupervisorSettings
from gateway.supervisor import _control, _spec, _status
from gateway.supervisor._runtime import AgentContainer, ContainerUsage, Runtime

WAKE_GROUP: Final = "supervisor"
WANTED_KEY: Final = "stockade:supervisor:wanted"
CONTACT_KEY: Final = "stockade:supervisor:contact"
DEPLOYMENT_KEY: Final = "stockade:deployment"


async def deployment_id(client: aioredis.Redis) -> str:
    """This deployment's id: made once, kept in its Redis, shared by all its supervisors."""
    await client.set(DEPLOYMENT_KEY, secrets.token_hex(8), nx=True)
    value = await client.get(DEPLOYMENT_KEY)
    if value is None:
        raise StockadeError("the deployment id vanished from Redis right after it was set")
    return value.decode() if isinstance(value, bytes) else str(value)


_CRASH_BACKOFF_MAX_S: Final = 60.0
_SAMPLE_EVERY_S: Final = 30.0
"""Memory is measured this often at most: the engine answers each container's stats
request at its next one-second collection tick, and each answer is parsed in a thread
that takes the interpreter lock from the event loop (with 50 agents, every 5 s was 10
parses a second beside the mesh)."""
_CONTROL_BATCH: Final = 10
_CONTROL_BLOCK_MS: Final = 1000
"""Below redis-py's default socket timeout of 5 s, so a quiet stream is no lost link."""
_CONTROL_ATTEMPTS: Final = 3
"""A control that fails this often (the engine refusing) is logged and dropped."""
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0

log = logging.getLogger("stockade.supervisor")


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


def crash_notice(container: AgentContainer) -> str:
    reason = "it ran out of memory" if container.oom_killed else f"exit {container.exit_code}"
    return f"Your agent stopped unexpectedly ({reason}) and has been restarted."


class Supervisor:
    def __init__(
        self,
        client: aioredis.Redis,
        bus: Bus,
        runtime: Runtime,
        mesh: MeshDoor,
        image: str,
        settings: SupervisorSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._bus = bus
        self._runtime = runtime
        self._mesh = mesh
        self._image = image
        self._settings = settings
        self._clock = clock
        self._audit = AuditLog(client)
        self._kick = asyncio.Event()
        self._restarts: dict[str, tuple[int, float]] = {}
        self._running: frozenset[str] = frozenset()
        """Users whose container the last pass found running."""
        self._spec_hashes: dict[str, str] = {}
        """Each user's current spec hash; settings and image are fixed for a supervisor."""
        self._lock = asyncio.Lock()
        """Held by a pass and by a control, so neither acts on what the other changes."""
        self._containers: list[AgentContainer] = []
        self._wanted_users: frozenset[str] = frozenset()
        self._paused: frozenset[str] | None = frozenset()
        """What the last pass saw, for the status; None in `_paused`: everyone is paused."""
        self._usage: dict[str, ContainerUsage] = {}
        """The last measurement of each running container, by container id."""
        self._paused_out: set[str] = set()
        """Users whose container a pause removed, until it starts again. The router sets
        the pause keys before it sends the control, so a pass may stop the agents first:
        the control's report counts them all the same."""

    async def handle_wake(self, delivery: Delivery) -> None:
        inbound = delivery.envelope
        if not isinstance(inbound, Inbound) or not inbound.user_id:
            raise EnvelopeError("a wake entry must be a routed inbound envelope")
        _spec.check_user_id(inbound.user_id)
        contact = {
            "channel": inbound.channel,
            "conversation_id": inbound.conversation_id,
            "thread_id": inbound.thread_id,
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(WANTED_KEY, inbound.user_id, repr(self._clock()))
            pipe.hset(CONTACT_KEY, inbound.user_id, json.dumps(contact))
            await pipe.execute()
        # A pass lists every container (tens of ms of engine work): not for each message
        # to an agent already running. A crash since is found by the next timed pass.
        if inbound.user_id not in self._running:
            self._kick.set()

    async def _wanted(self) -> dict[str, float]:
        raw = await self._client.hgetall(WANTED_KEY)
        wanted: dict[str, float] = {}
        for key, value in raw.items():
            user = key.decode() if isinstance(key, bytes) else str(key)
            try:
                wanted[user] = float(value)
            except ValueError:
                wanted[user] = 0.0
        return wanted

    async def _has_work(self, user_id: str) -> bool:
        return await self._bus.lag(agent_stream(user_id), AGENT_GROUP) > 0

    async def _open_door(self, user_id: str) -> Path:
        mesh_dir = await self._mesh.open(user_id)
        # Root's, and mounted read-only: the agent ("nobody") may enter it and connect to
        # its socket, never write there. The directory above stays closed to others.
        mesh_dir.chmod(0o755)
        return mesh_dir

    async def _spec_of(self, user_id: str) -> dict[str, Any]:
        mesh_dir = await self._open_door(user_id)
        limits = self._settings.overrides.get(user_id, self._settings.limits)
        spec = _spec.container_spec(
            self._runtime.deployment, user_id, self._image, limits, mesh_dir
        )
        self._spec_hashes[user_id] = spec["labels"][_spec.LABEL_SPEC]
        return spec

    async def _start(self, user_id: str) -> AgentContainer:
        started = await self._runtime.start(user_id, await self._spec_of(user_id))
        self._paused_out.discard(user_id)
        log.info("started the agent of %s", user_id)
        return started

    async def _between_turns(self, user_id: str) -> bool:
        """No message waiting and none handed out unanswered: a replacement loses nothing."""
        stream = agent_stream(user_id)
        if await self._bus.lag(stream, AGENT_GROUP) > 0:
            return False
        try:
            pending = await self._client.xpending(stream, AGENT_GROUP)
        except ResponseError:
            return True  # no stream or group yet: nothing was ever handed out
        return int(pending["pending"]) == 0

    async def _renew_if_outdated(self, container: AgentContainer) -> None:
        """Replace a running container made from an older image, profile or limits."""
        user_id = container.user_id
        wanted = self._spec_hashes.get(user_id)
        if wanted is None:
            wanted = _spec.spec_hash(await self._spec_of(user_id))
        if container.spec == wanted or not await self._between_turns(user_id):
            return
        log.info(
            "replacing the agent of %s: its container predates the current image or settings",
            user_id,
        )
        # `start` replaces the old container; the workspace volume and the door stay.
        await self._start(user_id)

    async def _notify_crash(self, container: AgentContainer) -> None:
        raw = await self._client.hget(CONTACT_KEY, container.user_id)
        if raw is None:
            return
        contact = json.loads(raw)
        crash_id = f"crash:{container.container_id[:12]}:{container.finished_at}"
        notice = Outbound(
            channel=contact["channel"],
            conversation_id=contact["conversation_id"],
            thread_id=contact.get("thread_id", ""),
            text=crash_notice(container),
            outbound_id=crash_id,
            user_id=container.user_id,
        )
        # Deduplicated by the crash's identity: one crash, one notice, even across restarts.
        await self._bus.publish(out_stream(notice.channel), notice, dedupe=crash_id)

    def _may_restart(self, user_id: str, now: float) -> bool:
        count, not_before = self._restarts.get(user_id, (0, 0.0))
        if now < not_before:
            return False
        delay = min(_CRASH_BACKOFF_MAX_S, 2.0**count) if count else 0.0
        self._restarts[user_id] = (count + 1, now + delay)
        return True

    async def _stop(self, user_id: str, *, forget: bool) -> None:
        await self._runtime.remove(user_id)
        await self._mesh.close(user_id)
        if forget:
            await self._client.hdel(WANTED_KEY, user_id)
            self._paused_out.discard(user_id)
        self._restarts.pop(user_id, None)

    async def _paused_users(self) -> frozenset[str] | None:
        """The paused users; None while everyone is paused. The router writes these keys."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.smembers(PAUSED_KEY)
            pipe.exists(PAUSED_ALL_KEY)
            members, everyone = await pipe.execute()
        if everyone:
            return None
        return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def reconcile(self) -> None:
        """Bring the containers in line with what is wanted; one pass."""
        async with self._lock:
            await self._reconcile()
        await self._write_status()

    async def _reconcile(self) -> None:
        now = self._clock()
        wanted = await self._wanted()
        paused = await self._paused_users()
        present = {c.user_id: c for c in await self._runtime.agents()}
        after = dict(present)  # the containers as this pass leaves them, for the status

        for user_id, container in present.items():
            if user_id not in wanted:
                log.info("removing the unwanted agent container of %s", user_id or "?")
                if user_id:
                    await self._stop(user_id, forget=False)
                after.pop(user_id, None)
                continue
            if paused is None or user_id in paused:
                log.info("stopping the paused agent of %s", user_id)
                await self._stop(user_id, forget=False)
                self._paused_out.add(user_id)
                after.pop(user_id, None)
                continue
            if container.running:
                idle = now - wanted[user_id] > self._settings.idle_stop_s
                if idle and not await self._has_work(user_id):
                    log.info("stopping the idle agent of %s", user_id)
                    await self._stop(user_id, forget=True)
                    after.pop(user_id, None)
                    wanted.pop(user_id, None)
                    continue
                if not self._mesh.is_open(user_id):
                    # Adopted after a restart: the container waits for its socket to return.
                    await self._open_door(user_id)
                    log.info("adopted the running agent of %s", user_id)
                await self._renew_if_outdated(container)
                continue
            if self._may_restart(user_id, now):
                log.warning(
                    "the agent of %s exited (code %d, oom %s); restarting",
                    user_id,
                    container.exit_code,
                    container.oom_killed,
                )
                await self._notify_crash(container)
                # The message it was working on goes to the new container at once (not
                # after the bus's reclaim delay); its model calls are not made again.
                await self._mesh.requeue_open(user_id)
                after[user_id] = await self._start(user_id)

        up = {u for u, c in after.items() if c.running}
        running = len(up)
        waiting = sorted(
            (t, u)
            for u, t in wanted.items()
            if u not in present and (paused is not None and u not in paused)
        )
        for _, user_id in waiting:
            if running >= self._settings.max_running:
                break
            after[user_id] = await self._start(user_id)
            up.add(user_id)
            running += 1
        self._running = frozenset(u for u in up if self._mesh.is_open(u))
        self._containers = list(after.values())
        self._wanted_users = frozenset(wanted)
        self._paused = paused

    # -- status for operators ----------------------------------------------------------

    async def _write_status(self) -> None:
        """Write what the last pass saw, with the last memory figures, and say we are alive."""
        host = await self._runtime.engine_id()
        now = self._clock()
        current = _status.statuses(
            self._containers, self._wanted_users, self._paused, self._usage, host, now
        )
        existing = await self._client.hgetall(_status.STATUS_KEY)
        stale = _status.stale_fields(existing, host, (s.user_id for s in current))
        async with self._client.pipeline(transaction=True) as pipe:
            if current:
                pipe.hset(_status.STATUS_KEY, mapping={s.user_id: s.to_json() for s in current})
            if stale:
                pipe.hdel(_status.STATUS_KEY, *stale)
            pipe.set(
                _status.alive_key(host),
                repr(now),
                ex=_status.alive_ttl_s(self._settings.check_interval_s),
            )
            await pipe.execute()

    async def sample(self) -> None:
        """Measure every running container the last pass saw, then write the status."""
        running = [c.container_id for c in self._containers if c.running]
        measured = await asyncio.gather(*(self._runtime.usage(c) for c in running))
        self._usage = {c: m for c, m in zip(running, measured, strict=True) if m is not None}
        await self._write_status()

    async def _sample_forever(self) -> None:
        while True:
            raise_if_cancelling()
            started = time.monotonic()
            try:
                await self.sample()
            except StockadeError as exc:
                log.warning("measuring the agents failed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - task boundary: the next round tries again
                log.warning("measuring the agents failed: %s", type(exc).__name__)
            took = time.monotonic() - started
            await asyncio.sleep(max(0.0, _SAMPLE_EVERY_S - took))

    # -- operator controls -------------------------------------------------------------

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
            self._kick.set()
            return _control.Outcome()
        async with self._lock:
            if control.action == "pause":
                if user_id == EVERYONE:
                    users = [c.user_id for c in await self._runtime.agents() if c.user_id]
                else:
                    users = [user_id] if await self._runtime.get(user_id) else []
                for each in users:
                    await self._stop(each, forget=False)
                self._running -= set(users)
                self._paused_out.update(users)
                if user_id == EVERYONE:
                    removed = len(self._paused_out)
                else:
                    removed = int(user_id in self._paused_out)
                log.info("paused %d agent(s) for %s", removed, control.by)
                outcome = _control.Outcome(removed=removed)
            else:
                ended = await self._end_turn(user_id)
                had = await self._runtime.get(user_id) is not None
                await self._stop(user_id, forget=True)
                self._running -= {user_id}
                if control.action == "reset":
                    await self._runtime.remove_workspace(user_id)
                log.info("%s: the agent of %s, for %s", control.action, user_id, control.by)
                outcome = _control.Outcome(removed=int(had), turn_ended=ended)
        self._kick.set()  # the status shows the change at once
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

    async def _consume_controls(self, consumer: str) -> None:
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

    async def _reconcile_forever(self) -> None:
        while True:
            raise_if_cancelling()
            # Cleared before the pass: a wake arriving during it triggers the next one.
            self._kick.clear()
            try:
                await self.reconcile()
            except StockadeError as exc:
                log.error("supervisor pass failed: %s", exc)
            except Exception:
                # A task boundary: a failed pass is logged and the next one tries again.
                log.exception("supervisor pass failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the timeout fires, and shutdown then hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.check_interval_s):
                    await self._kick.wait()

    async def run(self, consumer: str) -> None:
        """Supervise until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(
                self._bus.consume(
                    WAKE_STREAM, WAKE_GROUP, consumer, self.handle_wake, lane=by_sender
                )
            )
            tasks.create_task(self._reconcile_forever())
            tasks.create_task(self._consume_controls(consumer))
            tasks.create_task(self._sample_forever())
