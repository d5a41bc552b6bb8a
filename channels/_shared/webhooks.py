"""The one HTTP server every webhook-mode channel shares (aiohttp).

Each adapter mounts a `Webhook` at its path while its `receive` runs. For every
request the server, in this order: finds the mount (404), refuses a peer that has
used up its allowance of refused requests (429), reads the body up to
`max_body_bytes` (413), asks the mount's `verify` about the raw bytes and headers
(403) and only then lets `handle` parse it. So a forged or oversized request is
refused before anything is parsed or enqueued. A handler that fails answers 500,
which platforms retry; deduplication makes that safe.

Only refused requests (413, 403) draw on a peer's allowance. A platform sends every
user's updates from a few addresses, so limiting its verified requests per address
would let one flooding user get everyone else's messages refused; senders are
limited one by one after parsing (`channels.ingress`, in the runner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from multidict import CIMultiDictProxy

from channels._shared.ratelimit import RateLimiter

log = logging.getLogger("stockade.webhooks")


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One request as the platform sent it, read in full."""

    url: str
    """The URL the platform called, as seen from outside (public base + path + query)."""
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)


Verify = Callable[[WebhookRequest], bool]
"""True only for a request the platform signed; must not parse more than it checks."""
Handle = Callable[[WebhookRequest], Awaitable[WebhookResponse]]


@dataclass(frozen=True, slots=True)
class Webhook:
    path: str
    verify: Verify
    handle: Handle
    name: str
    """The channel, for logs."""


@dataclass(frozen=True, slots=True)
class WebhookLimits:
    max_body_bytes: int = 1_048_576
    per_peer_per_s: float = 50.0
    per_peer_burst: int = 200
    public_base_url: str = ""
    """Scheme and host the platforms call (before any reverse proxy), e.g.
    "https://bot.example.org"; empty: the request's own. Signatures that cover the
    URL (Twilio) are checked against this."""
    trust_forwarded_for: bool = False
    """Take the peer from X-Forwarded-For (only behind a proxy that sets it)."""


_ALLOWED_METHODS: Final = frozenset(("POST", "GET"))


class WebhookServer:
    """Routes requests to mounted webhooks; start it before any channel mounts."""

    def __init__(self, host: str, port: int, limits: WebhookLimits) -> None:
        self._host = host
        self._port = port
        self._limits = limits
        self._mounts: dict[str, Webhook] = {}
        self._peers = RateLimiter(limits.per_peer_per_s, limits.per_peer_burst)
        self._runner: web.AppRunner | None = None
        self.port = port

    def mount(self, webhook: Webhook) -> None:
        if not webhook.path.startswith("/"):
            raise ValueError(f"webhook path {webhook.path!r} must start with /")
        if webhook.path in self._mounts:
            raise ValueError(f"webhook path {webhook.path!r} is taken by {webhook.name}")
        self._mounts[webhook.path] = webhook

    def unmount(self, path: str) -> None:
        self._mounts.pop(path, None)

    def mounted(self, path: str) -> bool:
        return path in self._mounts

    def public_url(self, path: str) -> str:
        """The URL a platform is told to call for `path`."""
        base = self._limits.public_base_url or f"http://{self._host}:{self.port}"
        return base.rstrip("/") + path

    async def start(self) -> None:
        # client_max_size bounds what aiohttp reads; the handler checks again, so a
        # chunked body without a Content-Length is bounded too.
        app = web.Application(client_max_size=self._limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the bound port, when 0 asked the OS for one
        sockets = getattr(server, "sockets", None) or ()
        for sock in sockets:
            self.port = sock.getsockname()[1]
            break
        log.info("webhooks listen on %s:%d", self._host, self.port)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _peer(self, request: web.Request) -> str:
        if self._limits.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return request.remote or "unknown"

    def _url(self, request: web.Request) -> str:
        if not self._limits.public_base_url:
            return str(request.url)
        return self._limits.public_base_url.rstrip("/") + request.rel_url.raw_path_qs

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        mount = self._mounts.get(request.path)
        if mount is None or request.method not in _ALLOWED_METHODS:
            return web.Response(status=404, text="not found")
        peer = self._peer(request)
        if not self._peers.has_token(peer):
            log.warning(
                "%s webhook: %s sent too many refused requests; answered 429", mount.name, peer
            )
            return web.Response(status=429, text="too many requests", headers={"Retry-After": "1"})
        declared = request.content_length
        if declared is not None and declared > self._limits.max_body_bytes:
            self._peers.allow(peer)
            return _too_large(mount, peer, declared)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._peers.allow(peer)
            return _too_large(mount, peer, None)
        incoming = WebhookRequest(
            url=self._url(request), path=request.path, headers=request.headers, body=body, peer=peer
        )
        if not mount.verify(incoming):
            self._peers.allow(peer)
            # Nothing of the request is logged: it is unauthenticated input.
            log.warning(
                "%s webhook: bad or missing signature from %s; answered 403", mount.name, peer
            )
            return web.Response(status=403, text="forbidden")
        try:
            answer = await mount.handle(incoming)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # request boundary: the platform retries
            # The type only: an exception's text may quote the request.
            log.error(
                "%s webhook: handling failed (%s); answered 500",
                mount.name,
                type(exc).__name__,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return web.Response(status=500, text="internal error")
        return web.Response(
            status=answer.status,
            body=answer.body,
            content_type=answer.content_type,
            headers=answer.headers,
        )


def _too_large(mount: Webhook, peer: str, size: int | None) -> web.Response:
    log.warning(
        "%s webhook: body of %s bytes from %s is over the limit; answered 413",
        mount.name,
        size if size is not None else "too many",
        peer,
    )
    return web.Response(status=413, text="request body too large")
