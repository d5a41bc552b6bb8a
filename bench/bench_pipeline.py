"""Benchmark of the whole pipeline under load: end-to-end overhead at a steady rate, and throughput.

    .venv/bin/python bench/bench_pipeline.py [--users N] [--rate R] [--seconds S]
                                             [--warmup W] [--throughput-seconds T]
                                             [--depth D] [--model-delay X]
                                             [--light-rate R2] [--light-seconds S2]
                                             [--only overhead|throughput] [--model M]
                                             [--shape up|apart]

The real pipeline, as production runs it, in one of two shapes (`--shape`):

  up     `stockade up` as a subprocess: every role in one process, with its private Redis
         (the default)
  apart  redis-server (append-only, as `up` runs it) and `stockade run router`, `stockade
         run channels` and `stockade run agents`, each its own process, as an operator
         spreads the roles over the cores of one machine (the processes of
         `tests/apart.py`, which the chaos test also runs)

No `-v` in either: debug logging is not the production shape and costs CPU per message.
With the gateway: the vault, the supervisor on the Docker engine with the test agent image
`stockade-test-agent`; Telegram enabled against the wire-level fake Bot API of
`tests/fakes/telegram.py`; the fake OpenAI-compatible model of
`tests/fakes/model_server.py`, answering at once or after `--model-delay` s, called
through LiteLLM as `--model` (default hosted_vllm/fake). Everything is on 127.0.0.1, unix
sockets and the containers this run starts. DM policy is open; the ingress limit, the
loop guard, the webhook server's per-peer limit and the budget caps are raised so that
none of them refuses the benchmark's traffic; the supervisor may run every user's agent.

Telegram runs in webhook mode: at high volume that is the production shape (Telegram
POSTs each update as it happens, at most 40 in flight, its default `max_connections`),
and a message's latency is not a long poll's batching.

  warm-up     every user's first message (their container starts), then `--warmup` s at
              the steady rate, not recorded
  overhead    `--users` users (50), each in their own DM, `--rate` messages per second
              (50) in all, on a fixed schedule (each user one message per users/rate s),
              for `--seconds` (30). A message's overhead runs from handing its update to
              the fake until the fake receives the sendMessage that quotes it, minus the
              model's set delay. Targets: p50 < 15 ms, p99 < 60 ms. The same phase runs
              first at `--light-rate` (10) for `--light-seconds` (15), without targets:
              the overhead when the pipeline is not near its limit. Where the time goes,
              from the stream entry ids (ms) and the envelope's `received_at`:
              fake → channel, channel → `stockade:in`, router → the agent's stream,
              agent turn (wake, next, mesh, budget, LiteLLM, model, reply) → `stockade:out`,
              channel → the fake's sendMessage
  throughput  a closed loop: every user keeps `--depth` (2) messages waiting for a reply
              and sends the next as one is answered, for `--throughput-seconds` (20); the
              replies per second over the last three quarters of it (the first quarter is
              ramp). Target: >= 300 msg/s.

Both phases also give the CPU ms per answered message, by process: the gateway (`up`) or
each role (`apart`: router, channels, agents role), its redis-server, this process (the
fakes and the load), the Docker engine, and what is left of the whole machine's busy time
(the agent containers and other work). Every figure's name ends with its shape ("stockade
up" or "roles apart"), and bench/run_all.py files them under the benches `pipeline` and
`pipeline-apart`.

Exits 1 when a target is missed. Every container and workspace volume the run made is
removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, agent_stream, out_stream
from gateway.envelope import decode_inbound, decode_outbound
from gateway.policy import Identities
from gateway.settings import DockerSettings
from gateway.supervisor import ensure_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes and bench

from bench._report import Figure, cut, load, machine, machine_line, ms
from tests.apart import Pipeline, running_pipeline
from tests.fakes.model_server import FakeModelServer, running_model_server
from tests.fakes.telegram import (
    WEBHOOK_CONNECTIONS,
    FakeTelegram,
    SentMessage,
    started_telegram,
    user,
)
from tests.services import TEST_IMAGE, require
from tests.test_end_to_end import started

TARGET_P50_S: Final = 0.015
TARGET_P99_S: Final = 0.060
TARGET_RATE: Final = 300.0
FIRST_USER: Final = 2001
WARM_TIMEOUT_S: Final = 240.0
DRAIN_TIMEOUT_S: Final = 60.0
UP_TIMEOUT_S: Final = 120.0
STAGES: Final = ("fake → channel", "channel → bus", "router", "agent turn", "bus → reply sent")
COMMAND: Final = ".venv/bin/python bench/bench_pipeline.py"
SHAPES: Final = {"up": "stockade up", "apart": "roles apart"}
"""How the gateway runs; every figure's name ends with its shape's words."""
SHAPE_DETAIL: Final = {
    "up": "every role in one process, its private redis-server",
    "apart": "redis-server, `stockade run router`, `run channels`, `run agents`",
}
BENCHES: Final = {"up": "pipeline", "apart": "pipeline-apart"}
"""The bench each shape's figures belong to in bench/run_all.py's report."""


# -- the fake Bot API, resolving each message's wait when its reply arrives -----------------


@dataclass
class Message:
    sender: int
    message_id: int
    update_id: int
    handed: float
    """Wall clock (time.time()), so it compares with Redis stream ids."""
    replied: asyncio.Future[float]


class ReplyingTelegram(FakeTelegram):
    """The fake Bot API; a sendMessage that quotes a waiting message resolves its future."""

    def __init__(self) -> None:
        super().__init__(on_sent=self._resolve)
        self.waiting: dict[int, Message] = {}

    def _resolve(self, sent: SentMessage) -> None:
        quoted = (sent.reply_parameters or {}).get("message_id")
        message = self.waiting.pop(quoted, None) if isinstance(quoted, int) else None
        if message is not None and not message.replied.done():
            message.replied.set_result(time.time())


@dataclass
class Outbox:
    """POSTs updates to the gateway's webhook as Telegram does, at most 40 in flight."""

    fake: ReplyingTelegram
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(WEBHOOK_CONNECTIONS))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    refused: int = 0

    def send(self, sender: int, text: str) -> Message:
        person = user(sender, f"User{sender}", "", f"user{sender}")
        raw = self.fake.message(text, sender=person)
        update = self.fake.make_update(raw)
        message = Message(
            sender,
            int(raw["message_id"]),
            int(update["update_id"]),
            time.time(),
            asyncio.get_running_loop().create_future(),
        )
        self.fake.waiting[message.message_id] = message
        task = asyncio.create_task(self._post(update))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return message

    async def _post(self, update: dict[str, Any]) -> None:
        async with self.gate:
            status = await self.fake.post_update(update)
        if not 200 <= status < 300:
            self.refused += 1


