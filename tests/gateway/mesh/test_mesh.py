"""The mesh over real unix sockets, a real bus on Redis, LiteLLM and a fake provider."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.bus import Bus, agent_stream, out_stream
from gateway.envelope import Inbound, Outbound, decode_outbound
from gateway.mesh import AGENT_GROUP, SOCKET_NAME, Mesh
from gateway.policy.budget import Period, Scope
from gateway.settings import BudgetSettings, BusSettings, Caps, MeshSettings, Price
from tests.calls import Calls, model_calls, priced_model
from tests.fakes.model_server import (
    Failure,
    FakeModelServer,
    Text,
    ToolCall,
    ToolCalls,
)

KEY = "sk-test-provider-key-0123456789"
MODEL = "openai/fake-model"
ALICE = "u00000000000a11ce"
BOB = "u00000000000000b0b"
SETTINGS = MeshSettings(max_request_bytes=4096, max_reply_chars=200, next_wait_s=2.0)
MAX_TOKENS = 256


@pytest.fixture
async def calls(
    redis: aioredis.Redis, fake_model: FakeModelServer, socket_dir: Path
) -> AsyncIterator[Calls]:
    models = {"default": priced_model(fake_model.url, MODEL, max_tokens=MAX_TOKENS)}
    async with model_calls(redis, socket_dir.parent / "calls", models, key=KEY) as built:
        yield built


class Agent:
    """What an agent sees: HTTP over its own socket."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / SOCKET_NAME
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=20),
        )

    async def request(
        self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None, **kw: Any
    ) -> tuple[int, Any]:
        if json_body is not None:
            data = json.dumps(json_body).encode()
        async with self.session.request(
            method, f"http://mesh{path}", data=data, headers=kw.pop("headers", None), **kw
        ) as response:
            raw = await response.read()
            if response.status != 204:
                assert response.content_type == "application/json"
            return response.status, (json.loads(raw) if raw else None)

    async def next(self, wait: float = 2.0) -> tuple[int, Any]:
        return await self.request("GET", f"/v1/next?wait={wait}")

    async def reply(self, message_id: str, text: str, *, final: bool = True) -> tuple[int, Any]:
        body = {"id": message_id, "text": text, "final": final}
        return await self.request("POST", "/v1/reply", json_body=body)

    async def chat(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await self.request("POST", "/v1/chat/completions", json_body=body, headers=headers)

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def alice(mesh: Mesh) -> AsyncIterator[Agent]:
    agent = Agent(await mesh.open(ALICE))
    yield agent
    await agent.close()


def inbound(user: str, n: int, text: str = "hello", channel: str = "console") -> Inbound:
    return Inbound(
        channel=channel,
        event_id=f"ev{n}",
        sender_id="s1",
        conversation_id=f"conv-{user}",
        text=text,
        received_at=1_700_000_000.0 + n,
        sender_name="Alice",
        thread_id=f"thread-{n}",
        user_id=user,
    )


async def outbox(redis: aioredis.Redis, channel: str = "console") -> list[Outbound]:
    entries = await redis.xrange(out_stream(channel))
    return [decode_outbound(fields) for _, fields in entries]


async def pending(redis: aioredis.Redis, user: str) -> int:
    return int((await redis.xpending(agent_stream(user), AGENT_GROUP))["pending"])


# -- the door ---------------------------------------------------------------------------


async def test_each_user_gets_a_world_connectable_socket_in_a_private_directory(
    mesh: Mesh, socket_dir: Path
) -> None:
    directory = await mesh.open(ALICE)

    assert directory == socket_dir / ALICE
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    sock = directory / SOCKET_NAME
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o666
    assert await mesh.open(ALICE) == directory  # idempotent

    await mesh.close(ALICE)
    assert not sock.exists()
    assert not mesh.is_open(ALICE)


@pytest.mark.parametrize("user_id", ["", "..", "../u1", "a/b", "u1\x00", "x" * 65])
async def test_a_user_id_that_is_not_a_plain_name_opens_nothing(mesh: Mesh, user_id: str) -> None:
    with pytest.raises(ValueError, match="user id"):
        await mesh.open(user_id)


async def test_a_socket_path_too_long_for_unix_sockets_is_refused(bus: Bus, calls: Calls) -> None:
    mesh = Mesh(bus, calls.calls, SETTINGS, Path("/tmp") / ("d" * 100))
    with pytest.raises(ValueError, match="107"):
        await mesh.open(ALICE)


async def test_unknown_paths_answer_json_404(alice: Agent) -> None:
    status, body = await alice.request("GET", "/v1/users")
    assert status == 404
    assert body["error"]["type"] == "not_found"


# -- GET /v1/next -----------------------------------------------------------------------


async def test_next_returns_only_the_sockets_own_users_messages(
    mesh: Mesh, bus: Bus, alice: Agent
) -> None:
    bob = Agent(await mesh.open(BOB))
    try:
        await bus.publish(agent_stream(BOB), inbound(BOB, 1, "for bob"))
        await bus.publish(agent_stream(ALICE), inbound(ALICE, 2, "for alice"))

        status, message = await alice.next()
        assert status == 200
        assert message["text"] == "for alice"
        assert message["sender_name"] == "Alice"
        assert message["channel"] == "console"
        assert message["received_at"] == 1_700_000_002.0
        assert set(message) == {
            "id",
            "text",
            "sender_name",
            "channel",
            "received_at",
            "attachments",
        }
        assert message["attachments"] == []

        status, _ = await alice.next(wait=0.2)
        assert status == 204  # Bob's message is not Alice's, whatever she asks

        status, message = await bob.next()
        assert (status, message["text"]) == (200, "for bob")
    finally:
        await bob.close()


async def test_next_answers_204_when_nothing_arrives_in_time(alice: Agent) -> None:
    started = time.monotonic()
    status, body = await alice.next(wait=0.3)
    took = time.monotonic() - started
    assert (status, body) == (204, None)
    assert 0.25 <= took < 1.5


async def test_next_waits_at_most_the_configured_time(alice: Agent) -> None:
    started = time.monotonic()
    status, _ = await alice.next(wait=60)
    assert status == 204
    assert time.monotonic() - started < SETTINGS.next_wait_s + 1.0


async def test_next_with_a_bad_wait_is_400(alice: Agent) -> None:
    status, body = await alice.request("GET", "/v1/next?wait=soon")
    assert status == 400
    assert "wait" in body["error"]["message"]


async def test_a_message_routed_to_another_user_is_never_handed_out(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(BOB, 1, "misrouted"))
    status, _ = await alice.next(wait=0.3)
    assert status == 204
    assert await pending(redis, ALICE) == 1  # failed, kept for the dead-letter path


# -- POST /v1/reply ---------------------------------------------------------------------


async def test_final_reply_acks_the_entry_and_keeps_the_original_conversation(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    original = inbound(ALICE, 7)
    await bus.publish(agent_stream(ALICE), original)
    _, message = await alice.next()
    assert await pending(redis, ALICE) == 1

    status, body = await alice.reply(message["id"], "hi there")

    assert (status, body) == (200, {"ok": True, "sent": True})
    assert await pending(redis, ALICE) == 0
    (sent,) = await outbox(redis)
    assert sent.text == "hi there"
    assert sent.channel == original.channel
    assert sent.conversation_id == original.conversation_id
    assert sent.thread_id == original.thread_id
    assert sent.reply_to == original.event_id
    assert sent.user_id == ALICE
    assert sent.outbound_id == f"{original.dedupe_key}:final"


async def test_progress_replies_go_out_and_leave_the_turn_open(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1))
    _, message = await alice.next()

    assert (await alice.reply(message["id"], "working on it", final=False))[0] == 200
    assert (await alice.reply(message["id"], "still working", final=False))[0] == 200
    assert await pending(redis, ALICE) == 1
    assert (await alice.reply(message["id"], "done"))[0] == 200

    sent = await outbox(redis)
    assert [s.text for s in sent] == ["working on it", "still working", "done"]
    assert [s.outbound_id.rsplit(":", 1)[1] for s in sent] == ["r1", "r2", "final"]
    assert await pending(redis, ALICE) == 0


async def test_reply_is_sanitized_and_cut_to_the_limit(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1))
    _, message = await alice.next()
    hostile = "pay \u202eevil\u202c now\U000e0041\U000e0042 \x1b[31mred\x1b[0m\u200b!"

    await alice.reply(message["id"], hostile, final=False)
    await alice.reply(message["id"], "word " * 100)

    first, second = await outbox(redis)
    for bad in ("\u202e", "\u202c", "\U000e0041", "\x1b", "\u200b"):
        assert bad not in first.text
    assert "evil" in first.text
    assert "red" in first.text
    assert len(second.text) <= SETTINGS.max_reply_chars
    assert second.text.startswith("word word")
    assert "shortened" in second.text


