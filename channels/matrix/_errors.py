"""nio's answers as our errors: its error responses, its own refusals, a lost connection."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import aiohttp
from nio import ErrorResponse
from nio.exceptions import GroupEncryptionError, ProtocolError

from channels.matrix import convert
from gateway.errors import PlatformError, PlatformUnavailable


def platform_error(response: object, what: str) -> PlatformError:
    """Our error for nio's error response to the request `what`."""
    status = getattr(response, "status_code", None) or ""
    transport = getattr(response, "transport_response", None)
    http = getattr(transport, "status", None)
    return convert.send_error(
        str(status or http or "error"),
        f"{what}: {getattr(response, 'message', '')}",
        getattr(response, "retry_after_ms", None),
        http if isinstance(http, int) else None,
    )


async def call(what: str, request: Awaitable[Any]) -> Any:
    """A nio request; its error answer or a lost connection as our error."""
    try:
        response = await request
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformUnavailable(f"matrix: {what}: {type(exc).__name__}") from None
    except (ProtocolError, GroupEncryptionError) as exc:
        # nio's own refusals (unknown room, no keys yet): messages hold ids, no secret
        raise PlatformError(f"matrix: {what}: {type(exc).__name__}: {exc}") from None
    if isinstance(response, ErrorResponse):
        raise platform_error(response, what)
    return response