# -- the gateway, in one process or with its roles apart, quiet ------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bench_environment(options: argparse.Namespace, fake: FakeTelegram) -> dict[str, str]:
    port = free_port()
    return {
        "STOCKADE_CHANNELS__TELEGRAM__ENABLED": "true",
        "STOCKADE_CHANNELS__TELEGRAM__TOKEN": fake.token,
        "STOCKADE_CHANNELS__TELEGRAM__API_BASE": fake.api_base,
        "STOCKADE_CHANNELS__TELEGRAM__MODE": "webhook",
        "STOCKADE_CHANNELS__TELEGRAM__SECRET_TOKEN": secrets.token_urlsafe(24),
        "STOCKADE_CHANNELS__WEBHOOKS__PORT": str(port),
        "STOCKADE_CHANNELS__WEBHOOKS__PUBLIC_URL": f"http://127.0.0.1:{port}",
        "STOCKADE_CHANNELS__WEBHOOKS__PER_PEER_PER_S": "100000",
        "STOCKADE_CHANNELS__WEBHOOKS__PER_PEER_BURST": "100000",
        "STOCKADE_CHANNELS__INGRESS__PER_SENDER_PER_S": "10000",
        "STOCKADE_CHANNELS__INGRESS__PER_SENDER_BURST": "10000",
        "STOCKADE_ACCESS__TELEGRAM__DM_POLICY": "open",
        "STOCKADE_ACCESS__LOOP_GUARD__PER_CONVERSATION_PER_MIN": "10000",
        "STOCKADE_SUPERVISOR__MAX_RUNNING": str(options.users + 10),
        "STOCKADE_MODELS__DEFAULT__NAME": options.model,
        "STOCKADE_BUDGET__USER__DAILY_USD": "100000",
        "STOCKADE_BUDGET__USER__MONTHLY_USD": "100000",
        "STOCKADE_BUDGET__TOTAL__MONTHLY_USD": "1000000",
    }


