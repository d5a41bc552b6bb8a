"""A fake of Twilio for the WhatsApp channel, on 127.0.0.1: its REST API and its webhooks.

As the API it answers `POST /2010-04-01/Accounts/{sid}/Messages.json` (Basic auth,
form-encoded, the 1,600-character Body limit, 429 on demand) and serves media under
`/media/` (Basic auth). As Twilio's webhook side it posts signed form requests to
our server: inbound messages and status callbacks, signed with `RequestValidator`
exactly as Twilio signs them. It only ever posts to 127.0.0.1.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.fakes._serve import serving

BODY_LIMIT: Final = 1600
LOCAL_HOSTS: Final = frozenset(("127.0.0.1", "localhost"))


@dataclass(frozen=True)
class SentMessage:
    """One message the fake accepted."""

    sid: str
    to: str
    from_: str
    body: str
    status_callback: str


@dataclass(frozen=True)
class MediaFile:
    data: bytes
    content_type: str


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def _local(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host not in LOCAL_HOSTS:
        raise ValueError(f"the fake posts only to this machine, not to {host!r}")
    return url


@dataclass
class FakeTwilio:
    """Twilio's side of a WhatsApp conversation; `url` is the API base once started."""

    account_sid: str
    auth_token: str
    url: str = ""
    sent: list[SentMessage] = field(default_factory=list)
    refused: int = 0
    """Sends answered 400 for breaking a limit (a Body too long, no To)."""
    unauthorized: int = 0
    send_attempts: int = 0
    media_requests: int = 0
    throttles: list[float] = field(default_factory=list)
    failures: list[tuple[int, int]] = field(default_factory=list)
    media: dict[str, MediaFile] = field(default_factory=dict)
    _media_ids: itertools.count[int] = field(default_factory=itertools.count)
    client: aiohttp.ClientSession | None = None
    """Twilio's webhook client, made on the first webhook."""

    # -- control -----------------------------------------------------------------------

    def throttle_next_send(self, retry_after_s: float) -> None:
        """The next send is answered 429 (Twilio 20429) with this Retry-After."""
        self.throttles.append(retry_after_s)

    def fail_next_send(self, status: int, code: int) -> None:
        """The next send is answered with this HTTP status and Twilio error code."""
        self.failures.append((status, code))

    def add_media(self, data: bytes, content_type: str, name: str = "") -> str:
        """Serve `data` under a media URL ending in `name` (a Twilio ME sid by default)."""
        number = next(self._media_ids)
        path = f"/media/{number}/{quote(name or new_sid('ME'), safe='')}"
        self.media[path] = MediaFile(data, content_type)
        return self.url + path

    def inbound(
        self,
        body: str,
        *,
        number: str = "15551234567",
        profile_name: str = "Ada Lovelace",
        to: str = "whatsapp:+14155238886",
        media: tuple[tuple[str, str], ...] = (),
        sid: str = "",
    ) -> dict[str, str]:
        """The form fields of an inbound WhatsApp message, as Twilio posts them
        (with one field we do not know, as Twilio adds fields at any time)."""
        message_sid = sid or new_sid("MM" if media else "SM")
        params = {
            "SmsMessageSid": message_sid,
            "NumMedia": str(len(media)),
            "ProfileName": profile_name,
            "MessageType": "image" if media else "text",
            "SmsSid": message_sid,
            "WaId": number,
            "SmsStatus": "received",
            "Body": body,
            "To": to,
            "NumSegments": "1",
            "ReferralNumMedia": "0",
            "MessageSid": message_sid,
            "AccountSid": self.account_sid,
            "From": f"whatsapp:+{number}",
            "ApiVersion": "2010-04-01",
            "ChannelMetadata": '{"type":"whatsapp","data":{"context":{}}}',
        }
        for index, (url, content_type) in enumerate(media):
            params[f"MediaUrl{index}"] = url
            params[f"MediaContentType{index}"] = content_type
        return params

    def signature(self, url: str, params: Mapping[str, str], token: str | None = None) -> str:
        validator = RequestValidator(self.auth_token if token is None else token)
        return str(validator.compute_signature(url, params))

    async def signed_post(
        self,
        url: str,
        params: Mapping[str, str],
        *,
        sign_url: str | None = None,
        token: str | None = None,
        signature: str | None = None,
        body: bytes | None = None,
    ) -> int:
        """POST `params` to our webhook at `url` as Twilio does; the HTTP status.

        `sign_url` is the URL the signature covers (the public one, behind a proxy);
        `token`, `signature` and `body` forge the request in the ways a test needs:
        a wrong key, a given header (empty: none), other bytes than were signed.
        """
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        sig = self.signature(sign_url or url, params, token) if signature is None else signature
        if sig:
            headers["X-Twilio-Signature"] = sig
        payload: Any = body if body is not None else dict(params)
        # One kept-alive session, as Twilio's own webhook client reuses connections.
        if self.client is None:
            self.client = aiohttp.ClientSession()
        async with self.client.post(_local(url), data=payload, headers=headers) as response:
            await response.read()
            return response.status

    async def status_callback(
        self, sid: str, status: str, error_code: str | None = None, *, via: str | None = None
    ) -> int:
        """Report `status` of the sent message `sid` to the StatusCallback it carried,
        signed for that URL; `via` is where to post it when that URL is not local."""
        sent = next(m for m in self.sent if m.sid == sid)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": self.account_sid,
            "From": sent.from_,
            "To": sent.to,
            "ApiVersion": "2010-04-01",
            "ChannelToAddress": "+1555XXXXXXX",
        }
        if error_code is not None:
            params["ErrorCode"] = error_code
        return await self.signed_post(
            via or sent.status_callback, params, sign_url=sent.status_callback
        )

    # -- the API -----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return secrets.compare_digest(request.headers.get("Authorization", ""), f"Basic {expected}")

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
        )

    async def _messages(self, request: web.Request) -> web.Response:
        self.send_attempts += 1
        if not self._authorized(request):
            self.unauthorized += 1
            return self._error(401, 20003, "Authenticate")
        if request.match_info["account"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        if self.throttles:
            wait = self.throttles.pop(0)
            response = self._error(429, 20429, "Too Many Requests")
            response.headers["Retry-After"] = f"{wait:g}"
            return response
        if self.failures:
            status, code = self.failures.pop(0)
            return self._error(status, code, "The fake failed as asked")
        form = await request.post()
        to, from_, body = (str(form.get(k, "")) for k in ("To", "From", "Body"))
        if not to:
            self.refused += 1
            return self._error(400, 21604, "A 'To' phone number is required.")
        if len(body) > BODY_LIMIT:
            self.refused += 1
            return self._error(400, 21617, "The concatenated message body exceeds the limit")
        sid = new_sid("SM")
        sent = SentMessage(sid, to, from_, body, str(form.get("StatusCallback", "")))
        self.sent.append(sent)
        now = formatdate(usegmt=True)
        return web.json_response(
            {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "body": body,
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": from_,
                "messaging_service_sid": None,
                "num_media": "0",
                "num_segments": "1",
                "price": None,
                "price_unit": "USD",
                "sid": sid,
                "status": "queued",
                "subresource_uris": {},
                "to": to,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            status=201,
        )

    async def _media(self, request: web.Request) -> web.Response:
        self.media_requests += 1
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        found = self.media.get(request.rel_url.raw_path)
        if found is None:
            return self._error(404, 20404, "The requested resource was not found")
        return web.Response(body=found.data, headers={"Content-Type": found.content_type})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._messages)
        app.router.add_get("/media/{tail:.*}", self._media)
        return app


@asynccontextmanager
async def running_twilio(
    account_sid: str = "AC" + "0" * 32, auth_token: str = "fake-auth-token-0123456789abcdef"
) -> AsyncIterator[FakeTwilio]:
    """A started fake on an OS-chosen port of 127.0.0.1."""
    fake = FakeTwilio(account_sid, auth_token)
    async with serving(fake.app()) as fake.url:
        try:
            yield fake
        finally:
            if fake.client is not None:
                await fake.client.close()