async def test_an_empty_final_reply_finishes_the_turn_without_sending(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1))
    _, message = await alice.next()

    status, body = await alice.reply(message["id"], "\u200b ")

    assert (status, body) == (200, {"ok": True, "sent": False})
    assert await outbox(redis) == []
    assert await pending(redis, ALICE) == 0


async def test_reply_to_an_unknown_or_finished_id_is_404(
    redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    status, body = await alice.reply("1700000000000-0", "hello?")
    assert status == 404
    assert body["error"]["type"] == "unknown_message"

    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1))
    _, message = await alice.next()
    assert (await alice.reply(message["id"], "once"))[0] == 200
    assert (await alice.reply(message["id"], "twice"))[0] == 404
    assert len(await outbox(redis)) == 1


async def test_a_users_message_ids_mean_nothing_on_another_socket(
    mesh: Mesh, redis: aioredis.Redis, bus: Bus, alice: Agent
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1))
    _, message = await alice.next()
    bob = Agent(await mesh.open(BOB))
    try:
        status, _ = await bob.reply(message["id"], "hijack")
    finally:
        await bob.close()
    assert status == 404
    assert await outbox(redis) == []


@pytest.mark.parametrize(
    "body",
    [
        {"text": "no id"},
        {"id": 5, "text": "x"},
        {"id": "1-0"},
        {"id": "1-0", "text": "x", "final": "yes"},
    ],
)
async def test_a_malformed_reply_is_400(alice: Agent, body: dict[str, Any]) -> None:
    status, answer = await alice.request("POST", "/v1/reply", json_body=body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request"


# -- POST /v1/chat/completions ----------------------------------------------------------


HELLO = [{"role": "user", "content": "hi"}]


async def test_chat_completion_reaches_the_provider_with_the_vaults_key_only(
    alice: Agent, fake_model: FakeModelServer
) -> None:
    fake_model.push(Text("hello from the model"))
    extra = {"user": "someone-else", "metadata": {"user_id": BOB}, "logit_bias": {"1": 100}, "n": 5}

    status, body = await alice.chat({"messages": HELLO, **extra})

    assert status == 200
    assert body["choices"][0]["message"]["content"] == "hello from the model"
    assert body["usage"]["completion_tokens"] > 0
    (received,) = fake_model.requests
    assert received.authorization == f"Bearer {KEY}"
    assert received.body["model"] == "fake-model"
    for field in extra:
        assert field not in received.body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", "sk-agent-own"),
        ("api_base", "http://127.0.0.1:9/v1"),
        ("base_url", "http://127.0.0.1:9/v1"),
        ("extra_headers", {"Authorization": "Bearer sk-agent-own"}),
        ("headers", {"X-Leak": "1"}),
        ("custom_llm_provider", "anthropic"),
        ("model", "openai/gpt-4o"),
        ("model", "fake-model"),
    ],
)
async def test_an_agent_steering_key_endpoint_or_model_is_refused_before_the_provider(
    alice: Agent, fake_model: FakeModelServer, field: str, value: Any
) -> None:
    status, body = await alice.chat({"messages": HELLO, field: value})

    assert status == 403
    assert body["error"]["type"] in ("not_allowed", "model_not_allowed")
    assert fake_model.requests == []


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "api-key"])
async def test_an_agent_sending_its_own_key_header_is_refused(
    alice: Agent, fake_model: FakeModelServer, header: str
) -> None:
    status, body = await alice.chat({"messages": HELLO}, headers={header: "Bearer sk-agent-own"})

    assert status == 403
    assert body["error"]["type"] == "not_allowed"
    assert fake_model.requests == []