@dataclass
class Running:
    """The pipeline under test, in either shape: what the benchmark reads of it."""

    redis_socket: Path
    model: FakeModelServer
    processes: Callable[[], dict[str, list[int]]]
    """The gateway's processes by who they are, read at each CPU reading (pids change when
    a role is restarted)."""
    log: Callable[[], list[str]]
    """Every line the gateway's processes logged so far."""
    restarts: Callable[[], dict[str, list[int]]]
    """The exit statuses of roles that died and were started again, by role."""


@contextlib.asynccontextmanager
async def running(shape: str, extra_env: dict[str, str]) -> AsyncIterator[Running]:
    """The gateway with the test's environment plus `extra_env`, up and beating.

    up: `stockade up`, every role in one process with its private redis-server.
    apart: redis-server (append-only, as `up`'s) and `stockade run router`, `stockade run
    channels` and `stockade run agents`, each its own process, as an operator spreads them
    over the cores of one machine."""
    if shape == "up":
        async with started(extra_env, verbose=False) as gateway:
            pid = gateway.proc.pid
            yield Running(
                gateway.data_dir / "redis" / "redis.sock",
                gateway.model,
                lambda: {"gateway": [pid], "its redis": children(pid)},
                lambda: [line.decode(errors="replace") for line in gateway.log],
                lambda: {},
            )
        return
    require("redis-server", "redis-server")
    async with running_model_server() as model:
        # Short path: the Redis socket and the agents' sockets live in here.
        with tempfile.TemporaryDirectory(prefix="stk-bp-", dir="/tmp") as tmp:
            async with running_pipeline(Path(tmp), model.url, extra_env) as pipeline:
                await pipeline.up(UP_TIMEOUT_S)
                yield Running(
                    pipeline.redis_socket,
                    model,
                    lambda: role_processes(pipeline),
                    lambda: role_log(pipeline),
                    pipeline.unexpected_exits,
                )


ROLE_NAMES: Final = {"router": "router", "channels": "channels", "agents": "agents role"}
"""How the CPU line names each role's process: "agents" alone reads as the containers."""


def role_processes(pipeline: Pipeline) -> dict[str, list[int]]:
    """Each role's process (with any children) and redis-server, by who they are."""
    found: dict[str, list[int]] = {}
    for role, service in pipeline.services.items():
        pid = service.proc.pid if service.proc is not None else None
        found[ROLE_NAMES.get(role, role)] = [pid, *children(pid)] if pid else []
    found["its redis"] = [pipeline.redis.proc.pid] if pipeline.redis.proc else []
    return found


def role_log(pipeline: Pipeline) -> list[str]:
    lines: list[str] = []
    for role in pipeline.services:
        for path in pipeline.logs(role):
            with contextlib.suppress(OSError):
                lines += [
                    f"{role}: {line}" for line in path.read_text(errors="replace").splitlines()
                ]
    return lines


def log_summary(log: list[str]) -> str:
    """How many warnings and errors the gateway logged, and the first few of them."""
    warnings = [line for line in log if " WARNING " in line]
    errors = [line for line in log if " ERROR " in line or " CRITICAL " in line]
    first = [line.strip()[:200] for line in (errors + warnings)[:3]]
    return f"{len(warnings)} warnings, {len(errors)} errors" + "".join(f"\n    {f}" for f in first)


# -- the phases ------------------------------------------------------------------------------


@dataclass
class Timed:
    """A message that got its reply: when it was handed over and when the reply came."""

    message: Message
    replied: float

    @property
    def seconds(self) -> float:
        return self.replied - self.message.handed


