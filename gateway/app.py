"""Runs Stockade's roles: all of them in one process (`up`), one alone (`run`), or a chat."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import embedded_redis
from gateway.audit import AuditLog
from gateway.bus import Bus, out_stream
from gateway.commands import (
    Fleet,
    Registry,
    fleet_registry,
    render_pairings,
    settle_pairing,
    target,
)
from gateway.edge import enabled, run_channels
from gateway.envelope import Outbound
from gateway.errors import CommandError, DependencyError, RedisUnavailable
from gateway.heartbeat import beat_forever, stopped_consumers
from gateway.mesh import Mesh, ModelCalls
from gateway.policy import AccessStore, BudgetGate, Identities, Ledger
from gateway.policy.access import normal_code
from gateway.policy.budget import render_overview, render_usage
from gateway.roles import ROLES
from gateway.router import Router
from gateway.settings import Settings
from gateway.status import StatusSources, gather, render_table, serve_metrics
from gateway.supervisor import Supervisor
from gateway.vault import VaultOnDemand

log = logging.getLogger("stockade")


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: any password is replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def consumer_name(role: str) -> str:
    """Unique per process, so a restarted process never impersonates a dead one's pending work."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def _ping(client: aioredis.Redis, where: str) -> None:
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError):
        raise RedisUnavailable(f"Redis at {where} did not answer") from None


def redis_pool_size(max_running: int) -> int:
    """Connections one process may open: every running agent's long poll holds one."""
    return max_running + 100


@contextlib.asynccontextmanager
async def redis_client(
    settings: Settings, *, start_embedded: bool
) -> AsyncIterator[aioredis.Redis]:
    """A client for the configured Redis, or for the private one in the data directory.

    With `start_embedded`, the private server is started for the block (as `up` does);
    otherwise it must already be running.
    """
    if settings.redis.url is not None:
        client = aioredis.Redis.from_url(
            settings.redis.url, max_connections=redis_pool_size(settings.supervisor.max_running)
        )
        try:
            await _ping(client, redacted(settings.redis.url))
            yield client
        finally:
            await client.aclose()
        return
    data_dir = settings.data_dir / "redis"
    if start_embedded:
        async with embedded_redis.embedded_redis(data_dir) as url:
            log.info("started a private redis-server in %s", data_dir)
            client = aioredis.Redis.from_url(
                url, max_connections=redis_pool_size(settings.supervisor.max_running)
            )
            try:
                yield client
            finally:
                await client.aclose()
        return
    sock = embedded_redis.socket_path(data_dir)
    if not sock.exists():
        raise DependencyError(
            f"no running Stockade found (no socket at {sock}); start it with `stockade up`"
        )
    client = aioredis.Redis.from_url(
        f"unix://{sock}", max_connections=redis_pool_size(settings.supervisor.max_running)
    )
    try:
        await _ping(client, str(sock))
        yield client
    finally:
        await client.aclose()


def budget_reader(client: aioredis.Redis, settings: Settings) -> BudgetGate:
    """A gate for reading spend (/usage, `stockade usage`); it never reserves, so its
    ledger is never opened."""
    return BudgetGate(client, settings.budget, Ledger(settings.ledger_dir()))


def fleet(client: aioredis.Redis, settings: Settings) -> Fleet:
    """What the commands act on, in this deployment's Redis."""
    return Fleet(
        client=client,
        access=AccessStore(client, settings.access),
        identities=Identities(client),
        budget=budget_reader(client, settings),
        audit=AuditLog(client),
        mesh=settings.mesh,
        channels=("console", *enabled(settings.channels)),
    )


def _status_sources(client: aioredis.Redis, settings: Settings) -> StatusSources:
    return StatusSources(
        client,
        AccessStore(client, settings.access),
        budget_reader(client, settings),
        ("console", *enabled(settings.channels)),
    )


def commands(client: aioredis.Redis, settings: Settings) -> Registry:
    """Every chat command, wired to this deployment."""
    bus = Bus(client, settings.bus)

    async def send(outbound: Outbound) -> None:
        await bus.publish(out_stream(outbound.channel), outbound, dedupe=outbound.outbound_id)

    return fleet_registry(settings.router.command_prefix, fleet(client, settings), send)


def role_bus(client: aioredis.Redis, settings: Settings) -> Bus:
    """The bus of a role's consumer: it takes over what a stopped process of its group
    held as soon as that process's heartbeat goes quiet."""
    return Bus(client, settings.bus, gone=stopped_consumers(client))


