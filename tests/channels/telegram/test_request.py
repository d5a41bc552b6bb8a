"""The long poll's transport (PTB's BaseRequest on aiohttp) against servers on 127.0.0.1:
errors keep the token out of their text, timeouts are PTB's TimedOut."""

from __future__ import annotations

import asyncio
import datetime as dtm
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from telegram import InputFile
from telegram.error import Conflict, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.request import RequestData

from channels.telegram._request import AiohttpRequest, updates_of
from tests.fakes._serve import serving

TOKEN = "123456:secret-token-never-logged"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpRequest]:
    request = AiohttpRequest()
    await request.initialize()
    yield request
    await request.shutdown()


async def test_an_answer_comes_back_as_status_and_bytes(transport: AiohttpRequest) -> None:
    async def answer(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"ok": True, "result": [], "echo": form.get("offset")})

    app = web.Application()
    app.router.add_post("/bot{token}/getUpdates", answer)
    async with serving(app) as url:
        data = RequestData()
        status, body = await transport.do_request(f"{url}/bot{TOKEN}/getUpdates", "POST", data)
    assert status == 200 and b'"ok": true' in body


async def test_a_refused_connection_is_a_network_error_without_the_token(
    transport: AiohttpRequest,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/bot{TOKEN}/getUpdates"
    with pytest.raises(NetworkError) as caught:
        await transport.do_request(url, "POST")
    assert TOKEN not in str(caught.value) and "secret" not in repr(caught.value)
    assert caught.value.__cause__ is None


async def test_a_server_that_does_not_answer_is_a_timeout(transport: AiohttpRequest) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", hang)
    async with serving(app, shutdown_timeout=0.1) as url:
        with pytest.raises(TimedOut):
            await transport.do_request(f"{url}/slow", "POST", read_timeout=0.2)


async def test_files_are_refused_before_anything_is_sent(transport: AiohttpRequest) -> None:
    from telegram.request._requestparameter import RequestParameter

    data = RequestData([RequestParameter.from_input("document", InputFile(b"x", filename="a.txt"))])
    with pytest.raises(NetworkError, match="no files"):
        await transport.do_request(f"http://127.0.0.1:{closed_port()}/x", "POST", data)


def test_a_getupdates_answer_gives_its_raw_updates() -> None:
    body = b'{"ok": true, "result": [{"update_id": 7, "message": {"text": "hi"}}]}'
    assert updates_of(200, body) == [{"update_id": 7, "message": {"text": "hi"}}]
    assert updates_of(200, b'{"ok": true, "result": []}') == []


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, b'{"ok": false, "error_code": 429, "parameters": {"retry_after": 3}}', RetryAfter),
        (409, b'{"ok": false, "error_code": 409, "description": "Conflict"}', Conflict),
        (401, b'{"ok": false, "error_code": 401, "description": "Unauthorized"}', InvalidToken),
        (502, b"<html>Bad Gateway</html>", NetworkError),
        (200, b'{"ok": true, "result": {"not": "a list"}}', NetworkError),
        (200, b"[1, 2]", NetworkError),
        (400, b'{"ok": false, "error_code": 400, "description": "Bad Request"}', TelegramError),
    ],
)
def test_a_refused_getupdates_raises_what_ptb_would(
    status: int, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        updates_of(status, body)
    if isinstance(caught.value, RetryAfter):
        assert caught.value.retry_after == dtm.timedelta(seconds=3)


async def test_the_poll_sends_offset_timeout_and_allowed_updates(transport: AiohttpRequest) -> None:
    seen: dict[str, str] = {}

    async def answer(request: web.Request) -> web.Response:
        seen.update({k: str(v) for k, v in (await request.post()).items()})
        return web.json_response({"ok": True, "result": [{"update_id": 5}]})

    app = web.Application()
    app.router.add_post(f"/bot{TOKEN}/getUpdates", answer)
    async with serving(app) as url:
        got = await transport.updates(
            f"{url}/bot{TOKEN}/getUpdates", offset=4, timeout_s=0, allowed=["message"]
        )
    assert got == [{"update_id": 5}]
    assert seen == {"offset": "4", "timeout": "0", "allowed_updates": '["message"]'}
