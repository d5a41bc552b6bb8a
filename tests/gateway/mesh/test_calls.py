"""Model calls on their way out: budget gate, vault key, retries, fallback, settlement.

Real parts throughout: the vault on disk, the budget gate on the test's Redis with
its ledger, LiteLLM, and an OpenAI-compatible fake provider on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.mesh import ModelCalls
from gateway.mesh._protocol import ChatRequest, ProviderFailed, Rejected, parse_chat
from gateway.policy import BudgetGate, Ledger
from gateway.policy._budget_store import EXPIRY_KEY
from gateway.policy.budget import Period, Scope
from gateway.settings import BudgetSettings, Caps, MeshSettings, ModelSettings, Price
from tests.calls import Calls, model_calls, priced_model
from tests.fakes.model_server import (
    Failure,
    FakeModelServer,
    Slow,
    Text,
    running_model_server,
)
from tests.services import RedisProcess

REPO = Path(__file__).resolve().parents[3]
KEY = "sk-vault-key-0123456789abcdef"
USER = "u00000000000a11ce"
HELLO = [{"role": "user", "content": "hi"}]
# $1 per million input tokens, $2 per million output tokens: 1 000 and 2 000 nano-dollars.
PRICE = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeModelServer]:
    async with running_model_server() as server:
        yield server


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "calls"


def request(calls: ModelCalls, **body: Any) -> ChatRequest:
    return parse_chat({"messages": HELLO, **body}, calls.caps(USER))


async def spent(built: Calls, period: Period = Period.DAY) -> int:
    await built.calls.drain()
    usage = await built.gate.usage(USER)
    window = usage.window(Scope.USER, period)
    assert window.held_nano == 0, "a reservation was left open"
    return window.spent_nano


async def test_the_key_comes_from_the_vault_and_a_rotation_applies_to_the_next_call(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url)}
    async with model_calls(redis, directory, models, key=KEY) as built:
        await built.calls.chat(USER, request(built.calls))
        built.vault.rotate("provider", "sk-rotated-key")
        await built.calls.chat(USER, request(built.calls))

    assert [r.authorization for r in fake.requests] == [f"Bearer {KEY}", "Bearer sk-rotated-key"]


async def test_a_missing_vault_entry_refuses_the_call_and_bills_nothing(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url)}
    async with model_calls(redis, directory, models, key=None) as built:
        with pytest.raises(Rejected) as caught:
            await built.calls.chat(USER, request(built.calls))
        assert await spent(built) == 0

    assert (caught.value.status, caught.value.kind) == (503, "model_unavailable")
    assert "provider" not in caught.value.message
    assert fake.requests == []


async def test_a_model_without_a_price_is_refused(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, "openai/not-in-the-cost-map", price=None)}
    async with model_calls(redis, directory, models, key=KEY) as built:
        with pytest.raises(Rejected) as caught:
            await built.calls.chat(USER, request(built.calls))

    assert (caught.value.status, caught.value.kind) == (403, "model_not_priced")
    assert fake.requests == []


async def test_a_model_in_litellms_cost_map_needs_no_configured_price(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, "openai/gpt-4o-mini", price=None)}
    async with model_calls(redis, directory, models, key=KEY) as built:
        await built.calls.chat(USER, request(built.calls))
        assert await spent(built) > 0


async def test_a_configured_price_does_not_reprice_the_same_model_for_other_aliases(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    dear = Price(input_usd_per_mtok=1_000.0, output_usd_per_mtok=1_000.0)
    models = {
        "default": priced_model(fake.url, "openai/gpt-4o-mini", price=None),
        "dear": priced_model(fake.url, "openai/gpt-4o-mini", price=dear),
    }
    async with model_calls(redis, directory, models, key=KEY) as built:
        await built.calls.chat(USER, request(built.calls, model="dear"))
        at_the_configured_price = await spent(built)
        await built.calls.chat(USER, request(built.calls))
        at_the_maps_price = await spent(built) - at_the_configured_price

    # The same usage both times: the map's price for gpt-4o-mini is far below $1,000.
    assert 0 < at_the_maps_price * 100 < at_the_configured_price


async def test_a_call_is_billed_at_the_cost_of_the_usage_the_provider_reported(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE)}
    fake.push(Text("four", completion_tokens=7))
    async with model_calls(redis, directory, models, key=KEY) as built:
        answer = await built.calls.chat(USER, request(built.calls))
        usage = answer["usage"]
        expected = usage["prompt_tokens"] * 1_000 + usage["completion_tokens"] * 2_000
        assert usage["completion_tokens"] == 7
        assert await spent(built) == expected
        assert (await built.gate.usage(USER)).models == (("openai/fake-model", expected),)


async def test_a_provider_error_is_billed_nothing(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE)}
    fake.push(Failure(400, "bad request"))
    async with model_calls(redis, directory, models, key=KEY) as built:
        with pytest.raises(ProviderFailed):
            await built.calls.chat(USER, request(built.calls))
        assert await spent(built) == 0


async def test_a_call_cancelled_midway_is_billed_its_full_reservation(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    """Nobody can know what the provider produced, so the worst case is billed."""
    models = {"default": priced_model(fake.url, price=PRICE, max_tokens=100)}
    fake.push(Slow(5.0, Text("too late")))
    async with model_calls(redis, directory, models, key=KEY) as built:
        call = asyncio.create_task(built.calls.chat(USER, request(built.calls)))
        while not fake.requests:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(100):  # the settlement is shielded and finishes on its own
            usage = await built.gate.usage(USER)
            if usage.window(Scope.USER, Period.DAY).held_nano == 0:
                break
            await asyncio.sleep(0.02)
        billed = await spent(built)
    assert billed >= 100 * 2_000  # at least max_tokens of output


async def test_the_budget_lowers_max_tokens_to_what_it_can_pay_for(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE, max_tokens=1_000)}
    # $0.001 a day: after the prompt's bound, a few hundred output tokens at most.
    budget = BudgetSettings(user=Caps(daily_usd=0.001), total=Caps())
    async with model_calls(redis, directory, models, key=KEY, budget=budget) as built:
        await built.calls.chat(USER, request(built.calls))
    sent = fake.requests[0].body["max_tokens"]
    assert 0 < sent < 500


async def test_a_spent_budget_refuses_with_a_sentence_and_never_reaches_the_provider(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE)}
    budget = BudgetSettings(user=Caps(daily_usd=0.0), total=Caps())
    async with model_calls(redis, directory, models, key=KEY, budget=budget) as built:
        with pytest.raises(Rejected) as caught:
            await built.calls.chat(USER, request(built.calls))

    assert (caught.value.status, caught.value.kind) == (402, "budget_exceeded")
    assert "daily budget is $0.00" in caught.value.message
    assert fake.requests == []


async def test_a_used_up_budget_says_when_it_resets(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE)}
    budget = BudgetSettings(user=Caps(daily_usd=0.001), total=Caps())
    fake.push(Text("nearly all of it", completion_tokens=450))
    async with model_calls(redis, directory, models, key=KEY, budget=budget) as built:
        await built.calls.chat(USER, request(built.calls))
        with pytest.raises(Rejected) as caught:
            await built.calls.chat(USER, request(built.calls))

    assert (caught.value.status, caught.value.kind) == (402, "budget_exceeded")
    assert "daily" in caught.value.message
    assert "resets" in caught.value.message
    assert len(fake.requests) == 1


async def test_unknown_budget_state_refuses_the_call(
    fake: FakeModelServer, directory: Path
) -> None:
    """Redis unreachable: the call is denied, never waved through."""
    gone = aioredis.Redis(unix_socket_path=str(directory.parent / "no-redis.sock"))
    models = {"default": priced_model(fake.url)}
    try:
        async with model_calls(gone, directory, models, key=KEY) as built:
            with pytest.raises(Rejected) as caught:
                await built.calls.chat(USER, request(built.calls))
    finally:
        await gone.aclose()
    assert (caught.value.status, caught.value.kind) == (503, "budget_unavailable")
    assert fake.requests == []


async def test_a_failing_provider_is_retried(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, retries=2)}
    fake.push(Failure(503), Failure(429), Text("third time"))
    async with model_calls(redis, directory, models, key=KEY) as built:
        answer = await built.calls.chat(USER, request(built.calls))
    assert answer["choices"][0]["message"]["content"] == "third time"
    assert len(fake.requests) == 3


async def test_a_client_error_is_not_retried(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, retries=3)}
    fake.push(Failure(401, "bad key"))
    async with model_calls(redis, directory, models, key=KEY) as built:
        with pytest.raises(ProviderFailed):
            await built.calls.chat(USER, request(built.calls))
    assert len(fake.requests) == 1


async def test_the_fallback_answers_when_the_primary_keeps_failing(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {
        "default": priced_model(fake.url, "openai/primary", fallback="backup"),
        "backup": priced_model(fake.url, "openai/backup", price=PRICE),
    }
    fake.push(Failure(503), Text("from the backup", completion_tokens=3))
    async with model_calls(
        redis, directory, models, key=KEY, mesh=MeshSettings(allowed_models=["default"])
    ) as built:
        answer = await built.calls.chat(USER, request(built.calls))
        await built.calls.drain()
        models_spent = dict((await built.gate.usage(USER)).models)

    assert answer["choices"][0]["message"]["content"] == "from the backup"
    assert [r.body["model"] for r in fake.requests] == ["primary", "backup"]
    assert models_spent["openai/primary"] == 0  # the failed primary cost nothing
    assert models_spent["openai/backup"] > 0


def test_a_user_gets_their_own_model_list(tmp_path: Path) -> None:
    models: dict[str, ModelSettings] = {
        "default": priced_model("http://127.0.0.1:9/v1"),
        "big": priced_model("http://127.0.0.1:9/v1", max_tokens=4_000),
    }
    mesh = MeshSettings(allowed_models=["default"], allowed_models_by_user={USER: ["big"]})
    calls = ModelCalls(models, mesh, keys=None, gate=None)  # type: ignore[arg-type]
    assert calls.caps("u0000000000000b0b") == {"default": 1024}
    assert calls.caps(USER) == {"big": 4_000}


async def test_two_hundred_simultaneous_calls_never_spend_past_the_cap(
    redis_server: RedisProcess, fake: FakeModelServer, directory: Path
) -> None:
    """One user, 200 calls at once, a cap that pays for about 20 worst cases.

    (Through a door an agent has at most 4 calls in flight; here they all go at once.)
    """
    # Room for every call's Redis connection at once, as `stockade up` sizes its pool.
    redis = aioredis.Redis.from_url(redis_server.url, max_connections=300)
    models = {"default": priced_model(fake.url, price=PRICE, max_tokens=100)}
    # Worst case of one call: the prompt's bound (tens of tokens) + 100 output tokens,
    # about $0.00025; $0.005 pays for about 20 of them.
    cap_usd = 0.005
    budget = BudgetSettings(user=Caps(daily_usd=cap_usd), total=Caps())
    fake.push(*(Text("x" * 400, completion_tokens=100) for _ in range(200)))
    async with model_calls(redis, directory, models, key=KEY, budget=budget) as built:
        start = asyncio.Event()

        async def one() -> str:
            await start.wait()
            try:
                await built.calls.chat(USER, request(built.calls))
            except Rejected as exc:
                return exc.kind
            return "ok"

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        await asyncio.sleep(0)
        start.set()
        outcomes = await asyncio.gather(*tasks)
        total = await spent(built)

    await redis.aclose()
    assert total <= cap_usd * 1e9
    assert set(outcomes) <= {"ok", "budget_exceeded"}
    assert 10 <= outcomes.count("ok") <= 40
    assert len(fake.requests) == outcomes.count("ok")


CHILD = """
import asyncio, sys
from pathlib import Path
import redis.asyncio as aioredis
from gateway.mesh._protocol import parse_chat
from gateway.settings import BudgetSettings, Caps, Price
from tests.calls import model_calls, priced_model

