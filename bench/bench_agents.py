"""Benchmark of the agent pipeline on a real Docker engine: cold start, warm turns, idle memory.

    .venv/bin/python bench/bench_agents.py [--users N] [--turns T] [--idle I]
                                           [--only cold|warm|idle] [--model M]
                                           [--workspace-mb MB]

Each phase assembles the real pieces, as `stockade up` does: a private redis-server
(append-only file on), the Bus, the Mesh after `Mesh.warm()`, the Supervisor with a
DockerRuntime on the engine DOCKER_HOST names (default settings, with room for every
agent), the agent image from `ensure_image` (named stockade-test-agent, so the test
suite's image and offline base are reused), and a fake OpenAI-compatible model on
127.0.0.1 that answers at once, called through LiteLLM as `--model` (default
hosted_vllm/fake, LiteLLM's route for a self-hosted OpenAI-compatible server; give
openai/gpt-4o-mini for the OpenAI SDK's route, see README "Choosing the model route").
A message is driven as the router hands it on: the
routed Inbound is published to the user's agent stream and to the wake stream, which the
Supervisor's `run()` consumes; the time runs until the agent's reply is on the channel's
out stream (read with XREAD BLOCK).

  cold  N new users one after another: first message -> reply (target: median < 1.0 s),
        with where the time goes (docker create/start, python start, model call, reply)
  warm  T messages to one user whose agent already runs, one at a time, 0.1 s apart
        (target: median < 20 ms), and how much of it is the LiteLLM call
  idle  I users' agents started together, left idle after one answer, then each
        container's memory from its cgroup (v1 memory.stat total_rss; the processes'
        VmRSS summed) and the host's available memory before and after (target: the
        median VmRSS sum < 25 MB per agent, and all I running at once), and whether
        one more new user still gets a reply while they idle

Each phase also prints the gateway's event-loop lag and any warning it logged.

Every container and workspace it made is removed at the end, also on failure or Ctrl-C.
Workspaces are capped as by default (an ext4 image each, made at the first start: its
cost is in "wake to create"). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import math
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import docker.errors
import redis.asyncio as aioredis

from gateway.app import redis_pool_size
from gateway.bus import WAKE_STREAM, Bus, agent_stream, out_stream
from gateway.embedded_redis import embedded_redis
from gateway.envelope import Inbound, Outbound, decode_outbound
from gateway.errors import DependencyError, RedisUnavailable
from gateway.mesh import Mesh
from gateway.policy import Identities
from gateway.settings import (
    AgentLimits,
    BusSettings,
    DockerSettings,
    ImageSettings,
    MeshSettings,
    SupervisorSettings,
)
from gateway.supervisor import (
    DockerRuntime,
    Supervisor,
    Workspaces,
    container_name,
    deployment_id,
    docker_client,
    ensure_image,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

from tests.calls import model_calls, priced_model
from tests.fakes.model_server import running_model_server

TARGET_COLD_S: Final = 1.0
DEFAULT_WORKSPACE_MB: Final = AgentLimits().workspace_mb
TARGET_WARM_MS: Final = 20.0
TARGET_IDLE_MB: Final = 25.0

IMAGE: Final = ImageSettings(name="stockade-test-agent")
CHANNEL: Final = "bench"
DEPLOYMENT_LABEL: Final = "org.stockade.deployment"
COLD_GAP_S: Final = 0.5
"""Pause between two new users: the previous agent is back in its long poll."""
TURN_GAP_S: Final = 0.1
"""Pause between two warm turns: the agent waits in its long poll, as between real messages."""
IDLE_SETTLE_S: Final = 5.0
"""How long the idle agents sit after their last answer before their memory is read."""
REPLY_TIMEOUT_S: Final = 120.0
PROBE_TIMEOUT_S: Final = 30.0
MB: Final = 1024 * 1024
REDIS_STARTUP: Final = (
    "Redis is starting",
    "Redis version=",
    "Configuration loaded",
    "Server initialized",
    "Memory overcommit must be enabled",
)
"""Lines redis-server logs at every start, even at loglevel warning; anything else is shown."""


def cut(samples: list[float], percent: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def docker_time(text: str) -> float:
    """Seconds since the epoch of an engine timestamp (RFC 3339, nanoseconds, UTC)."""
    stamp = text.strip().replace("Z", "+00:00")
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = rest[: next((i for i, c in enumerate(rest) if not c.isdigit()), len(rest))]
        stamp = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    return datetime.fromisoformat(stamp).timestamp()


# -- where the time goes ---------------------------------------------------------------


@dataclass
class Marks:
    """Moments of each user's start and turns, taken from the engine calls and the logs."""

    by_user: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    model_calls: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Per user: (when the mesh's LiteLLM call ended, how long it took)."""
    lists: list[tuple[float, float]] = field(default_factory=list)
    """Every `containers.list` of a supervisor pass: (when it ended, how long it took)."""
    complaints: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """The gateway's warnings and errors, by their text (shown once, then counted)."""
    lags: list[float] = field(default_factory=list)
    """How late the gateway's event loop woke a 50 ms sleep, again and again."""

    def once(self, user: str, name: str, when: float) -> None:
        self.by_user[user].setdefault(name, when)


class TimedContainer:
    """A docker SDK container whose start is timed."""

    def __init__(self, real: Any, user: str, marks: Marks) -> None:
        self._real = real
        self._user = user
        self._marks = marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def start(self, **kwargs: Any) -> Any:
        result = self._real.start(**kwargs)
        self._marks.once(self._user, "started", time.time())
        return result


class TimedContainers:
    """The SDK's `containers` collection, timing what the supervisor's passes ask of it."""

    def __init__(self, real: Any, users: dict[str, str], marks: Marks) -> None:
        self._real = real
        self._users = users
        self._marks = marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create(self, **spec: Any) -> Any:
        user = self._users.get(spec.get("name", ""), "?")
        self._marks.once(user, "create", time.time())
        container = self._real.create(**spec)
        self._marks.once(user, "created", time.time())
        return TimedContainer(container, user, self._marks)

    def list(self, **kwargs: Any) -> Any:
        started = time.perf_counter()
        found = self._real.list(**kwargs)
        self._marks.lists.append((time.time(), time.perf_counter() - started))
        return found


class TimedDocker:
    """The docker SDK client handed to DockerRuntime; only container calls are timed."""

    def __init__(self, real: Any, users: dict[str, str], marks: Marks) -> None:
        self._real = real
        self.containers = TimedContainers(real.containers, users, marks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class LogTap(logging.Handler):
    """Keeps the mesh's model-call timings; shows the gateway's warnings on stderr."""

    def __init__(self, marks: Marks) -> None:
        super().__init__(logging.DEBUG)
        self._marks = marks

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            error = record.exc_info[1] if record.exc_info else None
            why = f" ({type(error).__name__}: {error})" if error is not None else ""
            text = f"{record.levelname} {record.msg}{why}"
            if not self._marks.complaints[text]:
                print(f"  gateway {record.levelname}: {record.getMessage()}{why}", file=sys.stderr)
            self._marks.complaints[text] += 1
            return
        # "model call for %s took %.3f s (...)", logged by the mesh after each LiteLLM call.
        text = str(record.msg)
        if text.startswith("model call for") and isinstance(record.args, tuple):
            user, took = record.args[0], record.args[1]
            if isinstance(took, float):
                self._marks.model_calls[str(user)].append((record.created, took))


async def watch_loop(lags: list[float]) -> None:
    """Records how late the event loop runs a task: the wait every request there adds."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.05)
        lags.append(loop.time() - before - 0.05)


@contextlib.contextmanager
def tapped(marks: Marks) -> Iterator[None]:
    """The gateway's log records reach `marks` for the block; its level is DEBUG meanwhile."""
    logger = logging.getLogger("stockade")
    tap = LogTap(marks)
    level = logger.level
    logger.addHandler(tap)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(tap)
        logger.setLevel(level)


# -- the pipeline ----------------------------------------------------------------------


@dataclass
class Pipeline:
    client: aioredis.Redis
    reader: aioredis.Redis
    bus: Bus
    mesh: Mesh
    runtime: DockerRuntime
    docker: Any
    deployment: str
    marks: Marks
    names: dict[str, str]
    """Container name -> user, for the users made here."""
    last_out: str = "0-0"

    async def new_user(self) -> str:
        user = await Identities(self.client).resolve(CHANNEL, secrets.token_hex(6))
        self.names[container_name(user)] = user
        return user

    async def say(self, user: str, text: str) -> Inbound:
        """A routed message for `user`, handed on as the router does: agent stream, then wake."""
        inbound = Inbound(
            channel=CHANNEL,
            event_id=secrets.token_hex(6),
            sender_id=user,
            conversation_id=f"chat-{user}",
            text=text,
            received_at=time.time(),
            sender_name="Bench",
            user_id=user,
        )
        await self.bus.publish(agent_stream(user), inbound)
        await self.bus.publish(WAKE_STREAM, inbound)
        return inbound

    async def next_reply(self, deadline: float) -> tuple[Outbound, float]:
        """The next entry of the out stream and when it was seen."""
        stream = out_stream(CHANNEL)
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError("no reply came in time")
            # Short blocks: redis-py gives up on a read after 5 s by default.
            block_ms = min(left_ms, 1000)
            found: Any = await self.reader.xread({stream: self.last_out}, count=1, block=block_ms)
            seen = time.time()
            if found:
                entry_id, fields = found[0][1][0]
                self.last_out = entry_id.decode()
                return decode_outbound(fields), seen

    async def reply_to(self, inbound: Inbound) -> float:
        """When the agent's final reply to `inbound` was seen on the out stream."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            reply, seen = await self.next_reply(deadline)
            if reply.reply_to == inbound.event_id and reply.user_id == inbound.user_id:
                return seen
            print(f"  (other outbound: {reply.text[:80]!r})", file=sys.stderr)

    async def python_ready(self, user: str) -> float:
        """When the agent runtime in `user`'s container logged that it started.

        The agent's own timestamp (milliseconds, UTC in the image) is used: the engine's
        stamps the line when it reads it, a few milliseconds later. The engine's is the
        fallback when the two disagree by seconds (another time zone in the image).
        """

        def first_line() -> float:
            logs = self.docker.containers.get(container_name(user)).logs(timestamps=True)
            for line in logs.decode(errors="replace").splitlines():
                stamp, _, text = line.partition(" ")
                if "agent runtime started" in text:
                    engine = docker_time(stamp)
                    try:
                        # logging's default asctime: "2026-01-31 12:00:00,123"
                        own = datetime.strptime(text[:23] + "+0000", "%Y-%m-%d %H:%M:%S,%f%z")
                    except ValueError:
                        return engine
                    return own.timestamp() if abs(own.timestamp() - engine) < 2 else engine
            return math.nan

        return await asyncio.to_thread(first_line)

    def health(self) -> str:
        """How the gateway fared: its event loop's lag and the warnings it logged."""
        lags = [lag * 1000 for lag in self.marks.lags]
        lag = (
            f"gateway event loop lag p50 {statistics.median(lags):.1f} ms, "
            f"p99 {cut(lags, 99):.1f} ms, max {max(lags):.0f} ms"
            if lags
            else "gateway event loop lag not measured"
        )
        complaints = sum(self.marks.complaints.values())
        return f"{lag}; {complaints} warnings or errors logged by the gateway"

    async def remove_everything(self) -> None:
        """Every container of this deployment and every workspace volume made here."""

        def sweep() -> int:
            label = f"{DEPLOYMENT_LABEL}={self.deployment}"
            found = self.docker.containers.list(all=True, filters={"label": label})
            for container in found:
                # NotFound or "removal already in progress": gone either way.
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
            return len(found)

        removed = await asyncio.to_thread(sweep)
        # A create still running in a worker thread of a cancelled pass lands late.
        await asyncio.sleep(2)
        removed += await asyncio.to_thread(sweep)
        volumes = 0
        for user in self.names.values():
            try:
                await self.runtime.remove_workspace(user)
                volumes += 1
            except DependencyError as exc:
                print(f"  could not remove the workspace of {user}: {exc}", file=sys.stderr)
        left = await asyncio.to_thread(sweep)
        print(
            f"  cleaned up: {removed} containers of deployment {self.deployment} and "
            f"the workspaces of {volumes} users"
            + (f"; {left} containers came back" if left else "")
        )


@contextlib.asynccontextmanager
async def pipeline(
    image: str, max_running: int, model_name: str, workspace_mb: int = DEFAULT_WORKSPACE_MB
) -> AsyncIterator[Pipeline]:
    marks = Marks()
    names: dict[str, str] = {}
    real_docker = await asyncio.to_thread(docker_client, DockerSettings())
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="stk-ba-", dir="/tmp") as tmp, tapped(marks):
        async with (
            embedded_redis(Path(tmp) / "redis") as url,
            running_model_server() as fake,
            contextlib.AsyncExitStack() as exits,
        ):
            # Sized as `stockade up` sizes it: each running agent's long poll holds one.
            client = aioredis.Redis.from_url(url, max_connections=redis_pool_size(max_running))
            reader = aioredis.Redis.from_url(url)
            bus = Bus(client, BusSettings())
            # The real vault and budget gate (its ledger too), with caps the bench never nears.
            entry = priced_model(fake.url, model_name, timeout_s=60.0)
            calls = await exits.enter_async_context(
                model_calls(client, Path(tmp) / "calls", {"default": entry}, key="sk-bench")
            )
            mesh = Mesh(bus, calls.calls, MeshSettings(), Path(tmp) / "mesh")
            deployment = await deployment_id(client)
            runtime = DockerRuntime(
                TimedDocker(real_docker, names, marks),
                deployment,
                workspaces=Workspaces(Path(tmp) / "workspaces"),
            )
            built = Pipeline(
                client, reader, bus, mesh, runtime, real_docker, deployment, marks, names
            )
            supervisor = Supervisor(
                client,
                bus,
                runtime,
                mesh,
                image,
                SupervisorSettings(
                    max_running=max_running, limits=AgentLimits(workspace_mb=workspace_mb)
                ),
            )
            tasks: list[asyncio.Task[None]] = []
            try:
                # LiteLLM takes seconds to import: paid here, as `stockade up` does.
                await mesh.warm()
                tasks.append(asyncio.create_task(supervisor.run("bench-supervisor")))
                tasks.append(asyncio.create_task(watch_loop(marks.lags)))
                # Let the wake consumer create its group and block on the stream.
                await asyncio.sleep(0.5)
                yield built
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await built.remove_everything()
                for line in (Path(tmp) / "redis" / "redis.log").read_text().splitlines():
                    if line.strip() and not any(usual in line for usual in REDIS_STARTUP):
                        print(f"  redis-server: {line}", file=sys.stderr)
                await mesh.aclose()
                await reader.aclose()
                await client.aclose()
                await asyncio.to_thread(real_docker.close)


# -- the phases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    result: str
    target: str
    passed: bool | None
    """None: reported, no target."""


def ms(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


async def cold(image: str, users: int, model: str, workspace_mb: int) -> list[Figure]:
    print(f"cold: {users} new users, one after another, workspaces of {workspace_mb} MB")
    async with pipeline(image, users + 5, model, workspace_mb) as p:
        rows: list[dict[str, float]] = []
        for i in range(users):
            user = await p.new_user()
            started = time.time()
            inbound = await p.say(user, "hello, who are you?")
            seen = await p.reply_to(inbound)
            marks = p.marks.by_user[user]
            calls = [c for c in p.marks.model_calls[user] if c[0] >= started]
            model_end, model_took = calls[-1] if calls else (math.nan, math.nan)
            create = marks.get("create", math.nan)
            created = marks.get("created", math.nan)
            running = marks.get("started", math.nan)
            ready = await p.python_ready(user)
            row = {
                "total": seen - started,
                "wake to create": create - started,
                "create": created - create,
                "start": running - created,
                "python up": ready - running,
                "to model call": model_end - model_took - ready,
                "LiteLLM": model_took,
                "to reply": seen - model_end,
            }
            rows.append(row)
            print(
                f"  user {i + 1:>3}: {row['total']:.3f} s  ("
                + ", ".join(f"{k} {ms(v)}" for k, v in row.items() if k != "total")
                + " ms)"
            )
            await asyncio.sleep(COLD_GAP_S)
        totals = [r["total"] for r in rows]
        print("  median of each part, ms:")
        for part in rows[0]:
            values = [r[part] for r in rows if not math.isnan(r[part])]
            shown = f"{statistics.median(values) * 1000:8.1f}" if values else "       ?"
            print(f"    {part:<14} {shown}")
        median = statistics.median(totals)
        print(f"  {p.health()}")
    return [
        Figure(
            f"cold start, new user -> reply (N={users})"
            + ("" if workspace_mb else ", uncapped workspaces"),
            f"median {median:.3f} s, p90 {cut(totals, 90):.3f} s, max {max(totals):.3f} s "
            f"(first user {totals[0]:.3f} s)",
            f"median < {TARGET_COLD_S:.1f} s",
            median < TARGET_COLD_S,
        )
    ]


async def warm(image: str, turns: int, model: str) -> list[Figure]:
    print(f"warm: {turns} turns to one running agent, {TURN_GAP_S:g} s apart")
    async with pipeline(image, max_running=5, model_name=model) as p:
        user = await p.new_user()
        await p.reply_to(await p.say(user, "hello"))
        await asyncio.sleep(1.0)
        totals: list[float] = []
        models: list[float] = []
        lists_before = len(p.marks.lists)
        for _ in range(turns):
            started = time.time()
            seen = await p.reply_to(await p.say(user, "what is two plus two?"))
            totals.append((seen - started) * 1000)
            calls = [c for c in p.marks.model_calls[user] if c[0] >= started]
            if calls:
                models.append(calls[-1][1] * 1000)
            await asyncio.sleep(TURN_GAP_S)
        lists = [took * 1000 for _, took in p.marks.lists[lists_before:]]
        median = statistics.median(totals)
        model = statistics.median(models) if models else math.nan
        print(
            f"  turn ms: p50 {median:.2f}, p95 {cut(totals, 95):.2f}, p99 {cut(totals, 99):.2f}, "
            f"min {min(totals):.2f}, max {max(totals):.2f}"
        )
        print(
            f"  of which the mesh's LiteLLM call (its own log), ms: p50 {model:.2f}, "
            f"p95 {cut(models, 95) if models else math.nan:.2f}; the rest p50 {median - model:.2f}"
        )
        if len(models) >= 40:
            # The agent's memory grows to its cap over the first turns; every call carries it.
            print(
                f"  LiteLLM p50 over the first 20 turns {statistics.median(models[:20]):.2f} ms, "
                f"the last 20 {statistics.median(models[-20:]):.2f} ms"
            )
        if lists:
            print(
                f"  supervisor passes woken by these messages: {len(lists)}, "
                f"docker containers.list p50 {statistics.median(lists):.1f} ms"
            )
        print(f"  {p.health()}")
    return [
        Figure(
            f"warm turn, message -> reply (N={turns})",
            f"p50 {median:.2f} ms, p95 {cut(totals, 95):.2f} ms, p99 {cut(totals, 99):.2f} ms",
            f"median < {TARGET_WARM_MS:.0f} ms",
            median < TARGET_WARM_MS,
        ),
        Figure(
            "  of which the LiteLLM call (in the mesh)",
            f"p50 {model:.2f} ms ({model / median:.0%} of the median turn)"
            if models
            else "not found in the mesh's debug log",
            "-",
            None,
        ),
    ]


# -- memory ------------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0]) * 1024
    return values


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def parent(pid: int) -> int:
    return status_kb(pid, "PPid") // 1024


def cgroup_dir(container_id: str) -> Path:
    for candidate in (
        Path("/sys/fs/cgroup/memory/docker") / container_id,  # v1, cgroupfs driver
        Path("/sys/fs/cgroup/memory/system.slice") / f"docker-{container_id}.scope",
        Path("/sys/fs/cgroup/system.slice") / f"docker-{container_id}.scope",  # v2, systemd
        Path("/sys/fs/cgroup/docker") / container_id,  # v2, cgroupfs
    ):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no memory cgroup found for container {container_id[:12]}")


@dataclass(frozen=True)
class AgentMemory:
    usage: int
    """memory.usage_in_bytes (v1) or memory.current (v2): all the cgroup is charged."""
    rss: int
    """Anonymous memory of the container: memory.stat total_rss (v1) or anon (v2)."""
    cache: int
    vmrss: int
    """VmRSS of every process in the container, summed (shared file pages counted in each)."""
    pss: int
    processes: int
    shim_pss: int
    """Pss of the engine's containerd-shim for this container: host memory outside it."""


def agent_memory(container_id: str) -> AgentMemory:
    directory = cgroup_dir(container_id)
    stat: dict[str, int] = {}
    for line in (directory / "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        stat[key] = int(value)
    if (directory / "memory.usage_in_bytes").exists():
        usage = int((directory / "memory.usage_in_bytes").read_text())
        rss, cache = stat["total_rss"], stat["total_cache"]
    else:
        usage = int((directory / "memory.current").read_text())
        rss, cache = stat["anon"], stat["file"]
    pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    shims = {parent(pid) for pid in pids} - set(pids)
    return AgentMemory(
        usage=usage,
        rss=rss,
        cache=cache,
        vmrss=sum(status_kb(pid, "VmRSS") for pid in pids),
        pss=sum(pss(pid) for pid in pids),
        processes=len(pids),
        shim_pss=sum(pss(pid) for pid in shims),
    )


async def new_user_reply(p: Pipeline) -> str:
    """How long one more new user waits for a first reply, or why none came."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            user = await p.new_user()
            started = time.time()
            seen = await p.reply_to(await p.say(user, "hello"))
    except TimeoutError:
        return f"no reply within {PROBE_TIMEOUT_S:.0f} s"
    except RedisUnavailable as exc:
        return f"failed: {exc}"
    return f"{seen - started:.3f} s"


def mb(values: list[int]) -> str:
    return f"median {statistics.median(values) / MB:.1f} MB, max {max(values) / MB:.1f} MB"


async def idle(image: str, count: int, model: str) -> list[Figure]:
    print(f"idle: {count} agents started together, then left idle")
    async with pipeline(image, max_running=count + 5, model_name=model) as p:
        before = meminfo()
        own_before = status_kb(os.getpid(), "VmRSS")
        users = [await p.new_user() for _ in range(count)]
        started = time.monotonic()
        asked = {(await p.say(user, "hello")).event_id: user for user in users}
        deadline = time.monotonic() + max(REPLY_TIMEOUT_S, 10.0 * count)
        while asked:
            reply, _ = await p.next_reply(deadline)
            asked.pop(reply.reply_to or "", None)
        print(f"  all {count} answered {time.monotonic() - started:.1f} s after the messages")
        await asyncio.sleep(IDLE_SETTLE_S)
        agents = [a for a in await p.runtime.agents() if a.user_id in set(users)]
        listed = time.perf_counter()
        await p.runtime.agents()
        list_ms = (time.perf_counter() - listed) * 1000
        running = sum(1 for a in agents if a.running)
        memory = await asyncio.to_thread(
            lambda: [agent_memory(a.container_id) for a in agents if a.running]
        )
        if not memory:
            raise RuntimeError("none of the idle agents is running")
        after = meminfo()
        own_after = status_kb(os.getpid(), "VmRSS")
        available = (before["MemAvailable"] - after["MemAvailable"]) / MB
        free = (before["MemFree"] - after["MemFree"]) / MB

        print(
            f"  running at once: {running} of {count} (all processes: {memory[0].processes} each)"
        )
        print(f"  per agent, VmRSS of its processes summed: {mb([m.vmrss for m in memory])}")
        print(f"  per agent, Pss of its processes summed:   {mb([m.pss for m in memory])}")
        print(f"  per agent, cgroup total_rss (anon):       {mb([m.rss for m in memory])}")
        print(f"  per agent, cgroup page cache:             {mb([m.cache for m in memory])}")
        print(f"  per agent, cgroup usage_in_bytes:         {mb([m.usage for m in memory])}")
        print(f"  per agent, containerd-shim Pss (host):    {mb([m.shim_pss for m in memory])}")
        print(
            f"  host MemAvailable {before['MemAvailable'] / MB:.0f} -> "
            f"{after['MemAvailable'] / MB:.0f} MB ({available:.0f} MB, {available / count:.1f} MB "
            f"per agent); MemFree down {free:.0f} MB (the machine is shared: other runs move these)"
        )
        # The first phase in a process also pays LiteLLM's first-call imports here.
        print(f"  the gateway process: VmRSS {own_before / MB:.0f} -> {own_after / MB:.0f} MB")
        print(f"  a supervisor pass's containers.list with {len(agents)} agents: {list_ms:.0f} ms")
        served = await new_user_reply(p)
        print(f"  a new user's first message -> reply with {count} agents idle: {served}")
        print(f"  {p.health()}")
        complaints = sum(p.marks.complaints.values())
    vmrss = statistics.median([m.vmrss for m in memory]) / MB
    # The host's own accounting (MemAvailable) includes the engine's shim and kernel
    # memory per container, so it is the honest cost; other work on a shared machine
    # moves it, so it is never taken below what the agent's processes hold.
    per_agent = max(available / count, vmrss)
    holds = count + int(after["MemAvailable"] / MB / per_agent)
    return [
        Figure(
            "idle agent memory (VmRSS of its processes)",
            f"{mb([m.vmrss for m in memory])}",
            f"median < {TARGET_IDLE_MB:.0f} MB",
            vmrss < TARGET_IDLE_MB,
        ),
        Figure(
            "  cgroup total_rss (anonymous) per agent",
            f"{mb([m.rss for m in memory])}",
            "-",
            None,
        ),
        Figure(
            f"idle agents running at once (of {count})",
            f"{running}",
            f"all {count}",
            running == count,
        ),
        Figure(
            f"  a new user's first reply, {count} agents idle",
            served,
            "-",
            None,
        ),
        Figure(
            "  warnings or errors the gateway logged",
            f"{complaints} (see above)" if complaints else "none",
            "-",
            None,
        ),
        Figure(
            "  host MemAvailable used per agent",
            f"{available / count:.1f} MB ({available:.0f} MB for {count})",
            "-",
            None,
        ),
        Figure(
            "idle agents this machine holds (by memory)",
            f"about {holds} ({count} running + {after['MemAvailable'] / MB:.0f} MB available "
            f"/ {per_agent:.1f} MB each)",
            "-",
            None,
        ),
    ]


# -- the report --------------------------------------------------------------------------


async def measure(options: argparse.Namespace) -> tuple[list[Figure], dict[str, str]]:
    print("checking the agent image (a first build takes about a minute)")
    with tempfile.TemporaryDirectory(prefix="stk-bi-", dir="/tmp") as data:
        image = await ensure_image(IMAGE, DockerSettings(), Path(data))
    docker = await asyncio.to_thread(docker_client, DockerSettings())
    try:
        engine = await asyncio.to_thread(docker.version)
    finally:
        await asyncio.to_thread(docker.close)
    versions = {
        "load": f"{os.getloadavg()[0]:.2f}",
        "image": image,
        "engine": f"Docker engine {engine.get('Version', '?')} ({engine.get('Os', '?')})",
    }
    phases: dict[str, Callable[[], Any]] = {
        "cold": lambda: cold(image, options.users, options.model, options.workspace_mb),
        "warm": lambda: warm(image, options.turns, options.model),
        "idle": lambda: idle(image, options.idle, options.model),
    }
    figures: list[Figure] = []
    for name, phase in phases.items():
        if options.only in (None, name):
            figures.extend(await phase())
    return figures, versions


def main(options: argparse.Namespace) -> int:
    figures, versions = asyncio.run(measure(options))
    memory = meminfo()["MemTotal"] / MB / 1024
    print()
    print(
        f"Python {platform.python_version()}, {versions['engine']}, kernel "
        f"{platform.release()}, LiteLLM {importlib.metadata.version('litellm')}, "
        f"{os.cpu_count()} CPUs, {memory:.1f} GB, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    print(
        f"agent image {versions['image']}, fake model answering at once on loopback, "
        f"called as {options.model}"
    )
    print(
        f"load average (1 min) {versions['load']} at the start, {os.getloadavg()[0]:.2f} at the "
        "end: the machine may be shared, and other work there moves these figures"
    )
    print(f"{'figure':<46} {'result':<62} {'target':<16} verdict")
    for f in figures:
        verdict = "-" if f.passed is None else ("PASS" if f.passed else "FAIL")
        print(f"{f.name:<46} {f.result:<62} {f.target:<16} {verdict}")
    missed = [f.name.strip() for f in figures if f.passed is False]
    if missed:
        print(f"FAIL: {', '.join(missed)}")
        return 1
    print("OK: every target met")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=10, help="new users for the cold start")
    parser.add_argument("--turns", type=int, default=200, help="warm turns")
    parser.add_argument("--idle", type=int, default=100, metavar="N", help="idle agents")
    parser.add_argument("--only", choices=("cold", "warm", "idle"))
    parser.add_argument(
        "--workspace-mb",
        type=int,
        default=DEFAULT_WORKSPACE_MB,
        help="workspace size for the cold start (0: uncapped Docker volumes)",
    )
    parser.add_argument(
        "--model", default="hosted_vllm/fake", help="the LiteLLM model string for the fake"
    )
    options = parser.parse_args()
    if options.users < 1 or options.turns < 1 or options.idle < 1:
        parser.error("--users, --turns and --idle must be positive")
    try:
        sys.exit(main(options))
    except KeyboardInterrupt:
        # asyncio.run has cancelled the phase, whose cleanup ran and reported above.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
