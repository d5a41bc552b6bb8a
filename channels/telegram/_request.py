"""python-telegram-bot's transport seam (`BaseRequest`) on aiohttp, for the long poll.

PTB's default transport is httpx; a `getUpdates` round trip through it costs about
1.5 ms of CPU here, paid once per message when messages come one at a time. aiohttp
(already the gateway's HTTP stack) does the same in well under half of that. Only
form-encoded requests are needed: the poll never uploads a file.
"""

from __future__ import annotations

from typing import Final

import aiohttp
from telegram.error import NetworkError, TimedOut
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
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float:
        return READ_TIMEOUT_S

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()

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