async def replies(messages: list[Message], timeout_s: float) -> tuple[list[Timed], int]:
    """The answered messages, waiting up to `timeout_s` for the last; and how many were not."""
    pending = [m.replied for m in messages if not m.replied.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout_s)
    done = [Timed(m, m.replied.result()) for m in messages if m.replied.done()]
    return done, len(messages) - len(done)


async def steady(outbox: Outbox, senders: list[int], rate: float, seconds: float) -> list[Message]:
    """Every sender one message each len(senders)/rate s, staggered; all sent messages."""
    period = len(senders) / rate
    start = time.perf_counter()
    sent: list[Message] = []

    async def talk(sender: int, offset: float) -> None:
        k = 0
        while (due := start + offset + k * period) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent.append(outbox.send(sender, f"message {k} from {sender}"))
            k += 1

    await asyncio.gather(*(talk(s, i * period / len(senders)) for i, s in enumerate(senders)))
    return sent


@dataclass
class Closed:
    sent: int
    answered: list[float]
    """The moments replies arrived (perf_counter)."""


async def closed_loop(outbox: Outbox, senders: list[int], depth: int, seconds: float) -> Closed:
    """Each sender keeps `depth` messages waiting, sending the next as one is answered."""
    stop_at = time.perf_counter() + seconds
    result = Closed(0, [])

    async def lane(sender: int, lane_no: int) -> None:
        k = 0
        while time.perf_counter() < stop_at:
            message = outbox.send(sender, f"load {lane_no}.{k} from {sender}")
            result.sent += 1
            k += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(message.replied), stop_at - time.perf_counter()
                )
                result.answered.append(time.perf_counter())

    await asyncio.gather(*(lane(s, d) for s in senders for d in range(depth)))
    return result


# -- where the time goes ---------------------------------------------------------------------


def entry_s(entry_id: str) -> float:
    """A stream entry id's milliseconds, as seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000


async def stages(gateway: Running, timed: list[Timed]) -> dict[str, list[float]]:
    """Each answered message's time in each stage, from the bus entries it left."""
    client = aioredis.Redis(unix_socket_path=str(gateway.redis_socket))
    try:
        inbound: dict[str, tuple[float, float]] = {}
        async for entry_id, fields in entries(client, IN_STREAM):
            message = decode_inbound(fields)
            inbound[message.event_id] = (message.received_at, entry_s(entry_id))
        routed: dict[str, float] = {}
        identities = Identities(client)
        for sender in sorted({t.message.sender for t in timed}):
            user_id = await identities.lookup("telegram", str(sender))
            if user_id:
                async for entry_id, fields in entries(client, agent_stream(user_id)):
                    routed[decode_inbound(fields).event_id] = entry_s(entry_id)
        answered: dict[str, float] = {}
        async for entry_id, fields in entries(client, out_stream("telegram")):
            reply = decode_outbound(fields)
            answered.setdefault(reply.reply_to, entry_s(entry_id))
    finally:
        await client.aclose()
    found: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for t in timed:
        key = str(t.message.update_id)
        if key not in inbound or key not in routed or key not in answered:
            continue
        received, on_bus = inbound[key]
        marks = [t.message.handed, received, on_bus, routed[key], answered[key], t.replied]
        for stage, (a, b) in zip(STAGES, itertools.pairwise(marks), strict=True):
            found[stage].append(b - a)
    return found


async def entries(client: aioredis.Redis, stream: str) -> AsyncIterator[tuple[str, Any]]:
    """Every entry of `stream`: its id and its fields."""
    last = "-"
    while batch := await client.xrange(stream, min=last, count=5_000):
        for raw_id, fields in batch:
            last = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            yield last, fields
        last = "(" + last


# -- CPU per message -------------------------------------------------------------------------

