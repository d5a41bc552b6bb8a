"""discord.py's client as our errors: logging in, the gateway's refusals, frames it cannot parse.

discord.py raises its own types: `LoginFailure` for a rejected token, `ConnectionClosed`
with Discord's close code when the gateway refuses the connection, `DiscordServerError`
after its own retries of a 5xx. Here a refusal becomes a non-retryable `PlatformError`
(the role stops with it) and an outage a `PlatformUnavailable` (waited out).

discord.py parses each dispatch into its models inside the loop that reads the
gateway, so a parse error there (a field it expects missing) would end `connect()` and
the whole adapter. The adapter reads events from the raw frames and never uses those
models; a frame discord.py cannot model is logged and skipped by its parser alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import discord

from gateway.errors import PlatformError, PlatformUnavailable

log = logging.getLogger("stockade.channels.discord")

_NET_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError)
CLOSE_CODES: Final = {
    4004: "the gateway refused the bot token",
    4010: "the gateway refused the shard",
    4011: "the gateway wants sharding",
    4012: "the gateway refused the API version",
    4013: "the gateway refused the intents",
    4014: "the message content intent is not enabled for this bot",
}
"""Discord's close codes that reconnecting cannot change: each is a configuration to fix."""


async def logged_in(token: str, on_raw: Callable[[Any], Awaitable[None]]) -> discord.Client:
    """A new client, logged in, that hands each raw gateway frame to `on_raw`.

    Each attempt builds its own client: one whose login failed has closed the HTTP
    session and connector it opened, and cannot open them again.
    """
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(intents=intents, enable_debug_events=True)

    async def on_socket_raw_receive(raw: Any) -> None:
        await on_raw(raw)

    client.event(on_socket_raw_receive)
    guard_parsers(client)
    try:
        await client.login(token)
    except BaseException as exc:
        await client.close()
        error = _login_error(exc)
        if error is None:
            raise
        raise error from None
    return client


def _login_error(exc: BaseException) -> PlatformError | None:
    """discord.py's login failure as our error; None for anything else (a cancellation)."""
    if isinstance(exc, discord.LoginFailure):
        return PlatformError("discord: the bot token was refused (HTTP 401)")
    if isinstance(exc, discord.DiscordServerError):
        return PlatformUnavailable(f"discord: login failed (HTTP {exc.status})")
    if isinstance(exc, discord.HTTPException):
        return PlatformError(f"discord: login refused (HTTP {exc.status})")
    if isinstance(exc, _NET_ERRORS):
        return PlatformUnavailable(f"discord: login failed ({type(exc).__name__})")
    return None


async def connect(client: discord.Client) -> None:
    """`client.connect`, reconnecting as discord.py does; a refusal as our error."""
    try:
        await client.connect(reconnect=True)
    except discord.PrivilegedIntentsRequired:
        raise PlatformError(f"discord: {CLOSE_CODES[4014]} (4014)") from None
    except discord.ConnectionClosed as exc:
        problem = CLOSE_CODES.get(exc.code, "the gateway closed the connection")
        raise PlatformError(f"discord: {problem} ({exc.code})") from None


def _reason(exc: Exception) -> str:
    """The exception's type, and the missing key of a KeyError: never payload values."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return f"KeyError {exc.args[0]!r}"
    return type(exc).__name__


def guard_parsers(client: discord.Client) -> None:
    """Each of this client's dispatch parsers skips, with a log line, a frame it cannot
    parse. The parsers table is the client's own: other clients are untouched."""
    parsers: dict[str, Callable[[Any], None]] = client._connection.parsers
    for event, parser in list(parsers.items()):
        parsers[event] = _guarded(event, parser)


def _guarded(event: str, parser: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(parser)
    def parse(data: Any) -> None:
        try:
            parser(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            log.warning(
                "discord: discord.py could not parse a %s event (%s); skipped by its parser",
                event,
                _reason(exc),
            )

    return parse
