"""Attachments through the mesh: listed with their message, served only to their own agent
while that message is open; and the typing cue a hand-out sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from yarl import URL

from gateway.bus import Blobs, Bus, TypingCue, agent_stream, blob_id, typing_cues
from gateway.envelope import Attachment, Inbound
from gateway.mesh import SOCKET_NAME, Mesh
from gateway.settings import BusSettings, MeshSettings
from tests.calls import Calls, model_calls, priced_model
from tests.fakes.model_server import running_model_server

ALICE = "u00000000000a11ce"
BOB = "u00000000000000b0b"
SETTINGS = MeshSettings(next_wait_s=2.0)
PHOTO = b"\xff\xd8\xff\xe0 not really a jpeg, but bytes nobody else has " * 40
NOTES = b"Bob's private notes: the combination is 12-34-56\n"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # pytest's tmp_path can be too long for a unix socket path (107 bytes).
    with tempfile.TemporaryDirectory(prefix="stk-f-", dir="/tmp") as tmp:
        yield Path(tmp) / "sockets"


@pytest.fixture
async def calls(redis: aioredis.Redis, socket_dir: Path) -> AsyncIterator[Calls]:
    async with running_model_server() as model:
        models = {"default": priced_model(model.url)}
        async with model_calls(redis, socket_dir.parent / "calls", models, key="sk-x") as built:
            yield built


@pytest.fixture
def bus(redis: aioredis.Redis) -> Bus:
    return Bus(redis, BusSettings())


@contextlib.asynccontextmanager
async def opened_mesh(
    bus: Bus, calls: Calls, socket_dir: Path, redis: aioredis.Redis | None
) -> AsyncIterator[Mesh]:
    mesh = Mesh(bus, calls.calls, SETTINGS, socket_dir, redis=redis)
    try:
        yield mesh
    finally:
        await mesh.aclose()


@pytest.fixture
async def mesh(
    bus: Bus, calls: Calls, socket_dir: Path, redis: aioredis.Redis
) -> AsyncIterator[Mesh]:
    async with opened_mesh(bus, calls, socket_dir, redis) as built:
        yield built


class Agent:
    """What an agent sees: HTTP over its own socket."""

    def __init__(self, directory: Path) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(directory / SOCKET_NAME)),
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def next(self, wait: float = 2.0) -> tuple[int, Any]:
        async with self.session.get(f"http://mesh/v1/next?wait={wait}") as response:
            raw = await response.read()
            return response.status, (json.loads(raw) if raw else None)

    async def file(self, ident: str) -> tuple[int, str, bytes]:
        # encoded=True: the path goes out exactly as written, dots and all.
        url = URL(f"http://mesh/v1/files/{ident}", encoded=True)
        async with self.session.get(url) as response:
            return response.status, response.content_type, await response.read()

    async def reply(self, message_id: str, text: str) -> int:
        body = {"id": message_id, "text": text, "final": True}
        async with self.session.post("http://mesh/v1/reply", json=body) as response:
            return response.status

    async def close(self) -> None:
        await self.session.close()


@contextlib.asynccontextmanager
async def agent_of(mesh: Mesh, user: str) -> AsyncIterator[Agent]:
    agent = Agent(await mesh.open(user))
    try:
        yield agent
    finally:
        await agent.close()


def attachment(data: bytes, name: str = "photo.jpg", kind: str = "image") -> Attachment:
    return Attachment(
        kind=kind, name=name, content_type="image/jpeg", size=len(data), blob=blob_id(data)
    )


def message(user: str, n: int, *attachments: Attachment) -> Inbound:
    return Inbound(
        channel="console",
        event_id=f"ev{n}",
        sender_id="s1",
        conversation_id=f"conv-{user}",
        text="see the file",
        received_at=1_700_000_000.0 + n,
        thread_id=f"thread-{n}",
        user_id=user,
        attachments=attachments,
    )


async def handed_out(bus: Bus, agent: Agent, user: str, *attachments: Attachment) -> Any:
    """Publish a message with `attachments` for `user` and take it as their agent."""
    await bus.publish(agent_stream(user), message(user, len(attachments), *attachments))
    status, body = await agent.next()
    assert status == 200
    return body


def assert_not_found(answer: tuple[int, str, bytes]) -> None:
    status, content_type, raw = answer
    assert (status, content_type) == (404, "application/json")
    assert json.loads(raw)["error"]["type"] == "not_found"


# -- GET /v1/next -----------------------------------------------------------------------


async def test_next_lists_each_attachment_by_blob_id_kind_name_type_and_size(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    photo = attachment(PHOTO)
    voice = Attachment("voice", "voice.ogg", "audio/ogg", 3, blob_id(b"ogg"))
    async with agent_of(mesh, ALICE) as alice:
        body = await handed_out(bus, alice, ALICE, photo, voice)

    assert body["attachments"] == [
        {"id": photo.blob, "kind": "image", "name": "photo.jpg", "type": "image/jpeg"}
        | {"size": len(PHOTO)},
        {"id": voice.blob, "kind": "voice", "name": "voice.ogg", "type": "audio/ogg", "size": 3},
    ]


# -- GET /v1/files/{blob} ---------------------------------------------------------------


async def test_an_attachment_of_the_agents_open_message_is_served_as_bytes(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    ident = await Blobs(redis).put(PHOTO)
    async with agent_of(mesh, ALICE) as alice:
        await handed_out(bus, alice, ALICE, attachment(PHOTO))
        status, content_type, raw = await alice.file(ident)

    assert (status, content_type, raw) == (200, "application/octet-stream", PHOTO)


async def test_another_users_attachment_is_404_to_an_agent_even_while_its_message_is_open(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    blobs = Blobs(redis)
    own = await blobs.put(PHOTO)
    bobs = await blobs.put(NOTES)
    async with agent_of(mesh, ALICE) as alice, agent_of(mesh, BOB) as bob:
        await handed_out(bus, alice, ALICE, attachment(PHOTO))
        await handed_out(bus, bob, BOB, attachment(NOTES, "notes.txt", "file"))
        caplog.set_level(logging.DEBUG, logger="stockade")

        assert_not_found(await alice.file(bobs))

        assert (await alice.file(own))[0] == 200
        assert (await bob.file(bobs))[2] == NOTES  # the blob is there, for Bob only
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "asked for file" in logged
    assert bobs not in logged  # only a prefix of the id, never the whole id or the bytes
    assert "combination" not in logged


async def test_a_blob_no_open_message_lists_is_404_though_it_exists(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    stray = await Blobs(redis).put(b"stored, but never attached to a message of Alice")
    async with agent_of(mesh, ALICE) as alice:
        await handed_out(bus, alice, ALICE, attachment(PHOTO))
        assert_not_found(await alice.file(stray))
        assert_not_found(await alice.file(blob_id(b"never stored at all")))


@pytest.mark.parametrize(
    "ident",
    [
        "../x",
        "..%2Fx",
        "%2E%2E%2Fx",
        "abc123",
        blob_id(PHOTO).upper(),
        blob_id(PHOTO) + "0",
        blob_id(PHOTO)[:-1],
        blob_id(PHOTO) + "%00",
        blob_id(PHOTO) + "%2F..",
    ],
)
async def test_a_malformed_file_id_is_404(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh, ident: str
) -> None:
    await Blobs(redis).put(PHOTO)
    async with agent_of(mesh, ALICE) as alice:
        await handed_out(bus, alice, ALICE, attachment(PHOTO))
        assert_not_found(await alice.file(ident))


async def test_the_attachment_of_a_finished_message_is_404(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    ident = await Blobs(redis).put(PHOTO)
    async with agent_of(mesh, ALICE) as alice:
        body = await handed_out(bus, alice, ALICE, attachment(PHOTO))
        assert (await alice.file(ident))[0] == 200
        assert await alice.reply(body["id"], "thanks for the photo") == 200

        assert_not_found(await alice.file(ident))


async def test_an_expired_attachment_is_410(redis: aioredis.Redis, bus: Bus, mesh: Mesh) -> None:
    ident = await Blobs(redis).put(PHOTO)
    async with agent_of(mesh, ALICE) as alice:
        await handed_out(bus, alice, ALICE, attachment(PHOTO))
        for key in await redis.keys(f"*{ident}"):
            await redis.delete(key)

        status, content_type, raw = await alice.file(ident)

    assert (status, content_type) == (410, "application/json")
    assert json.loads(raw)["error"]["type"] == "gone"


async def test_a_mesh_without_redis_serves_no_files_but_still_lists_them(
    redis: aioredis.Redis, bus: Bus, calls: Calls, socket_dir: Path
) -> None:
    ident = await Blobs(redis).put(PHOTO)
    async with (
        opened_mesh(bus, calls, socket_dir, None) as mesh,
        agent_of(mesh, ALICE) as alice,
    ):
        body = await handed_out(bus, alice, ALICE, attachment(PHOTO))
        status, _, raw = await alice.file(ident)

    assert body["attachments"][0]["id"] == ident
    assert status == 503
    assert json.loads(raw)["error"]["type"] == "unavailable"


# -- the typing cue ---------------------------------------------------------------------


async def next_cue(redis: aioredis.Redis, channel: str) -> asyncio.Task[TypingCue]:
    """The first cue on `channel`, listening before this returns."""

    async def first() -> TypingCue:
        cues = typing_cues(redis, channel)
        assert isinstance(cues, AsyncGenerator)
        try:
            return await anext(cues)
        finally:
            await cues.aclose()

    task = asyncio.create_task(first())
    deadline = time.monotonic() + 5.0
    while not await redis.pubsub_channels():
        assert time.monotonic() < deadline, "the cue listener never subscribed"
        await asyncio.sleep(0.01)
    return task


async def test_handing_out_a_message_announces_typing_in_its_conversation(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    listener = aioredis.Redis(connection_pool=redis.connection_pool)
    cue = await next_cue(listener, "console")
    async with agent_of(mesh, ALICE) as alice:
        await handed_out(bus, alice, ALICE)

        announced = await asyncio.wait_for(cue, timeout=5.0)

    assert announced == TypingCue("console", f"conv-{ALICE}", "thread-0", "ev0")


async def test_a_turn_answered_within_the_typing_delay_announces_nothing(
    redis: aioredis.Redis, bus: Bus, mesh: Mesh
) -> None:
    listener = aioredis.Redis(connection_pool=redis.connection_pool)
    cue = await next_cue(listener, "console")
    async with agent_of(mesh, ALICE) as alice:
        body = await handed_out(bus, alice, ALICE)
        assert await alice.reply(body["id"], "quick") == 200
        # The default delay is 1 s: by 1.5 s a cue would have come.
        done, _ = await asyncio.wait([cue], timeout=1.5)
    cue.cancel()
    assert not done


async def test_a_hand_out_goes_on_at_once_when_the_cue_cannot_be_published(
    bus: Bus, calls: Calls, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A client whose every command fails at once: no Redis listens on this socket, and
    # it does not retry (the mesh's own bound on a cue is tested by its not waiting).
    broken = aioredis.Redis(
        unix_socket_path=str(socket_dir.parent / "no-redis.sock"), retry=Retry(NoBackoff(), 0)
    )
    caplog.set_level(logging.DEBUG, logger="stockade")
    try:
        async with (
            opened_mesh(bus, calls, socket_dir, broken) as mesh,
            agent_of(mesh, ALICE) as alice,
        ):
            started = time.monotonic()
            body = await handed_out(bus, alice, ALICE)
            took = time.monotonic() - started
            assert body["text"] == "see the file"
            assert took < 1.0

            deadline = time.monotonic() + 5.0
            while "no typing cue" not in caplog.text:
                assert time.monotonic() < deadline, "the failed cue was not logged"
                await asyncio.sleep(0.02)
            assert await alice.reply(body["id"], "still answering") == 200
    finally:
        await broken.aclose()
