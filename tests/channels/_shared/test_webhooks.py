"""The shared webhook server on 127.0.0.1: refusals come before parsing, in a fixed order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from channels._shared.webhooks import (
    Webhook,
    WebhookLimits,
    WebhookRequest,
    WebhookResponse,
    WebhookServer,
)

GOOD = "let-me-in"


class Recorder:
    """A mount that accepts requests carrying the header X-Key: let-me-in."""

    def __init__(self) -> None:
        self.verified: list[WebhookRequest] = []
        self.handled: list[WebhookRequest] = []
        self.fail_next = False

    def verify(self, request: WebhookRequest) -> bool:
        self.verified.append(request)
        return request.headers.get("X-Key") == GOOD

    async def handle(self, request: WebhookRequest) -> WebhookResponse:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the handler broke")
        self.handled.append(request)
        return WebhookResponse(body=b"ok")

    def webhook(self, path: str = "/hook") -> Webhook:
        return Webhook(path=path, verify=self.verify, handle=self.handle, name="test")


@pytest.fixture
async def server() -> AsyncIterator[WebhookServer]:
    async with WebhookServer(
        "127.0.0.1", 0, WebhookLimits(max_body_bytes=2048, per_peer_per_s=5, per_peer_burst=5)
    ) as started:
        yield started


async def post(
    server: WebhookServer, path: str, body: bytes = b"{}", **headers: str
) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{server.port}{path}", data=body, headers=headers) as r,
    ):
        return r.status, await r.read()


async def test_a_verified_request_is_handled_with_its_raw_body(server: WebhookServer) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    status, body = await post(server, "/hook?x=1", b'{"a": 1}', **{"X-Key": GOOD})
    assert (status, body) == (200, b"ok")
    [request] = hook.handled
    assert request.body == b'{"a": 1}'
    assert request.url == f"http://127.0.0.1:{server.port}/hook?x=1"
    assert request.peer == "127.0.0.1"


@pytest.mark.parametrize("key", [None, "", "let-me-i", "let-me-in-too"])
async def test_a_request_failing_verification_gets_403_and_is_never_handled(
    server: WebhookServer, key: str | None
) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    headers = {} if key is None else {"X-Key": key}
    status, _ = await post(server, "/hook", b"{}", **headers)
    assert status == 403
    assert hook.handled == []
    assert len(hook.verified) == 1


async def test_unknown_paths_and_methods_get_404(server: WebhookServer) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    assert (await post(server, "/other", **{"X-Key": GOOD}))[0] == 404
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"http://127.0.0.1:{server.port}/hook") as r,
    ):
        assert r.status == 404
    assert hook.verified == []


async def test_an_oversized_body_gets_413_before_verification(server: WebhookServer) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    status, _ = await post(server, "/hook", b"x" * 4096, **{"X-Key": GOOD})
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{server.port}/hook", data=chunks(), headers={"X-Key": GOOD}
        ) as r,
    ):
        assert r.status == 413  # no Content-Length: bounded while reading
    assert hook.verified == [] and hook.handled == []


async def test_a_peer_sending_refused_requests_gets_429_and_the_server_goes_on(
    server: WebhookServer,
) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    statuses = [(await post(server, "/hook", **{"X-Key": "forged"}))[0] for _ in range(8)]
    assert statuses[:5] == [403] * 5
    assert set(statuses[5:]) == {429}
    assert len(hook.verified) == 5  # refused before its body is even read
    await asyncio.sleep(0.25)  # 5 per second refills one token in 0.2 s
    assert (await post(server, "/hook", **{"X-Key": GOOD}))[0] == 200


async def test_verified_requests_are_never_limited_by_their_address(
    server: WebhookServer,
) -> None:
    # A platform sends every user's updates from a few addresses: one user's flood
    # must not get the others' messages refused here (senders are limited after parsing).
    hook = Recorder()
    server.mount(hook.webhook())
    statuses = [(await post(server, "/hook", **{"X-Key": GOOD}))[0] for _ in range(20)]
    assert statuses == [200] * 20


async def test_a_failing_handler_gets_500_and_the_next_request_is_served(
    server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    hook.fail_next = True
    secret_body = b'{"text": "my password is hunter2"}'
    assert (await post(server, "/hook", secret_body, **{"X-Key": GOOD}))[0] == 500
    assert (await post(server, "/hook", **{"X-Key": GOOD}))[0] == 200
    assert "hunter2" not in caplog.text
    assert "RuntimeError" in caplog.text


async def test_the_public_url_replaces_the_local_one_behind_a_proxy() -> None:
    limits = WebhookLimits(public_base_url="https://bot.example.org", trust_forwarded_for=True)
    async with WebhookServer("127.0.0.1", 0, limits) as server:
        hook = Recorder()
        server.mount(hook.webhook("/in"))
        await post(server, "/in?a=b", **{"X-Key": GOOD, "X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
        [request] = hook.handled
        assert request.url == "https://bot.example.org/in?a=b"
        assert request.peer == "203.0.113.9"
        assert server.public_url("/in") == "https://bot.example.org/in"


async def test_a_path_is_mounted_once_and_freed_by_unmount(server: WebhookServer) -> None:
    hook = Recorder()
    server.mount(hook.webhook())
    with pytest.raises(ValueError, match="taken"):
        server.mount(hook.webhook())
    with pytest.raises(ValueError, match="start with /"):
        server.mount(hook.webhook("hook"))
    server.unmount("/hook")
    assert (await post(server, "/hook", **{"X-Key": GOOD}))[0] == 404