TICK: Final = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def engine_cpu_s() -> float:
    """CPU seconds of the Docker engine: dockerd, containerd and its shims."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(("dockerd", "containerd")):
                total += process_cpu_s(int(entry.name))
    return total


def machine_busy_s() -> float:
    """CPU seconds every core spent busy since boot (all of /proc/stat's cpu line but idle)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK


@dataclass(frozen=True)
class Cpu:
    gateway: dict[str, float]
    """By process: "gateway" (`stockade up`: channels, router, supervisor and mesh in one
    process) and "its redis"; or, roles apart, each role's process and "its redis"."""
    bench: float
    """This process: the Telegram and model fakes and the load generator."""
    engine: float
    machine: float

    @classmethod
    def now(cls, gateway: Running) -> Cpu:
        return cls(
            {
                who: sum(process_cpu_s(pid) for pid in pids)
                for who, pids in gateway.processes().items()
            },
            process_cpu_s(os.getpid()),
            engine_cpu_s(),
            machine_busy_s(),
        )

    def per_message_ms(self, later: Cpu, messages: int, seconds: float) -> str:
        """CPU ms per answered message between two readings, by who spent it, and the
        cores each kept busy (a process near 1.0 is the limit: one event loop)."""
        if messages == 0 or seconds <= 0:
            return "no messages"
        each = {who: later.gateway.get(who, 0.0) - s for who, s in self.gateway.items()}
        each |= {
            "bench + fakes": later.bench - self.bench,
            "docker engine": later.engine - self.engine,
            "whole machine": later.machine - self.machine,
        }
        named = sum(each.values()) - each["whole machine"]
        each["agent containers and other work"] = each["whole machine"] - named
        return ", ".join(
            f"{who} {s * 1000 / messages:.1f} ({s / seconds:.2f} cores)" for who, s in each.items()
        )


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Result:
    figures: list[Figure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


async def warm_up(outbox: Outbox, senders: list[int], options: argparse.Namespace) -> float:
    """Every sender's agent started and answering; the seconds it took."""
    began = time.perf_counter()
    first = [outbox.send(s, "hello, warming up") for s in senders]
    _, missing = await replies(first, WARM_TIMEOUT_S)
    if missing:
        raise RuntimeError(f"{missing} of {len(senders)} users got no reply while warming up")
    cold = time.perf_counter() - began
    if options.warmup > 0:
        _, missing = await replies(
            await steady(outbox, senders, options.rate, options.warmup), DRAIN_TIMEOUT_S
        )
        if missing:
            raise RuntimeError(f"{missing} warm-up messages got no reply")
    return cold


async def overhead(
    gateway: Running,
    outbox: Outbox,
    senders: list[int],
    options: argparse.Namespace,
    rate: float,
    seconds: float,
) -> Result:
    """The steady phase at `rate`; the issue's targets apply at `options.rate`."""
    result = Result()
    judged = rate == options.rate
    loads = [load()]
    before, began = Cpu.now(gateway), time.perf_counter()
    sent = await steady(outbox, senders, rate, seconds)
    loads.append(load())
    timed, missing = await replies(sent, DRAIN_TIMEOUT_S)
    cpu = before.per_message_ms(Cpu.now(gateway), len(timed), time.perf_counter() - began)
    took = sorted(t.seconds - options.model_delay for t in timed)
    p50, p95, p99 = cut(took, 50), cut(took, 95), cut(took, 99)
    load_text = f"{loads[0]:.2f} → {loads[1]:.2f}"
    command = command_line(options, "overhead")
    what = f"{len(sent)} messages, {len(senders)} users, {rate:g} msg/s, {seconds:g} s"
    shape, bench = SHAPES[options.shape], BENCHES[options.shape]
    result.lines.append(f"overhead: {what}; load {load_text}")
    result.lines.append(
        f"  p50 {ms(p50)} ms  p95 {ms(p95)} ms  p99 {ms(p99)} ms  max {ms(max(took, default=0))} "
        f"ms; unanswered {missing}; webhook refusals {outbox.refused}"
    )
    result.lines.append(f"  CPU ms per answered message (cores busy): {cpu}")
    result.figures += [
        Figure(bench, f"end-to-end overhead p50 ({what}; {shape})", f"{ms(p50)} ms",
               "< 15 ms" if judged else "-", p50 < TARGET_P50_S if judged else None, command,
               load_text),
        Figure(bench, f"end-to-end overhead p95 ({rate:g} msg/s; {shape})", f"{ms(p95)} ms",
               "-", None, command, load_text),
        Figure(bench, f"end-to-end overhead p99 ({rate:g} msg/s; {shape})", f"{ms(p99)} ms",
               "< 60 ms" if judged else "-", p99 < TARGET_P99_S if judged else None, command,
               load_text),
        Figure(bench, f"CPU ms per answered message (cores busy), {rate:g} msg/s ({shape})",
               cpu, "-", None, command, load_text),
        Figure(bench,
               f"messages unanswered within {DRAIN_TIMEOUT_S:g} s ({rate:g} msg/s; {shape})",
               str(missing), "0", missing == 0, command, load_text),
    ]  # fmt: skip
    parts = await stages(gateway, timed)
    shown = []
    for stage in STAGES:
        got = sorted(parts[stage])
        shown.append(f"{stage} {ms(cut(got, 50))} / {ms(cut(got, 99))}")
    breakdown = "; ".join(shown)
    result.lines.append(f"  where the time goes, p50 / p99 ms (ms-resolution marks): {breakdown}")
    result.figures.append(
        Figure(bench, f"… where the time goes at {rate:g} msg/s, p50 / p99 ms ({shape})",
               breakdown, "-", None, command, load_text)
    )  # fmt: skip
    return result


async def drained(fake: ReplyingTelegram) -> int:
    """Waits for every message still in the pipeline; how many got no reply."""
    _, missing = await replies(list(fake.waiting.values()), DRAIN_TIMEOUT_S)
    return missing


async def throughput(
    gateway: Running, outbox: Outbox, senders: list[int], options: argparse.Namespace
) -> Result:
    result = Result()
    loads = [load()]
    begin = time.perf_counter()
    before = Cpu.now(gateway)
    closed = await closed_loop(outbox, senders, options.depth, options.throughput_seconds)
    cpu = before.per_message_ms(Cpu.now(gateway), len(closed.answered), time.perf_counter() - begin)
    loads.append(load())
    ramp = begin + options.throughput_seconds / 4
    window = options.throughput_seconds * 3 / 4
    rate = sum(1 for at in closed.answered if at >= ramp) / window
    load_text = f"{loads[0]:.2f} → {loads[1]:.2f}"
    in_flight = options.users * options.depth
    shape, bench = SHAPES[options.shape], BENCHES[options.shape]
    result.lines.append(
        f"throughput: {in_flight} in flight ({options.users} users x {options.depth}), "
        f"{options.throughput_seconds:g} s: {rate:.0f} replies/s over the last {window:g} s; "
        f"{closed.sent} sent, {len(closed.answered)} answered in time; load {load_text}"
    )
    result.lines.append(f"  CPU ms per answered message (cores busy): {cpu}")
    result.figures.append(
        Figure(bench,
               f"sustained throughput, {options.users} users, warm agents, {in_flight} in flight "
               f"({shape})",
               f"{rate:.0f} msg/s", ">= 300 msg/s", rate >= TARGET_RATE,
               command_line(options, "throughput"), load_text)
    )  # fmt: skip
    result.figures.append(
        Figure(bench, f"CPU ms per answered message (cores busy), throughput ({shape})", cpu, "-",
               None, command_line(options, "throughput"), load_text)
    )  # fmt: skip
    return result


def command_line(options: argparse.Namespace, only: str) -> str:
    parts = [COMMAND, "--only", only]
    if options.shape != "up":
        parts += ["--shape", options.shape]
    if options.users != 50:
        parts += ["--users", str(options.users)]
    if options.model_delay:
        parts += ["--model-delay", f"{options.model_delay:g}"]
    if only == "overhead" and (options.rate, options.seconds) != (50.0, 30.0):
        parts += ["--rate", f"{options.rate:g}", "--seconds", f"{options.seconds:g}"]
    if only == "overhead" and (options.light_rate, options.light_seconds) != (10.0, 15.0):
        parts += ["--light-rate", f"{options.light_rate:g}"]
        parts += ["--light-seconds", f"{options.light_seconds:g}"]
    if only == "throughput" and (options.depth, options.throughput_seconds) != (2, 20.0):
        parts += ["--depth", str(options.depth), "--throughput-seconds"]
        parts.append(f"{options.throughput_seconds:g}")
    return " ".join(parts)


async def measure(options: argparse.Namespace) -> Result:
    """Both phases (or `options.only`), one gateway for both; figures and printed lines."""
    print("checking the agent image (a first build takes about a minute)", flush=True)
    with tempfile.TemporaryDirectory(prefix="stk-bp-", dir="/tmp") as data:
        await ensure_image(TEST_IMAGE, DockerSettings(), Path(data))
    senders = [FIRST_USER + i for i in range(options.users)]
    result = Result()
    async with (
        started_telegram(ReplyingTelegram()) as fake,
        running(options.shape, bench_environment(options, fake)) as gateway,
    ):
        gateway.model.delay_s = options.model_delay
        await fake.webhook_set(30)
        outbox = Outbox(fake)
        print(f"warming up: {options.users} agents, then {options.warmup:g} s steady", flush=True)
        cold = await warm_up(outbox, senders, options)
        result.lines.append(f"warm-up: all {options.users} agents answered in {cold:.1f} s")
        if options.only in (None, "overhead"):
            rates = [options.light_rate] if 0 < options.light_rate < options.rate else []
            for rate in [*rates, options.rate]:
                seconds = options.seconds if rate == options.rate else options.light_seconds
                print(f"overhead: {rate:g} msg/s for {seconds:g} s", flush=True)
                part = await overhead(gateway, outbox, senders, options, rate, seconds)
                result.figures += part.figures
                result.lines += part.lines
                if left := await drained(fake):
                    result.lines.append(f"  {left} messages still unanswered after the phase")
        if options.only in (None, "throughput"):
            if left := await drained(fake):
                result.lines.append(f"  {left} messages unanswered before the throughput phase")
            print(f"throughput: closed loop for {options.throughput_seconds:g} s", flush=True)
            part = await throughput(gateway, outbox, senders, options)
            result.figures += part.figures
            result.lines += part.lines
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while outbox.tasks:
                    await asyncio.gather(*outbox.tasks, return_exceptions=True)
        if restarts := gateway.restarts():
            result.lines.append(f"roles that died and were restarted (exit statuses): {restarts}")
        result.lines.append(f"gateway log: {log_summary(gateway.log())}")
    return result


def main(options: argparse.Namespace) -> int:
    result = asyncio.run(measure(options))
    print()
    print(machine_line(machine()))
    print(f"model {options.model}, answering after {options.model_delay:g} s; Telegram webhook")
    print(f"gateway: {SHAPES[options.shape]} ({SHAPE_DETAIL[options.shape]})")
    for line in result.lines:
        print(line)
    for f in result.figures:
        print(f"{f.name:<70} {f.result:<14} {f.target:<14} {f.verdict}")
    missed = [f.name for f in result.figures if f.passed is False]
    if missed:
        print(f"FAIL: {', '.join(missed)}")
        return 1
    print("OK: every target met")
    return 0


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    found.add_argument("--users", type=int, default=50)
    found.add_argument("--rate", type=float, default=50.0, help="steady messages per second")
    found.add_argument("--seconds", type=float, default=30.0, help="steady phase, s")
    found.add_argument("--warmup", type=float, default=5.0, help="steady warm-up, s")
    found.add_argument(
        "--light-rate", type=float, default=10.0, help="also a lighter steady rate first (0: no)"
    )
    found.add_argument("--light-seconds", type=float, default=15.0)
    found.add_argument("--throughput-seconds", type=float, default=20.0)
    found.add_argument("--depth", type=int, default=2, help="messages in flight per user")
    found.add_argument("--model-delay", type=float, default=0.0, help="the fake model's delay, s")
    found.add_argument("--only", choices=("overhead", "throughput"))
    found.add_argument(
        "--shape", choices=tuple(SHAPES), default="up", help="`stockade up`, or each role apart"
    )
    found.add_argument("--model", default="hosted_vllm/fake", help="LiteLLM model string")
    return found


if __name__ == "__main__":
    arguments = parser()
    options = arguments.parse_args()
    if min(options.users, options.rate, options.seconds, options.depth) <= 0:
        arguments.error("--users, --rate, --seconds and --depth must be positive")
    if options.throughput_seconds <= 0 or options.warmup < 0 or options.model_delay < 0:
        arguments.error("--throughput-seconds must be positive, --warmup and --model-delay >= 0")
    try:
        sys.exit(main(options))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
