"""Benchmark of a Matrix conversation through the whole of Stockade, against a real Synapse.

    .venv/bin/python bench/bench_matrix.py [--messages N] [--warmup W]

A throwaway Synapse (the one the tests use, from `scripts/synapse-venv`) on 127.0.0.1,
and `stockade up` as its own process with the Matrix channel enabled, the fake
OpenAI-compatible model on loopback, and the real agent image on Docker. A person,
alice, talks to the bot from her own matrix-nio client in a direct room: each of N
messages is timed from her `room_send` until the bot's reply is in her sync. The
first W messages are left out (the first one starts her agent's container).
Target: median under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.channels.matrix.harness import PASSWORD, Person
from tests.fakes.model_server import Text
from tests.synapse import running_synapse
from tests.test_end_to_end import started

TARGET_MS: Final = 300.0


async def conversation(n: int, warmup: int, log_to: Path | None) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="stk-bm-") as tmp, running_synapse(Path(tmp)) as hs:
        hs.register("bot", PASSWORD)
        alice = Person(hs, "alice")
        bot_id = hs.user_id("bot")
        extra = {
            "STOCKADE_CHANNELS__MATRIX__ENABLED": "true",
            "STOCKADE_CHANNELS__MATRIX__HOMESERVER": hs.url,
            "STOCKADE_CHANNELS__MATRIX__USER_ID": bot_id,
            "STOCKADE_CHANNELS__MATRIX__PASSWORD": PASSWORD,
            "STOCKADE_CHANNELS__MATRIX__ALLOWED_INVITERS": f'["{alice.user_id}"]',
            # One person sends much faster than people type: lift the ingress limit.
            "STOCKADE_CHANNELS__INGRESS__PER_SENDER_PER_S": "1000",
        }
        async with started(extra) as gateway:
            await alice.start()
            try:
                room = await alice.create_room((bot_id,))
                await alice.wait_joined(room, bot_id)
                times = []
                for i in range(warmup + n):
                    gateway.model.push(Text(f"answer {i}"))
                    before = len(alice.from_user(bot_id, {room}))
                    started_at = time.perf_counter()
                    await alice.send(room, {"msgtype": "m.text", "body": f"question {i}"})
                    try:
                        async with asyncio.timeout(60):
                            while len(alice.from_user(bot_id, {room})) <= before:
                                await asyncio.sleep(0.002)
                    except TimeoutError:
                        if log_to is not None:
                            log_to.write_bytes(b"".join(gateway.log))
                        tail = b"".join(gateway.log[-40:]).decode(errors="replace")
                        raise SystemExit(
                            f"no reply to message {i}; the gateway's log ends:\n{tail}"
                        ) from None
                    times.append((time.perf_counter() - started_at) * 1000)
                return times[warmup:]
            finally:
                await alice.stop()


def main(n: int, warmup: int, log_to: Path | None) -> int:
    print(f"python {platform.python_version()} on {platform.machine()}, N={n}, warm-up {warmup}")
    times = asyncio.run(conversation(n, warmup, log_to))
    p50 = statistics.median(times)
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    ok = p50 < TARGET_MS
    print(
        f"message → reply visible: p50 {p50:.1f} ms  p95 {p95:.1f} ms  max {max(times):.1f} ms"
        f"   {'PASS' if ok else 'FAIL'} (target < {TARGET_MS:.0f} ms)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--log", type=Path, help="write the gateway's log here if a reply is lost")
    args = parser.parse_args()
    sys.exit(main(args.messages, args.warmup, args.log))