async def test_tools_and_tool_results_pass_through(
    alice: Agent, fake_model: FakeModelServer
) -> None:
    fake_model.push(ToolCalls([ToolCall("shell", {"command": "ls"})]))
    tools = [{"type": "function", "function": {"name": "shell", "parameters": {"type": "object"}}}]

    status, body = await alice.chat({"messages": HELLO, "tools": tools, "tool_choice": "auto"})

    assert status == 200
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "shell"
    follow_up = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "a.txt\u202e\x1b[0m"},
    ]
    status, _ = await alice.chat({"messages": follow_up, "tools": tools})
    assert status == 200
    received = fake_model.requests[1].body
    assert received["tools"] == tools
    assert received["messages"][2]["content"] == "a.txt[0m"  # tool output is sanitized


@pytest.mark.parametrize(("asked", "sent"), [(None, MAX_TOKENS), (10, 10), (10_000, MAX_TOKENS)])
async def test_max_tokens_is_clamped_to_the_configured_cap(
    alice: Agent, fake_model: FakeModelServer, asked: int | None, sent: int
) -> None:
    body: dict[str, Any] = {"messages": HELLO}
    if asked is not None:
        body["max_tokens"] = asked
    status, _ = await alice.chat(body)
    assert status == 200
    assert fake_model.requests[0].body["max_tokens"] == sent