def router(client: aioredis.Redis, settings: Settings) -> Router:
    bus = role_bus(client, settings)
    return Router(
        bus,
        Identities(client),
        commands(client, settings),
        AccessStore(client, settings.access),
        settings.access,
        AuditLog(client),
    )


def _image_progress(line: str) -> None:
    log.debug("image: %s", line)


@contextlib.asynccontextmanager
async def _agents(client: aioredis.Redis, settings: Settings) -> AsyncIterator[Supervisor]:
    """The supervisor and the mesh on this Docker host; the agent image is built if missing."""
    from gateway.supervisor import (
        DockerRuntime,
        Workspaces,
        deployment_id,
        docker_client,
        ensure_image,
    )

    workspaces = Workspaces(settings.data_dir / "workspaces")
    sizes = [settings.supervisor.limits, *settings.supervisor.overrides.values()]
    if any(limits.workspace_mb for limits in sizes):
        workspaces.check()
    docker = await asyncio.to_thread(docker_client, settings.docker)
    try:
        log.info("checking the agent image (the first build takes about a minute)")
        image = await ensure_image(
            settings.image, settings.docker, settings.data_dir, _image_progress
        )
        log.info("agent image %s", image)
        # The mesh's consumers are the agents (one per user stream), which never beat.
        bus = Bus(client, settings.bus)
        async with Ledger(settings.ledger_dir()) as ledger:
            gate = BudgetGate(client, settings.budget, ledger)
            # Counters behind the ledger (Redis lost data, or came back from an old
            # snapshot) are rebuilt before any call is let through.
            await gate.recover()
            calls = ModelCalls(settings.models, settings.mesh, VaultOnDemand(settings), gate)
            mesh = Mesh(bus, calls, settings.mesh, settings.data_dir / "mesh", redis=client)
            # LiteLLM takes seconds to import: pay it now, not in a user's first reply.
            await mesh.warm()
            try:
                async with asyncio.TaskGroup() as tasks:
                    reaper = tasks.create_task(gate.run(), name="budget reaper")
                    try:
                        yield Supervisor(
                            client,
                            role_bus(client, settings),
                            DockerRuntime(
                                docker, await deployment_id(client), workspaces=workspaces
                            ),
                            mesh,
                            image,
                            settings.supervisor,
                        )
                    finally:
                        reaper.cancel()
            finally:
                await mesh.aclose()
                await calls.drain()
    finally:
        docker.close()


_SLOW_STOP_S: Final = 15.0


def _report_slow_stop(main: asyncio.Task[None]) -> None:
    """Name what a stop is still waiting for, so a hang is found, not guessed at."""
    if main.done():
        return
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = " <- ".join(
            f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 2)[-1]}:"
            f"{frame.f_lineno})"
            for frame in reversed(frames)
        )
        log.warning(
            "still stopping after %.0f s: task %s at %s", _SLOW_STOP_S, task.get_name(), where
        )


async def serve(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it ends or SIGINT/SIGTERM cancels it, at any point of its start-up."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    signalled = False

    def stop() -> None:
        nonlocal signalled
        if not signalled:
            loop.call_later(_SLOW_STOP_S, _report_slow_stop, task)
        signalled = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _channels_of(
    client: aioredis.Redis, settings: Settings
) -> Callable[[str], Coroutine[Any, Any, None]]:
    async def run(consumer: str) -> None:
        await run_channels(client, settings, commands(client, settings), consumer)

    return run


async def beating(
    client: aioredis.Redis, role: str, consumer: str, work: Coroutine[Any, Any, None]
) -> None:
    """Run `work` and beat for `role` while it runs (so /status sees it up)."""
    beat = asyncio.create_task(beat_forever(client, role, consumer), name=f"{role} heartbeat")
    try:
        await work
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)


async def up(settings: Settings) -> None:
    """Every role in this process, on the private Redis unless one is configured."""
    try:
        async with (
            redis_client(settings, start_embedded=True) as client,
            serve_metrics(settings.metrics, _status_sources(client, settings)),
            _agents(client, settings) as supervisor,
            asyncio.TaskGroup() as roles,
        ):
            for role, work in (
                ("router", router(client, settings).run),
                ("agents", supervisor.run),
                ("channels", _channels_of(client, settings)),
            ):
                consumer = consumer_name(role)
                roles.create_task(beating(client, role, consumer, work(consumer)), name=role)
            log.info("Stockade is up; talk to it with `stockade chat`")
    finally:
        log.info("Stockade stopped")


