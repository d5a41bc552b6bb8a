"""Benchmark of flood isolation: one user flooding Telegram must not slow the others' replies
or spend beyond their budget.

    .venv/bin/python bench/bench_flood.py [--users N] [--interval S] [--baseline S]
                                          [--flood S] [--rate R] [--mode webhook|polling]
                                          [--cap-usd X] [--flooder-cap-usd Y] [--model M]

The real pipeline, as `stockade up` runs it: `stockade -v up` as a subprocess (started
by `tests.test_end_to_end.started`: its private Redis, the vault, the supervisor on
the Docker engine with the test agent image `stockade-test-agent`), Telegram enabled
against the wire-level fake Bot API of `tests/fakes/telegram.py`, and the fake
OpenAI-compatible model of `tests/fakes/model_server.py` answering at once, called
through LiteLLM as `--model` (default hosted_vllm/fake). Everything is on 127.0.0.1,
unix sockets, and the containers this run starts. DM policy is open, so every sender
is admitted; one more sender is the operator (an admin on Telegram).

Telegram runs in webhook mode by default: that is the production shape under load,
where Telegram POSTs every update separately to the gateway's shared webhook server
(from a few Telegram addresses, so the per-peer limit of that server sees all users
as one peer; here everything comes from 127.0.0.1, the same situation). The fake
delivers as Telegram does: at most 40 requests in flight (Telegram's default
`max_connections`), and an update answered with a non-2xx status is retried after
its Retry-After, up to 5 times. `--mode polling` runs the long-poll path instead.

  warm-up   every user and the flooder send one message (their containers start); the
            admin sets the flooder's daily cap with `/budget telegram:ID daily Y`
  phase 1   baseline, `--baseline` s (30): N other users (5), each in their own DM,
            one message every `--interval` s (2.2; the loop guard pauses a conversation
            over 30 messages in a clock minute, so exactly 2.0 s would sit on its limit)
  phase 2   `--flood` s (60): the same, plus one flooder sending `--rate` (100)
            messages per second in their own DM

A reply's latency runs from handing its update to the fake until the fake receives
the sendMessage that quotes it. Targets: the others' p95 in phase 2 within +20 % of
phase 1; every message of the others answered; the flooder's billed spend within
their cap. It reports where the flood went (webhook 429s, the channel's ingress rate
limit, the router's loop guard), the flooder's agent runs and model calls (from the
spend ledger), and the machine. Exits 1 when a target is missed.

Every container and workspace volume the run made is removed at the end, also on
failure or Ctrl-C (`started` stops `up` and removes the deployment's agents).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis

from gateway.bus import IN_STREAM, agent_stream
from gateway.envelope import decode_inbound
from gateway.policy import BudgetGate, Identities, Ledger
from gateway.policy.budget import NANO_PER_USD, Period, Scope
from gateway.router import loop_text
from gateway.settings import BudgetSettings, DockerSettings, LoopGuardSettings
from gateway.supervisor import docker_client, ensure_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes and helpers

from tests.fakes.telegram import (
    WEBHOOK_CONNECTIONS,
    FakeTelegram,
    SentMessage,
    started_telegram,
    user,
)
from tests.services import TEST_IMAGE
from tests.test_end_to_end import Gateway, started

P95_TARGET: Final = 0.20
FIRST_USER: Final = 1001
FLOODER: Final = 7777
ADMIN: Final = 9000
TELEGRAM_ATTEMPTS: Final = 5
WARM_TIMEOUT_S: Final = 180.0
DRAIN_TIMEOUT_S: Final = 60.0
WARM_MESSAGES: Final = 1
"""The flooder's warm-up message, on the bus and in their agent stream before the flood."""


# -- the fake Bot API, with the moment each reply arrives ------------------------------------


@dataclass
class Sent:
    at: float
    chat_id: int
    quoted: int | None
    text: str