async def test_an_allowed_model_may_be_named(alice: Agent, fake_model: FakeModelServer) -> None:
    status, _ = await alice.chat({"model": "default", "messages": HELLO})
    assert status == 200
    assert len(fake_model.requests) == 1


@pytest.mark.parametrize("model", ["openai/gpt-4o", "fake-model", "anthropic/claude", 7])
async def test_a_foreign_model_is_refused_with_403(
    alice: Agent, fake_model: FakeModelServer, model: Any
) -> None:
    status, body = await alice.chat({"model": model, "messages": HELLO})
    assert status == 403
    assert body["error"]["type"] == "model_not_allowed"
    assert fake_model.requests == []


@pytest.mark.parametrize("provider_status", [500, 429, 401])
async def test_a_provider_failure_is_502_without_the_key_or_the_url(
    alice: Agent, fake_model: FakeModelServer, provider_status: int
) -> None:
    fake_model.push(Failure(provider_status, f"boom: key {KEY} at {fake_model.url}"))

    status, body = await alice.chat({"messages": HELLO})

    assert status == 502
    assert body["error"]["type"] == "provider_error"
    assert str(provider_status) in body["error"]["message"]
    text = json.dumps(body)
    assert KEY not in text
    assert KEY[:12] not in text
    assert fake_model.url not in text
    assert "127.0.0.1" not in text


async def test_an_unreachable_provider_is_502_without_the_url(
    redis: aioredis.Redis, bus: Bus, socket_dir: Path
) -> None:
    models = {"default": priced_model("http://127.0.0.1:9/v1", MODEL, timeout_s=2.0)}
    async with model_calls(redis, socket_dir.parent / "calls", models, key=KEY) as built:
        mesh = Mesh(bus, built.calls, SETTINGS, socket_dir)
        agent = Agent(await mesh.open(ALICE))
        try:
            status, body = await agent.chat({"messages": HELLO})
        finally:
            await agent.close()
            await mesh.aclose()
    assert status == 502
    assert "127.0.0.1" not in json.dumps(body)
    assert KEY not in json.dumps(body)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": [{"content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": "many"}, "max_tokens"),
        ({"messages": HELLO, "temperature": 9}, "temperature"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "tools": [{"type": "retrieval"}]}, "tools[0]"),
        ([1, 2], "object"),
    ],
)
async def test_a_malformed_chat_request_is_400_with_a_clear_message(
    alice: Agent, fake_model: FakeModelServer, body: Any, needle: str
) -> None:
    status, answer = await alice.chat(body)
    assert status == 400
    assert needle in answer["error"]["message"]
    assert fake_model.requests == []


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[" * 1900 + b"]" * 1900])
async def test_a_body_that_is_not_json_is_400(
    alice: Agent, fake_model: FakeModelServer, raw: bytes
) -> None:
    status, answer = await alice.request("POST", "/v1/chat/completions", data=raw)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request"


async def test_a_body_over_the_limit_is_413(alice: Agent, fake_model: FakeModelServer) -> None:
    big = {"messages": [{"role": "user", "content": "x" * SETTINGS.max_request_bytes}]}
    status, answer = await alice.chat(big)
    assert status == 413
    assert answer["error"]["type"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    status, answer = await alice.request("POST", "/v1/reply", data=chunks())  # type: ignore[arg-type]
    assert status == 413
    assert fake_model.requests == []


async def test_a_message_read_for_an_agent_that_hung_up_goes_to_its_next_poll(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, alice: Agent
) -> None:
    leaving = Agent(alice.socket.parent)
    poll = asyncio.create_task(leaving.next(wait=2.0))
    await asyncio.sleep(0.2)
    poll.cancel()  # the agent process died in the middle of its long poll
    await leaving.close()
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1, "are you there?"))

    started = time.monotonic()
    status, message = await alice.next(wait=2.0)

    assert (status, message["text"]) == (200, "are you there?")
    assert time.monotonic() - started < 1.5
    assert (await alice.reply(message["id"], "yes"))[0] == 200
    assert await pending(redis, ALICE) == 0