async def run_role(settings: Settings, role: str) -> None:
    """One role alone, against a Redis that is already running."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    consumer = consumer_name(role)
    async with redis_client(settings, start_embedded=False) as client:
        if role == "router":
            # One router per host serves /metrics; any other finds the port taken.
            async with serve_metrics(settings.metrics, _status_sources(client, settings)):
                await beating(client, role, consumer, router(client, settings).run(consumer))
        elif role == "channels":
            await beating(client, role, consumer, _channels_of(client, settings)(consumer))
        else:
            async with _agents(client, settings) as supervisor:
                await beating(client, role, consumer, supervisor.run(consumer))


_AFTER_INPUT_S: Final = 30.0


async def usage(settings: Settings, who: str | None) -> str:
    """The spending report of `who` (an internal id or "channel:platform-user"), or of
    everyone; read from a running Stockade's Redis."""
    async with redis_client(settings, start_embedded=False) as client:
        gate = budget_reader(client, settings)
        identities = Identities(client)
        if who is None:
            everyone = await identities.everyone()
            report = [(user, names, await gate.usage(user)) for user, names in everyone.items()]
            return render_overview(report)
        user_id = who
        if ":" in who:
            channel, _, platform_user = who.partition(":")
            found = await identities.lookup(channel, platform_user)
            if found is None:
                raise CommandError(f"nobody is known as {who!r}", "usage [USER]")
            user_id = found
        return render_usage(await gate.usage(user_id), heading=f"Spending of {user_id}:")


async def status(settings: Settings) -> str:
    """`stockade status`: the status page of a running Stockade, as tables."""
    async with redis_client(settings, start_embedded=False) as client:
        return render_table(await gather(_status_sources(client, settings)))


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


async def pair(settings: Settings, action: str, code: str | None) -> str:
    """`stockade pair list|approve|deny [CODE]` against a running Stockade."""
    async with redis_client(settings, start_embedded=False) as client:
        operators = fleet(client, settings)
        if action == "list":
            return render_pairings(await operators.access.pairings(), operators.clock())
        normal = normal_code(code or "")
        if normal is None:
            raise CommandError(f"{(code or '')[:20]!r} is not a pairing code", "pair approve CODE")
        bus = Bus(client, settings.bus)

        async def send(outbound: Outbound) -> None:
            await bus.publish(out_stream(outbound.channel), outbound, dedupe=outbound.outbound_id)

        return await settle_pairing(
            operators,
            normal,
            approve=action == "approve",
            actor=_cli_actor(),
            detail="from the command line",
            send=send,
        )


async def link(settings: Settings, identity: str, user: str) -> str:
    """`stockade link CHANNEL:ID USER`: one person's identities share one internal id."""
    usage = "link CHANNEL:PLATFORM-ID USER"
    async with redis_client(settings, start_embedded=False) as client:
        operators = fleet(client, settings)
        channel, sep, platform_user = identity.partition(":")
        if not sep or not channel or not platform_user:
            raise CommandError(f"{identity[:40]!r} is not CHANNEL:PLATFORM-ID", usage)
        user_id = await target(operators, user, usage)
        before = await operators.identities.link(channel, platform_user, user_id)
        await operators.audit.append(
            _cli_actor(), "link", user_id, f"{identity} (was {before or 'new'})"
        )
        if before is not None and before != user_id:
            return f"{identity} is now {user_id} (it was {before}, whose workspace stays with it)."
        return f"{identity} is {user_id}."


async def chat(settings: Settings, user: str | None = None) -> None:
    """Talk to a running Stockade from this terminal until input ends."""
    from channels._shared import run_channel
    from channels.console.adapter import terminal_channel

    session = f"c{secrets.token_hex(6)}"
    channel = terminal_channel(user or getpass.getuser(), session)
    async with redis_client(settings, start_embedded=False) as client:
        bus = Bus(client, settings.bus)
        # A group of its own, starting now: this terminal sees only replies sent from here on.
        group = f"console:{session}"
        await bus.ensure_group(out_stream(channel.name), group, start="$")
        runner = asyncio.create_task(run_channel(channel, bus, session, group=group))
        try:
            ended = asyncio.create_task(channel.input_ended.wait())
            await asyncio.wait({runner, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not runner.done():
                finished = asyncio.create_task(channel.done.wait())
                await asyncio.wait(
                    {runner, finished},
                    timeout=_AFTER_INPUT_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not channel.done.is_set() and not runner.done():
                    log.warning(
                        "input ended; gave up waiting for replies after %.0f s", _AFTER_INPUT_S
                    )
                finished.cancel()
            ended.cancel()
            if runner.done():
                runner.result()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await bus.drop_group(out_stream(channel.name), group)