async def main(url, directory, api_base, calls):
    client = aioredis.Redis.from_url(url, max_connections=300)
    price = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)
    models = {"default": priced_model(api_base, price=price, max_tokens=100, timeout_s=600)}
    budget = BudgetSettings(user=Caps(daily_usd=0.005), total=Caps(), reservation_ttl_s=30)
    async with model_calls(client, Path(directory), models, key="k", budget=budget) as built:
        request = parse_chat({"messages": [{"role": "user", "content": "hi"}]}, {"default": 100})
        async def one():
            try:
                await built.calls.chat("u00000000000a11ce", request)
            except Exception as exc:
                return type(exc).__name__
        print("calling", flush=True)
        await asyncio.gather(*(one() for _ in range(int(calls))))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_mesh_killed_with_calls_in_flight_never_overspends(
    redis: aioredis.Redis, redis_server: RedisProcess, fake: FakeModelServer, tmp_path: Path
) -> None:
    """200 calls at once, SIGKILL while the provider holds those the cap let through: each
    reservation
    expires billed in full, nothing stays held, and the spend stays within the cap."""
    fake.push(*(Slow(600, Text("never sent")) for _ in range(200)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_server.url, str(tmp_path / "child"), fake.url, "200",
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"calling\n"
        async with asyncio.timeout(60):
            while len(fake.requests) < 5:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the rest are refused by now
    finally:
        proc.kill()  # SIGKILL: nothing settles, nothing cleans up
        await proc.wait()

    # Each worst case is about $0.0005 (the prompt's bound and 100 output tokens): the
    # cap holds about 10 of them at once.
    in_flight = len(fake.requests)
    assert 5 <= in_flight <= 20
    budget = BudgetSettings(user=Caps(daily_usd=0.005), total=Caps(), reservation_ttl_s=30)
    async with Ledger(tmp_path / "child" / "ledger") as ledger:
        reaper = BudgetGate(redis, budget, ledger, clock=lambda: time.time() + 31)
        assert await reaper.reap() == in_flight
        window = (await reaper.usage(USER)).window(Scope.USER, Period.DAY)
    assert window.held_nano == 0
    assert 0 < window.spent_nano <= 5_000_000
    assert await redis.zcard(EXPIRY_KEY) == 0


async def test_a_finished_stream_is_billed_at_the_usage_it_ends_with(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, price=PRICE)}
    fake.push(Text("one two three", completion_tokens=3))
    async with model_calls(redis, directory, models, key=KEY) as built:
        stream = built.calls.stream(USER, request(built.calls, stream=True))
        chunks = [chunk async for chunk in stream]
        billed = await spent(built)

    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    assert text == "one two three"
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    assert billed == usage["prompt_tokens"] * 1_000 + 3 * 2_000
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}


