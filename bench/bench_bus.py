"""Benchmark of the bus: publish → consume → ack throughput and latency on a private Redis.

    .venv/bin/python bench/bench_bus.py [--messages N] [--publishers P] [--same-process]

Starts its own redis-server twice (append-only file off, then on with appendfsync
everysec). A publisher process sends N small Inbound envelopes with their dedupe
key (the channels' path) from P concurrent tasks, while ONE consumer runs
`Bus.consume` on them in this process, as the channel and router roles would.
`--same-process` runs the publisher tasks beside the consumer instead. Reports
messages per second from the first publish to the last ack, and publish →
handler latency (the consumer acks each batch right after its last handler).
Exits 1 when a run is below the target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from gateway.bus import IN_STREAM, Bus, Delivery
from gateway.embedded_redis import embedded_redis
from gateway.envelope import Inbound
from gateway.settings import BusSettings

TARGET_MSG_S: Final = 5_000
GROUP: Final = "bench"
START_LINE: Final = "start"


@dataclass(frozen=True)
class Result:
    label: str
    messages: int
    total_s: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.messages / self.total_s


def envelope(i: int) -> Inbound:
    return Inbound(
        channel="bench",
        event_id=str(i),
        sender_id="sender-1",
        conversation_id="chat-1",
        text="hello, how are you today?",
        received_at=time.time(),
        sender_name="Bench",
    )


async def publish(bus: Bus, messages: int, publishers: int) -> None:
    async def publisher(first: int) -> None:
        for i in range(first, messages, publishers):
            event = envelope(i)
            await bus.publish(IN_STREAM, event, dedupe=event.dedupe_key)

    await asyncio.gather(*(publisher(k) for k in range(publishers)))


async def publisher_main(url: str, messages: int, publishers: int) -> None:
    """The publisher process: says when it starts, then publishes everything."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.ping()
        print(f"{START_LINE} {time.time()!r}", flush=True)
        await publish(Bus(client, BusSettings()), messages, publishers)
    finally:
        await client.aclose()


async def run(url: str, label: str, messages: int, publishers: int, same_process: bool) -> Result:
    client = aioredis.Redis.from_url(url)
    bus = Bus(client, BusSettings())
    await bus.ensure_group(IN_STREAM, GROUP)
    latencies: list[float] = []
    handled = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        envelope = delivery.envelope
        assert isinstance(envelope, Inbound)
        latencies.append(time.time() - envelope.received_at)
        if len(latencies) == messages:
            handled.set()

    consumer = asyncio.create_task(bus.consume(IN_STREAM, GROUP, "c1", handler))
    proc: asyncio.subprocess.Process | None = None
    try:
        if same_process:
            start = time.time()
            await publish(bus, messages, publishers)
        else:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--publish-to",
                url,
                "--messages",
                str(messages),
                "--publishers",
                str(publishers),
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
            if not line.startswith(START_LINE):
                raise RuntimeError(f"the publisher process did not start: {line!r}")
            start = float(line.split()[1])
        await asyncio.wait_for(handled.wait(), timeout=300)
        while await bus.lag(IN_STREAM, GROUP):
            await asyncio.sleep(0.001)
        total_s = time.time() - start
        if proc is not None and await asyncio.wait_for(proc.wait(), timeout=60) != 0:
            raise RuntimeError(f"the publisher process exited with {proc.returncode}")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await client.aclose()
    cuts = statistics.quantiles(latencies, n=100)
    return Result(label, messages, total_s, cuts[49] * 1000, cuts[98] * 1000)


async def server_version(url: str) -> str:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return str(info["redis_version"])


async def main(messages: int, publishers: int, same_process: bool) -> int:
    results: list[Result] = []
    version = "?"
    for appendonly, label in ((False, "AOF off"), (True, "AOF on, appendfsync everysec")):
        # A short directory: the server's unix socket path is limited to 107 bytes.
        with tempfile.TemporaryDirectory(prefix="stk-bb-", dir="/tmp") as tmp:
            async with embedded_redis(Path(tmp), appendonly=appendonly) as url:
                version = await server_version(url)
                results.append(await run(url, label, messages, publishers, same_process))
    layout = "in the consumer's process" if same_process else "in a second process"
    print(
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"hiredis {hiredis.__version__}, redis-server {version}"
    )
    print(
        f"{messages} Inbound envelopes published with dedupe by {publishers} tasks {layout}; "
        "1 consumer (Bus.consume)"
    )
    print(f"{'run':<30} {'msg/s':>8} {'total s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(f"{r.label:<30} {r.rate:>8.0f} {r.total_s:>8.2f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}")
    slow = [r.label for r in results if r.rate < TARGET_MSG_S]
    if slow:
        print(f"FAIL: below {TARGET_MSG_S} msg/s: {', '.join(slow)}")
        return 1
    print(f"OK: every run at or above {TARGET_MSG_S} msg/s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--same-process", action="store_true")
    parser.add_argument("--publish-to", metavar="URL", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.messages < 1 or options.publishers < 1:
        parser.error("--messages and --publishers must be positive")
    if options.publish_to:
        asyncio.run(publisher_main(options.publish_to, options.messages, options.publishers))
        sys.exit(0)
    sys.exit(asyncio.run(main(options.messages, options.publishers, options.same_process)))
