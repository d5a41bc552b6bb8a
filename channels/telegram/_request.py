"""PTB's transport seam on aiohttp, and `getUpdates` as raw JSON.

PTB's default transport is httpx; a round trip through it costs about 1.5 ms of CPU
here, paid for every message sent and every long poll. aiohttp (already the gateway's
HTTP stack) does the same in well under half of that. Only form-encoded requests are
needed: the adapter never uploads a file, and a request that would is refused.

`updates` skips `Bot.get_updates`, which turns every update into PTB objects (about
0.45 ms each here) only for the adapter to turn them back into JSON for
`convert.parse_update`. Under a flood, a batch of a hundred updates held the event
loop for tens of milliseconds before the ingress limit dropped them. Its errors are
PTB's, as `Bot.get_updates` raises them.
"""

from __future__ import annotations

import datetime as dtm
import json
from collections.abc import Sequence
from typing import Any, Final

import aiohttp
from telegram.error import (
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import BaseRequest, RequestData

CONNECT_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 10.0
"""Beyond a long poll's own `timeout`, which PTB adds to the read timeout it passes."""


_DEFAULT: Final = type(BaseRequest.DEFAULT_NONE)
"""PTB's marker for "no timeout given by the caller"."""


def _seconds(value: object, default: float) -> float | None:
    if isinstance(value, _DEFAULT):
        return default
    return value if isinstance(value, int | float) else None


class AiohttpRequest(BaseRequest):
    def __init__(self, connections: int = 16) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float:
        return READ_TIMEOUT_S

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector)

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if request_data is not None and request_data.contains_files:
            raise NetworkError("this transport sends no files")
        await self.initialize()
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(
            connect=_seconds(connect_timeout, CONNECT_TIMEOUT_S),
            sock_read=_seconds(read_timeout, READ_TIMEOUT_S),
        )
        data = request_data.url_encoded_parameters() if request_data is not None else None
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/x-www-form-urlencoded"} if data else None,
                timeout=timeout,
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            # The type only: the message may hold the URL, and with it the token.
            raise NetworkError(f"aiohttp.{type(exc).__name__}") from None

    async def updates(
        self, url: str, *, offset: int | None, timeout_s: int, allowed: Sequence[str]
    ) -> list[Any]:
        """The updates after `offset` as JSON objects, waiting up to `timeout_s` for one."""
        form = {"timeout": str(timeout_s), "allowed_updates": json.dumps(list(allowed))}
        if offset is not None:
            form["offset"] = str(offset)
        await self.initialize()
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(
            connect=CONNECT_TIMEOUT_S, sock_read=timeout_s + READ_TIMEOUT_S
        )
        try:
            async with self._session.post(url, data=form, timeout=timeout) as response:
                status, body = response.status, await response.read()
        except TimeoutError as exc:
            raise TimedOut from exc
        except aiohttp.ClientError as exc:
            # The type only: the message may hold the URL, and with it the token.
            raise NetworkError(f"aiohttp.{type(exc).__name__}") from None
        return updates_of(status, body)


def updates_of(status: int, body: bytes) -> list[Any]:
    """The result of a getUpdates answer, or the error PTB would raise for it."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise NetworkError(f"getUpdates answered {status} without JSON") from None
    if not isinstance(answer, dict):
        raise NetworkError("getUpdates answered something other than an object")
    if answer.get("ok") is True:
        result = answer.get("result")
        if not isinstance(result, list):
            raise NetworkError("getUpdates answered without a list of updates")
        return result
    code = answer.get("error_code")
    text = str(answer.get("description") or f"error {code}")[:200]
    parameters = answer.get("parameters")
    wait = parameters.get("retry_after") if isinstance(parameters, dict) else None
    if code == 429 and isinstance(wait, int | float) and not isinstance(wait, bool):
        raise RetryAfter(dtm.timedelta(seconds=max(0.0, float(wait))))
    if code == 409:
        raise Conflict(text)
    if code in (401, 404):
        raise InvalidToken(text)
    if code == 403:
        raise Forbidden(text)
    if status >= 500 or not isinstance(code, int):
        raise NetworkError(text)
    raise TelegramError(text)