async def test_an_aborted_stream_is_billed_for_what_it_produced(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    """The reader stops after two chunks: the provider's stream is closed and the call
    billed for the whole prompt (by its bound) and the output sent so far, not in full."""
    models = {"default": priced_model(fake.url, price=PRICE, max_tokens=1_000)}
    words = " ".join(f"w{i}" for i in range(50))
    fake.push(Text(words, chunk_delay_s=0.05))
    async with model_calls(redis, directory, models, key=KEY) as built:
        stream = built.calls.stream(USER, request(built.calls, stream=True))
        got = []
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                got.append(chunk)
                if len(got) == 2:
                    break
        billed = await spent(built)
        reserved_at_most = 1_000 * 2_000 + 2_000 * 1_000  # max_tokens out + a generous prompt

    await asyncio.sleep(0.3)
    assert fake.streamed < 50  # the provider stopped sending
    produced = sum(len(c["choices"][0]["delta"].get("content", "")) for c in got)
    assert billed >= produced * 2_000  # at least the output it saw
    assert billed < reserved_at_most / 2  # far less than the worst case


async def test_two_hundred_streams_with_a_third_aborted_never_overspend(
    redis_server: RedisProcess, fake: FakeModelServer, directory: Path
) -> None:
    """200 streamed calls at once; every third reader hangs up after its first chunk.
    Spend stays within the cap and every reservation is settled, none left held."""
    redis = aioredis.Redis.from_url(redis_server.url, max_connections=300)
    models = {"default": priced_model(fake.url, price=PRICE, max_tokens=100)}
    budget = BudgetSettings(user=Caps(daily_usd=0.005), total=Caps())
    fake.push(*(Text("a b c d e f", completion_tokens=100, chunk_delay_s=0.01) for _ in range(200)))
    async with model_calls(redis, directory, models, key=KEY, budget=budget) as built:
        start = asyncio.Event()

        async def one(index: int) -> str:
            await start.wait()
            stream = built.calls.stream(USER, request(built.calls, stream=True))
            try:
                async with contextlib.aclosing(stream) as chunks:
                    async for _ in chunks:
                        if index % 3 == 0:
                            return "aborted"
            except Rejected as exc:
                return exc.kind
            return "ok"

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.sleep(0)
        start.set()
        outcomes = await asyncio.gather(*tasks)
        total = await spent(built)  # also checks nothing is left held
    await redis.aclose()

    assert total <= 0.005 * 1e9
    assert set(outcomes) <= {"ok", "aborted", "budget_exceeded"}
    assert outcomes.count("aborted") >= 1 and outcomes.count("ok") >= 1


@pytest.mark.parametrize("model_name", ["openai/fake-model", "hosted_vllm/fake-model"])
async def test_a_rate_limited_call_waits_as_long_as_the_provider_asked(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path, model_name: str
) -> None:
    models = {"default": priced_model(fake.url, model_name, retries=2)}
    fake.push(Failure(429, "slow down", retry_after="1.5"), Text("after the wait"))
    async with model_calls(redis, directory, models, key=KEY) as built:
        started = time.monotonic()
        answer = await built.calls.chat(USER, request(built.calls))
        took = time.monotonic() - started
    assert answer["choices"][0]["message"]["content"] == "after the wait"
    assert len(fake.requests) == 2
    assert took >= 1.5  # not the backoff, which waits at most 0.5 s here


async def test_a_provider_asking_for_too_long_a_wait_is_not_retried(
    redis: aioredis.Redis, fake: FakeModelServer, directory: Path
) -> None:
    models = {"default": priced_model(fake.url, retries=3)}
    fake.push(Failure(429, "come back tomorrow", retry_after="86400"))
    async with model_calls(redis, directory, models, key=KEY) as built:
        with pytest.raises(ProviderFailed) as caught:
            await built.calls.chat(USER, request(built.calls))
    assert len(fake.requests) == 1
    assert "86400" not in caught.value.message  # the agent hears a status, not the wait