async def test_a_message_in_flight_when_the_mesh_restarts_is_handed_out_again(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, alice: Agent, socket_dir: Path, calls: Calls
) -> None:
    await bus.publish(agent_stream(ALICE), inbound(ALICE, 1, "first"))
    _, before = await alice.next()
    await mesh.aclose()

    restarted = Mesh(Bus(redis, BusSettings()), calls.calls, SETTINGS, socket_dir)
    again = Agent(await restarted.open(ALICE))
    try:
        status, after = await again.next()
        assert (status, after["id"], after["text"]) == (200, before["id"], "first")
        assert (await again.reply(after["id"], "answer"))[0] == 200
    finally:
        await again.close()
        await restarted.aclose()
    assert [o.text for o in await outbox(redis)] == ["answer"]


async def test_a_user_passing_80_percent_of_a_budget_is_told_once_in_their_chat(
    redis: aioredis.Redis, bus: Bus, fake_model: FakeModelServer, socket_dir: Path
) -> None:
    # $1 per million tokens in, $2 out; a $0.01 day: 4,500 output tokens pass 80 %.
    price = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)
    models = {"default": priced_model(fake_model.url, MODEL, price=price, max_tokens=5_000)}
    budget = BudgetSettings(user=Caps(daily_usd=0.01), total=Caps())
    fake_model.push(Text("a long answer", completion_tokens=4_500), Text("more"))
    async with model_calls(
        redis, socket_dir.parent / "calls", models, key=KEY, budget=budget
    ) as built:
        mesh = Mesh(bus, built.calls, SETTINGS, socket_dir)
        agent = Agent(await mesh.open(ALICE))
        try:
            await bus.publish(agent_stream(ALICE), inbound(ALICE, 1, "question"))
            _, message = await agent.next()
            assert (await agent.chat({"messages": HELLO, "max_tokens": 4_500}))[0] == 200
            assert (await agent.chat({"messages": HELLO, "max_tokens": 10}))[0] == 200
            await built.calls.drain()
            assert (await agent.reply(message["id"], "done"))[0] == 200
        finally:
            await agent.close()
            await mesh.aclose()

    sent = await outbox(redis)
    notices = [o for o in sent if "80" in o.text or "%" in o.text]
    assert len(notices) == 1, [o.text for o in sent]
    assert "daily" in notices[0].text
    assert notices[0].conversation_id == inbound(ALICE, 1).conversation_id
    assert sent[-1].text == "done"


async def read_events(
    agent: Agent, body: dict[str, Any], *, stop_after: int | None = None
) -> list[Any]:
    """POST a streamed chat; the data of each server-sent event, up to `stop_after`."""
    events: list[Any] = []
    async with agent.session.post(
        "http://mesh/v1/chat/completions", data=json.dumps(body).encode()
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[len(b"data: ") :].strip()
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
            if stop_after is not None and len(events) >= stop_after:
                break
    return events


async def test_a_streamed_answer_arrives_as_server_sent_events(
    alice: Agent, fake_model: FakeModelServer
) -> None:
    fake_model.push(Text("streamed through the door"))

    events = await read_events(alice, {"messages": HELLO, "stream": True})

    assert events[-1] == "[DONE]"
    text = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e.get("choices")
    )
    assert text == "streamed through the door"
    assert any(e.get("usage") for e in events[:-1])
    assert fake_model.requests[0].authorization == f"Bearer {KEY}"


async def test_an_agent_hanging_up_mid_stream_ends_the_call_billed_for_what_was_sent(
    alice: Agent, fake_model: FakeModelServer, calls: Calls
) -> None:
    fake_model.push(Text(" ".join(f"w{i}" for i in range(100)), chunk_delay_s=0.05))

    events = await read_events(alice, {"messages": HELLO, "stream": True}, stop_after=3)
    await alice.close()  # hangs up
    for _ in range(100):
        await asyncio.sleep(0.05)
        await calls.calls.drain()
        window = (await calls.gate.usage(ALICE)).window(Scope.USER, Period.DAY)
        if window.held_nano == 0 and window.spent_nano:
            break

    assert len(events) == 3
    assert window.held_nano == 0
    assert window.spent_nano > 0
    assert fake_model.streamed < 100  # the provider's stream was closed