class TimedTelegram(FakeTelegram):
    """The fake Bot API, noting when each sendMessage arrived and which message it quotes."""

    def __init__(self) -> None:
        super().__init__(on_sent=self._note)
        self.replies: list[Sent] = []
        self.arrived = asyncio.Event()

    def _note(self, sent: SentMessage) -> None:
        quoted = (sent.reply_parameters or {}).get("message_id")
        self.replies.append(Sent(time.perf_counter(), int(sent.chat_id), quoted, sent.text))
        self.arrived.set()


# -- delivering updates as Telegram does ----------------------------------------------------


@dataclass
class Delivery:
    """What happened to the updates of one sender on their way into the gateway."""

    offered: int = 0
    delivered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    """Every webhook answer, retries included."""
    given_up: int = 0


@dataclass
class Outbox:
    """Hands updates to the fake: queued for getUpdates, or POSTed like Telegram's webhook."""

    fake: TimedTelegram
    webhook: bool
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(WEBHOOK_CONNECTIONS))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def send(self, sender: int, text: str, tally: Delivery) -> tuple[int, float]:
        """Offer one DM from `sender`; its message id and the moment it was handed over."""
        person = user(sender, f"User{sender}", "", f"user{sender}")
        message = self.fake.message(text, sender=person)
        tally.offered += 1
        handed = time.perf_counter()
        if not self.webhook:
            self.fake.add_update(message)
            tally.delivered += 1
        else:
            task = asyncio.create_task(self._post(self.fake.make_update(message), tally))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return int(message["message_id"]), handed

    async def _post(self, update: dict[str, Any], tally: Delivery) -> None:
        for _ in range(TELEGRAM_ATTEMPTS):
            async with self.gate:
                status = await self.fake.post_update(update)
            tally.statuses[status] += 1
            if 200 <= status < 300:
                tally.delivered += 1
                return
            await asyncio.sleep(1.0)  # the webhook server's Retry-After
        tally.given_up += 1

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Waiting:
    phase: int
    handed: float


