"""Benchmark of the mesh's cost per chat completion, against a fake model that answers at once.

    .venv/bin/python bench/bench_mesh.py [--calls N] [--warmup W]

Three ways to the same fake OpenAI-compatible model on 127.0.0.1 (named as the default
model, openai/gpt-4o-mini, so LiteLLM prices it as it would a real one), each N times
with each of two request bodies, all interleaved (the order rotates every round, so
drift and position hit every way alike):

  fake        the agent's request body POSTed straight to the fake over HTTP, no LiteLLM
  litellm     `litellm.acompletion` -> fake, with the arguments the mesh passes
  mesh        the agent's own client (agents._client.MeshClient, a fresh connection per
              request, as in the container) -> the mesh's unix socket -> LiteLLM -> fake

The bodies are what the agent sends: its system prompt, its tool schemas and either
one user message (a first turn) or the most its memory keeps plus the new message (a
warm turn of a running conversation). The gateway side (a private redis-server, the real
Bus and Mesh after `Mesh.warm()`, and the fake) runs in this process, as `stockade up`
runs it. The agent-side clients run in a second process, as the agent would, and time
themselves; LiteLLM is timed in this process. The first W rounds are reported apart
(the first call of all is the first model call after `warm()`) and left out of the
percentiles. The mesh's way includes everything a model call pays for in the gateway:
the door, the checks, the budget reservation and settlement (the real gate on the
private Redis, append-only file on, and its ledger on disk) and the key from the real
vault. Target: the mesh's overhead over the direct LiteLLM call (p50 difference), under
5 ms for each body. It also shows how much of a warm turn (bench/bench_agents.py) is the
model call and where that time goes.

It also reports the gateway's CPU time per model call, and LiteLLM's part of it: the
CPU of this process per call, less what the fake model itself costs here (the plain-HTTP
way's). At one model call per message, that bounds the messages per second the machine's
cores can carry, whatever else the pipeline does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from agents._client import MeshClient
from agents._loop import SYSTEM_PROMPT
from agents._memory import MAX_MESSAGES
from agents._tools import SCHEMAS
from gateway.bus import Bus
from gateway.embedded_redis import embedded_redis
from gateway.mesh import SOCKET_NAME, Mesh
from gateway.settings import BusSettings, MeshSettings, ModelSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

from tests.calls import model_calls, priced_model
from tests.fakes.model_server import DEFAULT_TEXT, running_model_server

MODEL: Final = ModelSettings().name
TARGET_OVERHEAD_MS: Final = 5.0
"""The configured default, pointed at the fake: LiteLLM knows its price, as for a real model."""
USER: Final = "u0bench0mesh00"
WAYS: Final = ("mesh", "litellm", "fake")
"""The mesh first: its first call is the first model call after `Mesh.warm()`, as in service."""
BODIES: Final = ("first", "full")
READY_LINE: Final = "ready"
NAMES: Final = {
    "fake": "agent -> fake over HTTP (no LiteLLM)",
    "litellm": "LiteLLM -> fake",
    "mesh": "agent -> mesh socket -> LiteLLM -> fake",
}


def agent_body(kind: str) -> dict[str, Any]:
    """What the agent POSTs for the first step of a turn: memory empty ("first") or full."""
    remembered: list[dict[str, Any]] = []
    if kind == "full":
        for i in range(MAX_MESSAGES):
            if i % 2 == 0:
                remembered.append({"role": "user", "content": "what is two plus two?"})
            else:
                remembered.append({"role": "assistant", "content": DEFAULT_TEXT})
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            *remembered,
            {"role": "user", "content": "hello, how are you today?"},
        ],
        "tools": SCHEMAS,
    }


# -- the agent-side process ------------------------------------------------------------


def post_to_fake(api_base: str, body: bytes) -> None:
    """One POST to the fake on a fresh connection, as plain as HTTP gets."""
    url = urlsplit(api_base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request(
            "POST",
            f"{url.path}/chat/completions",
            body=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"the fake answered {response.status}: {raw[:200]!r}")


def client_main(socket_path: str, api_base: str, max_tokens: int) -> None:
    """Reads "<way> <body>" per line, makes that call, answers with the seconds it took."""
    client = MeshClient(socket_path, give_up_s=5.0)
    bodies = {kind: agent_body(kind) for kind in BODIES}
    # What LiteLLM sends the provider for the same turn.
    provider = MODEL.split("/", 1)[1]
    raw = {
        kind: json.dumps({"model": provider, **body, "max_tokens": max_tokens}).encode()
        for kind, body in bodies.items()
    }
    print(READY_LINE, flush=True)
    for line in sys.stdin:
        way, kind = line.split()
        started = time.perf_counter()
        if way == "mesh":
            client.chat(bodies[kind])
        elif way == "fake":
            post_to_fake(api_base, raw[kind])
        else:
            raise SystemExit(f"unknown way {way!r}")
        print(repr(time.perf_counter() - started), flush=True)


# -- the gateway-side process ------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    way: str
    body: str
    first_ms: float
    samples_ms: list[float]
    cpu_ms: float
    """Mean CPU time of this (the gateway-side) process per call."""

    def cut(self, percent: int) -> float:
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[percent - 1]


def cpu_per_call_ms(rows: list[Row], body: str) -> tuple[float, float]:
    """The gateway's CPU per call (mesh, checks, Redis client, LiteLLM) and LiteLLM's alone.

    The fake model runs in this process too; its share is what the plain-HTTP way costs
    here (the client is the other process), and it is taken off both."""
    by_way = {r.way: r for r in rows if r.body == body}
    fake = by_way["fake"].cpu_ms
    return by_way["mesh"].cpu_ms - fake, by_way["litellm"].cpu_ms - fake


class AgentProcess:
    """The second process: one call per request, its own timing back."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, socket_path: Path, api_base: str, max_tokens: int) -> AgentProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(socket_path),
            api_base,
            str(max_tokens),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        agent = cls(proc)
        line = await agent._line()
        if line != READY_LINE:
            raise RuntimeError(f"the client process did not start: {line!r}")
        return agent

    async def _line(self) -> str:
        assert self._proc.stdout is not None
        raw = await asyncio.wait_for(self._proc.stdout.readline(), timeout=60)
        if not raw:
            raise RuntimeError(f"the client process ended (exit {await self._proc.wait()})")
        return raw.decode().strip()

    async def call(self, way: str, body: str) -> float:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{way} {body}\n".encode())
        await self._proc.stdin.drain()
        return float(await self._line())

    async def aclose(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


async def measure(calls: int, warmup: int) -> list[Row]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="stk-bm-", dir="/tmp") as tmp:
        async with (
            embedded_redis(Path(tmp) / "redis") as url,
            running_model_server() as fake,
            contextlib.AsyncExitStack() as exits,
        ):
            client = aioredis.Redis.from_url(url)
            settings = priced_model(fake.url, MODEL, price=None, timeout_s=60.0)
            # The real vault and budget gate with its ledger: each call reserves and settles.
            gated = await exits.enter_async_context(
                model_calls(client, Path(tmp) / "calls", {"default": settings}, key="k")
            )
            mesh = Mesh(Bus(client, BusSettings()), gated.calls, MeshSettings(), Path(tmp) / "m")
            agent: AgentProcess | None = None
            try:
                await mesh.warm()
                # Loaded by warm() (which also keeps LiteLLM's cost map local): a cache hit.
                import litellm

                directory = await mesh.open(USER)
                agent = await AgentProcess.start(
                    directory / SOCKET_NAME, fake.url, settings.max_tokens
                )
                runner = agent
                bodies = {kind: agent_body(kind) for kind in BODIES}

                async def direct(kind: str) -> float:
                    # The arguments gateway/mesh/_model.py passes, with the cap the mesh adds.
                    started = time.perf_counter()
                    await litellm.acompletion(
                        model=MODEL,
                        api_base=fake.url,
                        api_key="k",
                        timeout=settings.timeout_s,
                        max_retries=0,
                        _skip_mcp_handler=True,
                        max_tokens=settings.max_tokens,
                        **bodies[kind],
                    )
                    return time.perf_counter() - started

                how: dict[str, Callable[[str], Awaitable[float]]] = {
                    "mesh": lambda kind: runner.call("mesh", kind),
                    "litellm": direct,
                    "fake": lambda kind: runner.call("fake", kind),
                }
                pairs = [(way, kind) for kind in BODIES for way in WAYS]
                samples: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
                cpu: dict[tuple[str, str], float] = dict.fromkeys(pairs, 0.0)
                for i in range(warmup + calls):
                    shift = i % len(pairs)
                    for way, kind in pairs[shift:] + pairs[:shift]:
                        # Finished work the call set off (LiteLLM's logging task, the
                        # budget's settlement) runs before the next call's clock starts.
                        await asyncio.sleep(0)
                        before = time.process_time()
                        samples[way, kind].append(await how[way](kind) * 1000)
                        await asyncio.sleep(0.001)
                        if i >= warmup:
                            cpu[way, kind] += time.process_time() - before
            finally:
                if agent is not None:
                    await agent.aclose()
                await mesh.aclose()
                await client.aclose()
    return [
        Row(
            way,
            kind,
            samples[way, kind][0],
            samples[way, kind][warmup:],
            cpu[way, kind] * 1000 / calls,
        )
        for way, kind in pairs
    ]


