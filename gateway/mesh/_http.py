"""The HTTP plumbing of every door: its error middleware, request bodies, a hung-up agent.

The middleware is each request's task boundary: whatever a handler raises becomes a
JSON error that names no secret, and the door serves on.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from gateway.errors import RedisUnavailable
from gateway.mesh._protocol import Rejected, error_body, parse_json

USER: Final = web.AppKey("user_id", str)
"""The user a door's app acts for, set when the app is built."""

log = logging.getLogger("stockade.mesh")


def gone(request: web.Request) -> bool:
    """The agent closed the connection this request came on."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _user(request: web.Request) -> str:
    return request.app[USER]


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The per-request task boundary: every failure becomes a JSON error without secrets."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Rejected as exc:
        return web.json_response(error_body(exc.kind, exc.message), status=exc.status)
    except web.HTTPException as exc:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        body = error_body(kind.get(exc.status, "http_error"), exc.reason)
        return web.json_response(body, status=exc.status)
    except RedisUnavailable:
        log.warning(
            "%s %s for %s: Redis is unavailable", request.method, request.path, _user(request)
        )
        return web.json_response(error_body("unavailable", "try again shortly"), status=503)
    except Exception as exc:  # the request boundary: log, answer 500, serve on
        log.error(
            "%s %s for %s failed: %s",
            request.method,
            request.path,
            _user(request),
            type(exc).__name__,
        )
        log.debug("traceback of the failed request", exc_info=True)
        return web.json_response(error_body("internal_error", "the mesh failed"), status=500)


async def read_body(request: web.Request, limit: int) -> Any:
    """The request's JSON body; 413 when it is larger than `limit` bytes."""
    too_large = Rejected(413, "too_large", f"the body is larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    return parse_json(raw)
