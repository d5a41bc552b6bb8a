"""Benchmark of each channel adapter's inbound path: platform fake → adapter → envelope on the bus.

    .venv/bin/python bench/bench_channels.py [--only NAME ...] [--messages N] [--burst M]

For each adapter (Telegram in long-polling and in webhook mode, Slack in Socket Mode
and in HTTP mode, WhatsApp through Twilio's webhook, Discord's gateway) the real adapter runs under
`run_channel`, as the channels role runs it, against its wire-level fake from
`tests/fakes/` and a private redis-server (unix socket, append-only file on, as
`stockade up` starts it). Everything runs in this one process on 127.0.0.1.

Two figures per adapter:

  latency     one message at a time, N times: from asking the fake to deliver it (it
              answers a long poll, posts a signed webhook, or writes a Socket Mode
              frame) until its envelope is on `stockade:in`. The fake's own HTTP or
              WebSocket work is inside the figure, so it bounds the adapter's overhead
              from above. Target: median under 2 ms.
  overhead    for the webhook variants, the latency minus that of a bare POST of a
              similar body to a do-nothing mount of the same webhook server from a
              kept-alive client (the "loopback" line); for long polling, minus a bare
              long poll of the same fake ("poll loopback"): what the adapter, its checks
              and the bus add to the HTTP round trip itself. Socket Mode and Discord's
              gateway are judged on the whole path.
  throughput  M messages from 50 senders, delivered with up to 32 in flight: messages
              per second until the last envelope is on the bus. Target: 500 per second.

The ingress rate limit is off here (it would drop a burst from one sender by design).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import redis.asyncio as aioredis

from channels._shared import MediaPolicy, WebhookLimits, WebhookServer, run_channel
from channels._shared.webhooks import Webhook, WebhookRequest, WebhookResponse
from channels.base import ChannelContext
from gateway.bus import IN_STREAM, Blobs, Bus, Deliveries
from gateway.embedded_redis import embedded_redis
from gateway.settings import BusSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes and harnesses

from tests.channels.contract import Event, Harness
from tests.fakes.telegram import running_telegram

LATENCY_TARGET_MS: Final = 2.0
RATE_TARGET: Final = 500.0
IN_FLIGHT: Final = 32
SENDERS: Final = 50
# name → (harness module, whether it gets the webhook server: webhook/http mode)
VARIANTS: Final = {
    "telegram-polling": ("telegram", False),
    "telegram-webhook": ("telegram", True),
    "slack-socket": ("slack", False),
    "slack-http": ("slack", True),
    "whatsapp": ("whatsapp", True),
    "discord": ("discord", False),
}
POLLED: Final = frozenset(("telegram-polling",))


@contextlib.asynccontextmanager
async def running(
    client: aioredis.Redis, module_name: str, webhooks: bool
) -> AsyncIterator[Harness]:
    module = importlib.import_module(f"tests.channels.{module_name}.harness")
    server = WebhookServer(
        "127.0.0.1", 0, WebhookLimits(per_peer_per_s=1e6, per_peer_burst=1_000_000)
    )
    async with server:
        context = ChannelContext(
            blobs=Blobs(client),
            media=MediaPolicy(),
            deliveries=Deliveries(client),
            webhooks=server if webhooks else None,
        )
        async with module.open_harness(context) as harness:
            bus = Bus(client, BusSettings())
            task = asyncio.create_task(run_channel(harness.channel, bus, "bench"))
            try:
                yield harness
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def wait_for_length(client: aioredis.Redis, length: int) -> None:
    while await client.xlen(IN_STREAM) < length:
        await asyncio.sleep(0.0002)


async def loopback(n: int) -> list[float]:
    """A bare webhook round trip: the same server, a mount that checks and does nothing."""

    async def nothing(_: WebhookRequest) -> WebhookResponse:
        return WebhookResponse()

    limits = WebhookLimits(per_peer_per_s=1e6, per_peer_burst=1_000_000)
    body = b'{"update_id": 1, "message": {"text": "latency message"}}' * 4
    async with (
        WebhookServer("127.0.0.1", 0, limits) as server,
        aiohttp.ClientSession() as session,
    ):
        server.mount(Webhook("/bare", lambda _: True, nothing, "bare"))
        times = []
        for _ in range(n + 20):
            started = time.perf_counter()
            async with session.post(server.public_url("/bare"), data=body) as response:
                await response.read()
            times.append((time.perf_counter() - started) * 1000)
        return times[20:]


async def poll_loopback(n: int) -> list[float]:
    """A bare long poll of the Telegram fake from a kept-alive aiohttp client: the
    fake's and the transport's share of the polling path."""
    async with running_telegram() as fake, aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/bot{fake.token}/getUpdates"
        offset, times = 0, []
        for _ in range(n + 20):
            form = {"offset": str(offset), "timeout": "5"}
            poll = asyncio.create_task(session.post(url, data=form))
            await asyncio.sleep(0.002)  # the poll is waiting in the fake, as the adapter's is
            started = time.perf_counter()
            offset = fake.add_update(fake.message("latency message")) + 1
            async with await poll as response:
                await response.read()
            times.append((time.perf_counter() - started) * 1000)
        return times[20:]


async def latency(client: aioredis.Redis, harness: Harness, n: int) -> list[float]:
    times = []
    for i in range(n):
        base = await client.xlen(IN_STREAM)
        started = time.perf_counter()
        await harness.deliver(Event(f"latency message {i}", sender_id=str(2000 + i % SENDERS)))
        await wait_for_length(client, base + 1)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def throughput(client: aioredis.Redis, harness: Harness, m: int) -> float:
    base = await client.xlen(IN_STREAM)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await harness.deliver(Event(f"burst message {i}", sender_id=str(3000 + i % SENDERS)))

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(m)))
    await wait_for_length(client, base + m)
    return m / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(only: list[str], n: int, m: int) -> int:
    print(f"python {platform.python_version()} on {platform.machine()}, N={n}, M={m}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="stk-bc-", dir="/tmp") as tmp:
        async with embedded_redis(Path(tmp)) as url:
            client = aioredis.Redis.from_url(url)
            try:
                bare = statistics.median(await loopback(n))
                print(f"{'loopback':18} latency p50 {bare:6.2f} ms (a bare webhook round trip)")
                bare_poll = statistics.median(await poll_loopback(n))
                print(f"{'poll loopback':18} latency p50 {bare_poll:6.2f} ms (a bare long poll)")
                for name, (module_name, webhooks) in VARIANTS.items():
                    if only and name not in only:
                        continue
                    await client.flushall()
                    async with running(client, module_name, webhooks) as harness:
                        await latency(client, harness, 20)  # warm-up, not reported
                        times = await latency(client, harness, n)
                        rate = await throughput(client, harness, m)
                    p50 = statistics.median(times)
                    base = bare if webhooks else bare_poll if name in POLLED else None
                    # Webhooks and polling: the adapter's share over a bare round trip;
                    # Socket Mode: the whole path, an upper bound on that share.
                    judged = p50 if base is None else p50 - base
                    ok = judged < LATENCY_TARGET_MS and rate >= RATE_TARGET
                    failed |= not ok
                    overhead = " " * 17 if base is None else f"overhead {p50 - base:5.2f} ms"
                    print(
                        f"{name:18} latency p50 {p50:6.2f} ms  p95 {pct(times, 0.95):6.2f} ms"
                        f"  p99 {pct(times, 0.99):6.2f} ms  {overhead}"
                        f"  throughput {rate:7.0f} msg/s   {'PASS' if ok else 'FAIL'}"
                    )
            finally:
                await client.aclose()
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--messages", type=int, default=500, help="N for the latency figure")
    parser.add_argument("--burst", type=int, default=2000, help="M for the throughput figure")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.only, args.messages, args.burst)))
