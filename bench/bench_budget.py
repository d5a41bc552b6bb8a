"""Benchmark of the budget gate: reserve + settle round trips on a private Redis.

    .venv/bin/python bench/bench_budget.py [--calls N] [--concurrency C] [--aof off|on|both]

Starts its own redis-server on a unix socket (append-only file with `appendfsync
everysec`, as `stockade up` runs it, unless --aof says otherwise), and a `BudgetGate`
with the default caps and a ledger in a temporary directory, as the mesh uses them.

  sequential  N calls one after another: `reserve` then `settle` at a real cost, each
              timed from the reserve to the settlement's answer (target: median < 1 ms)
  concurrent  C users at once, released together through a barrier, N calls in all:
              round trips per second, and the latency of each under that load

Each call is one user's model call: a 2,000-token prompt bound and max_tokens 1,024,
priced at $0.15 / $0.60 per million tokens. Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import hiredis
import redis
import redis.asyncio as aioredis

from gateway.embedded_redis import embedded_redis
from gateway.policy import BudgetGate, Ledger, TokenPrice
from gateway.policy.budget import cost_nano
from gateway.settings import BudgetSettings

TARGET_P50_MS: Final = 1.0
PRICE: Final = TokenPrice.from_usd(0.15e-6, 0.60e-6)
PROMPT_BOUND: Final = 2_000
MAX_TOKENS: Final = 1_024


@dataclass(frozen=True)
class Result:
    label: str
    calls: int
    total_s: float
    latencies: list[float]

    def cut(self, percent: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[percent - 1] * 1000

    @property
    def rate(self) -> float:
        return self.calls / self.total_s


async def round_trip(gate: BudgetGate, user: str) -> float:
    start = time.perf_counter()
    reservation = await gate.reserve(user, "openai/gpt-4o-mini", PRICE, PROMPT_BOUND, MAX_TOKENS)
    billed = cost_nano(PRICE, 600, 150)  # a real call uses far less than its bound
    await gate.settle(reservation.id, billed, 600, 150)
    return time.perf_counter() - start


async def sequential(gate: BudgetGate, calls: int, label: str) -> Result:
    for i in range(50):  # warm: scripts loaded, connection open
        await round_trip(gate, f"warm-{i}")
    latencies = []
    start = time.perf_counter()
    for i in range(calls):
        latencies.append(await round_trip(gate, f"user-{i % 50}"))
    return Result(label, calls, time.perf_counter() - start, latencies)


async def concurrent(gate: BudgetGate, calls: int, users: int, label: str) -> Result:
    barrier = asyncio.Barrier(users)
    latencies: list[float] = []

    async def user(k: int, n: int) -> None:
        await barrier.wait()
        for _ in range(n):
            latencies.append(await round_trip(gate, f"agent-{k}"))

    each, extra = divmod(calls, users)
    start = time.perf_counter()
    await asyncio.gather(*(user(k, each + (1 if k < extra else 0)) for k in range(users)))
    return Result(label, calls, time.perf_counter() - start, latencies)


async def run(url: str, aof: str, calls: int, users: int) -> tuple[str, list[Result]]:
    client = aioredis.Redis.from_url(url, max_connections=users + 16)
    try:
        version = str((await client.info("server"))["redis_version"])
        with tempfile.TemporaryDirectory(prefix="stk-bl-") as ledger_dir:
            async with Ledger(Path(ledger_dir)) as ledger:
                # The default caps would stop a user after a few hundred calls.
                settings = BudgetSettings.model_validate(
                    {"user": {"daily_usd": 1_000, "monthly_usd": 10_000}, "total": {}}
                )
                gate = BudgetGate(client, settings, ledger)
                await gate.recover()
                one = await sequential(gate, calls, f"sequential, AOF {aof}")
                many = await concurrent(gate, calls, users, f"{users} concurrent, AOF {aof}")
    finally:
        await client.aclose()
    return version, [one, many]


async def measure(calls: int, users: int, aofs: list[str]) -> tuple[str, list[Result]]:
    """Each AOF setting's sequential and concurrent runs; and the redis-server version."""
    results: list[Result] = []
    version = "?"
    for aof in aofs:
        # A short directory: the server's unix socket path is limited to 107 bytes.
        with tempfile.TemporaryDirectory(prefix="stk-bg-", dir="/tmp") as tmp:
            async with embedded_redis(Path(tmp), appendonly=aof == "on") as url:
                version, found = await run(url, aof, calls, users)
                results += found
    return version, results


async def main(calls: int, users: int, aofs: list[str]) -> int:
    version, results = await measure(calls, users, aofs)
    print(
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"hiredis {hiredis.__version__}, redis-server {version}"
    )
    print(f"{calls} reserve + settle round trips per run (ledger on, default settings)")
    print(f"{'run':<28} {'trips/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r.label:<28} {r.rate:>8.0f} {r.cut(50):>8.3f} {r.cut(95):>8.3f} {r.cut(99):>8.3f}")
    slow = [r.label for r in results if r.label.startswith("sequential") and r.cut(50) >= 1.0]
    if slow:
        print(f"FAIL: median round trip not under {TARGET_P50_MS} ms: {', '.join(slow)}")
        return 1
    print(f"PASS: median reserve + settle round trip under {TARGET_P50_MS} ms")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--aof", choices=("on", "off", "both"), default="both")
    options = parser.parse_args()
    if options.calls < 100 or options.concurrency < 1:
        parser.error("--calls must be 100 or more and --concurrency positive")
    aofs = ["off", "on"] if options.aof == "both" else [options.aof]
    sys.exit(asyncio.run(main(options.calls, options.concurrency, aofs)))