def main(calls: int, warmup: int) -> int:
    load = os.getloadavg()[0]
    rows = asyncio.run(measure(calls, warmup))
    print(
        f"Python {platform.python_version()}, LiteLLM {importlib.metadata.version('litellm')}, "
        f"openai {importlib.metadata.version('openai')}, aiohttp {aiohttp.__version__}, "
        f"{platform.system()} {platform.release()}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    print(
        f"{calls} calls per way and body, interleaved, after {warmup} warm-up rounds; load "
        f"average (1 min) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    sizes = {kind: len(agent_body(kind)["messages"]) for kind in BODIES}
    for kind in BODIES:
        print(f"{kind} turn: {sizes[kind]} messages with the system prompt, {len(SCHEMAS)} tools")
        print(
            f"  {'way':<42} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'mean ms':>8}"
        )
        by_way = {r.way: r for r in rows if r.body == kind}
        for way in WAYS:
            r = by_way[way]
            print(
                f"  {NAMES[way]:<42} {r.first_ms:>9.2f} {r.cut(50):>8.2f} {r.cut(95):>8.2f} "
                f"{r.cut(99):>8.2f} {statistics.fmean(r.samples_ms):>8.2f}"
            )
        print(
            f"  LiteLLM's own cost (p50, LiteLLM - plain HTTP): "
            f"{by_way['litellm'].cut(50) - by_way['fake'].cut(50):.2f} ms; "
            f"the mesh's (p50, mesh - LiteLLM): "
            f"{by_way['mesh'].cut(50) - by_way['litellm'].cut(50):.2f} ms"
        )
        gateway, litellm = cpu_per_call_ms(rows, kind)
        print(
            f"  gateway CPU per model call: {gateway:.2f} ms, of which LiteLLM {litellm:.2f} ms; "
            f"the most calls 2 cores could make: {2000 / gateway:.0f}/s"
        )
    overheads = {
        kind: next(r for r in rows if r.body == kind and r.way == "mesh").cut(50)
        - next(r for r in rows if r.body == kind and r.way == "litellm").cut(50)
        for kind in BODIES
    }
    worst = max(overheads.values())
    verdict = "PASS" if worst < TARGET_OVERHEAD_MS else "FAIL"
    shown = ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in overheads.items())
    print(
        f"mesh overhead over LiteLLM (p50): {shown}; target < {TARGET_OVERHEAD_MS:g} ms: {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.client:
        socket_path, api_base, max_tokens = options.client
        with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
            client_main(socket_path, api_base, int(max_tokens))
        sys.exit(0)
    if options.calls < 2 or options.warmup < 1:
        parser.error("--calls must be 2 or more and --warmup 1 or more")
    sys.exit(main(options.calls, options.warmup))