@dataclass
class Latencies:
    """The others' messages: those still waiting for a reply, and each phase's latencies."""

    waiting: dict[int, Waiting] = field(default_factory=dict)
    seconds: dict[int, list[float]] = field(default_factory=lambda: {1: [], 2: []})
    sent: Counter[int] = field(default_factory=Counter)

    def match(self, replies: list[Sent], start: int) -> int:
        for reply in replies[start:]:
            entry = self.waiting.pop(reply.quoted, None) if reply.quoted is not None else None
            if entry is not None:
                self.seconds[entry.phase].append(reply.at - entry.handed)
        return len(replies)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def environment(options: argparse.Namespace, fake: FakeTelegram) -> dict[str, str]:
    env = {
        "STOCKADE_CHANNELS__TELEGRAM__ENABLED": "true",
        "STOCKADE_CHANNELS__TELEGRAM__TOKEN": fake.token,
        "STOCKADE_CHANNELS__TELEGRAM__API_BASE": fake.api_base,
        "STOCKADE_CHANNELS__TELEGRAM__MODE": options.mode,
        "STOCKADE_CHANNELS__TELEGRAM__POLL_TIMEOUT_S": "5",
        "STOCKADE_ACCESS__TELEGRAM__DM_POLICY": "open",
        "STOCKADE_ACCESS__TELEGRAM__ADMINS": json.dumps([str(ADMIN)]),
        "STOCKADE_MODELS__DEFAULT__NAME": options.model,
        "STOCKADE_MODELS__DEFAULT__PRICE__INPUT_USD_PER_MTOK": str(options.price_in),
        "STOCKADE_MODELS__DEFAULT__PRICE__OUTPUT_USD_PER_MTOK": str(options.price_out),
        "STOCKADE_BUDGET__USER__DAILY_USD": str(options.cap_usd),
    }
    if options.peer_rate is not None:
        env["STOCKADE_CHANNELS__WEBHOOKS__PER_PEER_PER_S"] = str(options.peer_rate)
    if options.mode == "webhook":
        port = free_port()
        env |= {
            "STOCKADE_CHANNELS__TELEGRAM__SECRET_TOKEN": secrets.token_urlsafe(24),
            "STOCKADE_CHANNELS__WEBHOOKS__PORT": str(port),
            "STOCKADE_CHANNELS__WEBHOOKS__PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
    return env


async def wait_replies(fake: TimedTelegram, chats: dict[int, int], timeout_s: float) -> None:
    """Until each chat in `chats` has at least that many replies."""
    async with asyncio.timeout(timeout_s):
        while True:
            got = Counter(r.chat_id for r in fake.replies)
            if all(got[chat] >= n for chat, n in chats.items()):
                return
            fake.arrived.clear()
            await fake.arrived.wait()


async def warm_up(outbox: Outbox, fake: TimedTelegram, others: list[int], cap: float) -> str:
    """Every user's container started; the flooder's cap set by the admin. The admin's answer."""
    tally = Delivery()
    for sender in [*others, FLOODER]:
        outbox.send(sender, "hello, warming up", tally)
    await wait_replies(fake, {s: 1 for s in [*others, FLOODER]}, WARM_TIMEOUT_S)
    outbox.send(ADMIN, f"/budget telegram:{FLOODER} daily {cap}", tally)
    await wait_replies(fake, {ADMIN: 1}, 30)
    return next(r.text for r in fake.replies if r.chat_id == ADMIN)


async def talk(
    outbox: Outbox, sender: int, offset: float, options: argparse.Namespace, lat: Latencies
) -> None:
    """One other user: a message every `interval` s, on a fixed schedule."""
    tally = Delivery()
    start = time.perf_counter() + offset
    flood_at = start - offset + options.baseline
    total = options.baseline + options.flood
    k = 0
    while (due := start + k * options.interval) < start - offset + total:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        phase = 1 if time.perf_counter() < flood_at else 2
        message_id, handed = outbox.send(sender, f"message {k} from {sender}", tally)
        lat.waiting[message_id] = Waiting(phase, handed)
        lat.sent[phase] += 1
        k += 1


async def flood(outbox: Outbox, options: argparse.Namespace, tally: Delivery) -> None:
    start = time.perf_counter()
    count = int(options.flood * options.rate)
    for k in range(count):
        due = start + k / options.rate
        if (ahead := due - time.perf_counter()) > 0:
            await asyncio.sleep(ahead)
        outbox.send(FLOODER, f"flood {k}", tally)


async def follow(fake: TimedTelegram, lat: Latencies) -> None:
    seen = 0
    while True:
        fake.arrived.clear()
        seen = lat.match(fake.replies, seen)
        await fake.arrived.wait()


@dataclass
class Readings:
    flooder_id: str
    on_bus: int
    to_agent: int
    spent_nano: int
    held_nano: int
    cap_nano: int | None
    ledger: Counter[str]
    usage_text: str


async def read_state(gateway: Gateway, options: argparse.Namespace) -> Readings:
    client = aioredis.Redis(unix_socket_path=str(gateway.data_dir / "redis" / "redis.sock"))
    try:
        flooder_id = await Identities(client).lookup("telegram", str(FLOODER)) or "?"
        on_bus = -WARM_MESSAGES
        last = "-"
        while batch := await client.xrange(IN_STREAM, min=last, count=5_000):
            for _, fields in batch:
                inbound = decode_inbound(fields)
                on_bus += inbound.channel == "telegram" and inbound.sender_id == str(FLOODER)
            last = "(" + batch[-1][0].decode()
        to_agent = await client.xlen(agent_stream(flooder_id)) - WARM_MESSAGES
        settings = BudgetSettings.model_validate({"user": {"daily_usd": options.cap_usd}})
        gate = BudgetGate(client, settings, Ledger(gateway.data_dir / "ledger"))
        day = (await gate.usage(flooder_id)).window(Scope.USER, Period.DAY)
    finally:
        await client.aclose()
    ledger: Counter[str] = Counter()
    for path in (gateway.data_dir / "ledger").glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("user") == flooder_id:
                    ledger[record.get("op", "?")] += 1
    usage = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "usage", f"telegram:{FLOODER}", env=gateway.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await usage.communicate()
    return Readings(
        flooder_id,
        on_bus,
        to_agent,
        day.spent_nano,
        day.held_nano,
        day.cap_nano,
        ledger,
        out.decode(errors="replace").strip(),
    )


@dataclass
class Result:
    lat: Latencies
    flood: Delivery
    flooder_replies: int
    loop_notices: int
    readings: Readings
    admin_answer: str
    load: tuple[float, float]
    model_requests: int


async def run(options: argparse.Namespace) -> Result:
    others = [FIRST_USER + i for i in range(options.users)]
    async with (
        started_telegram(TimedTelegram()) as fake,
        started(environment(options, fake)) as gateway,
    ):
        if options.mode == "webhook":
            await fake.webhook_set(30)
        outbox = Outbox(fake, options.mode == "webhook")
        print("warming up: every user's container, and the flooder's cap", flush=True)
        admin_answer = await warm_up(outbox, fake, others, options.flooder_cap_usd)
        lat = Latencies()
        before = len(fake.replies)
        following = asyncio.create_task(follow(fake, lat))
        load_start = os.getloadavg()[0]
        tally = Delivery()
        try:
            print(f"phase 1: {options.baseline:g} s baseline", flush=True)
            spread = options.interval / len(others)
            talking = [
                asyncio.create_task(talk(outbox, s, i * spread, options, lat))
                for i, s in enumerate(others)
            ]
            await asyncio.sleep(options.baseline)
            print(f"phase 2: {options.flood:g} s, flood of {options.rate:g}/s", flush=True)
            await flood(outbox, options, tally)
            await asyncio.gather(*talking)
            load_end = os.getloadavg()[0]
            await outbox.settle()
            print("draining: waiting for the others' last replies", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    while lat.waiting:
                        await asyncio.sleep(0.1)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        lat.match(fake.replies, before)
        notice = loop_text(
            LoopGuardSettings().per_conversation_per_min, LoopGuardSettings().pause_s
        )
        mine = [r for r in fake.replies[before:] if r.chat_id == FLOODER]
        readings = await read_state(gateway, options)
        return Result(
            lat,
            tally,
            len(mine),
            sum(r.text == notice for r in mine),
            readings,
            admin_answer,
            (load_start, load_end),
            len(gateway.model.requests),
        )


# -- the report -------------------------------------------------------------------------------


def cut(samples: list[float], percent: int) -> float:
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def usd(nano: int | None) -> str:
    return "none" if nano is None else f"${nano / NANO_PER_USD:.4f}"


def versions() -> str:
    client = docker_client(DockerSettings())
    try:
        engine = client.version().get("Version", "?")
    finally:
        client.close()
    redis_server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    redis_version = next((w[2:] for w in redis_server if w.startswith("v=")), "?")
    return (
        f"Python {platform.python_version()}, Docker engine {engine}, redis-server "
        f"{redis_version}, LiteLLM {importlib.metadata.version('litellm')}, "
        f"python-telegram-bot {importlib.metadata.version('python-telegram-bot')}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def report(options: argparse.Namespace, result: Result) -> int:
    lat, flood, r = result.lat, result.flood, result.readings
    print()
    print(versions())
    print(
        f"telegram in {options.mode} mode; {options.users} users every {options.interval:g} s; "
        f"baseline {options.baseline:g} s, flood {options.flood:g} s at {options.rate:g}/s; "
        f"model {options.model} at ${options.price_in:g}/${options.price_out:g} per Mtok; "
        f"load (1 min) {result.load[0]:.2f} at the start, {result.load[1]:.2f} at the end"
    )
    failed = []
    for phase, name in ((1, "baseline"), (2, "flood")):
        got = sorted(lat.seconds[phase])
        print(
            f"others, {name:8}: {len(got):4} of {lat.sent[phase]:4} answered   "
            f"p50 {cut(got, 50) * 1000:7.1f} ms  p95 {cut(got, 95) * 1000:7.1f} ms  "
            f"p99 {cut(got, 99) * 1000:7.1f} ms  max {max(got, default=0) * 1000:7.1f} ms"
        )
    base, under = cut(lat.seconds[1], 95), cut(lat.seconds[2], 95)
    change = (under - base) / base
    ok = change <= P95_TARGET
    print(f"p95 change under the flood: {change * 100:+.1f} % (target <= +20 %)  {verdict(ok)}")
    if not ok:
        failed.append("p95 latency")
    unanswered = len(lat.waiting)
    print(f"others' messages never answered: {unanswered}  {verdict(unanswered == 0)}")
    if unanswered:
        failed.append("unanswered messages")
    statuses = ", ".join(f"{n}x{s}" for s, n in sorted(flood.statuses.items())) or "-"
    print(
        f"flood: {flood.offered} offered; {flood.delivered} taken by the gateway "
        f"(webhook answers {statuses}; {flood.given_up} given up after {TELEGRAM_ATTEMPTS} tries)"
    )
    print(
        f"  on the bus (past the ingress limit): {r.on_bus}; dropped by the ingress limit: "
        f"{flood.delivered - r.on_bus}; to the agent (past the loop guard): {r.to_agent}; "
        f"held by the loop guard: {r.on_bus - r.to_agent}"
    )
    runs = result.flooder_replies - result.loop_notices
    print(
        f"  flooder's agent runs (answers): {runs}; loop-guard notices: {result.loop_notices}; "
        f"model calls billed: {r.ledger['settle']}, refused by the budget: {r.ledger['denied']}, "
        f"expired: {r.ledger['expire']} (with the warm-up's); "
        f"all model requests of the run: {result.model_requests}"
    )
    within = r.cap_nano is not None and r.spent_nano <= r.cap_nano
    print(
        f"flooder's spend today {usd(r.spent_nano)} (held {usd(r.held_nano)}) of the cap "
        f"{usd(r.cap_nano)} set by the admin  {verdict(within)}"
    )
    if not within:
        failed.append("flooder's spend")
    print(f"admin's /budget answer: {result.admin_answer.splitlines()[0]}")
    print(f"`stockade usage telegram:{FLOODER}`:")
    print("  " + r.usage_text.replace("\n", "\n  "))
    if failed:
        print(f"FAIL: {', '.join(failed)}")
        return 1
    print("OK: every target met")
    return 0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


async def main(options: argparse.Namespace) -> int:
    print("checking the agent image (a first build takes about a minute)", flush=True)
    with tempfile.TemporaryDirectory(prefix="stk-bf-", dir="/tmp") as data:
        await ensure_image(TEST_IMAGE, DockerSettings(), Path(data))
    result = await run(options)
    return report(options, result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=5, help="other users besides the flooder")
    parser.add_argument("--interval", type=float, default=2.2, help="s between their messages")
    parser.add_argument("--baseline", type=float, default=30.0, help="phase 1 length, s")
    parser.add_argument("--flood", type=float, default=60.0, help="phase 2 length, s")
    parser.add_argument("--rate", type=float, default=100.0, help="flood messages per second")
    parser.add_argument("--mode", choices=("webhook", "polling"), default="webhook")
    parser.add_argument("--cap-usd", type=float, default=1.0, help="every user's daily cap")
    parser.add_argument(
        "--flooder-cap-usd", type=float, default=0.02, help="the flooder's daily cap (/budget)"
    )
    parser.add_argument("--price-in", type=float, default=1.0, help="USD per million input")
    parser.add_argument("--price-out", type=float, default=4.0, help="USD per million output")
    parser.add_argument(
        "--peer-rate",
        type=float,
        help="the webhook server's per-peer rate limit, requests/s (default: the setting's)",
    )
    parser.add_argument("--model", default="hosted_vllm/fake", help="LiteLLM model string")
    options = parser.parse_args()
    if min(options.users, options.interval, options.baseline, options.flood, options.rate) <= 0:
        parser.error("--users, --interval, --baseline, --flood and --rate must be positive")
    try:
        sys.exit(asyncio.run(main(options)))
    except KeyboardInterrupt:
        # asyncio.run has cancelled the run; `started` stopped `up` and removed its agents.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
