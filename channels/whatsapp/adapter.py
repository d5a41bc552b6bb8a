"""The WhatsApp adapter: Twilio's signed webhooks in, its Messaging REST API out.

Twilio calls two mounts on the shared webhook server: messages (answered with empty
TwiML once the envelope is on the bus) and delivery statuses (recorded as receipts).
Both are checked against X-Twilio-Signature, computed over the public URL Twilio
called and the form fields. That signature carries no timestamp, so a captured
request validates forever; the bus dedupe on MessageSid makes a replay harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Final

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels._shared.media import receive_files
from channels._shared.outbox import send_parts
from channels._shared.webhooks import Webhook, WebhookRequest, WebhookResponse, WebhookServer
from channels.base import Admission, Capabilities, ChannelContext, Publish
from channels.whatsapp import convert
from gateway.envelope import Outbound
from gateway.errors import PlatformUnavailable
from gateway.settings import WhatsAppSettings

log = logging.getLogger("stockade.channels.whatsapp")

SEND_TIMEOUT_S: Final = 30.0
_TWIML: Final = WebhookResponse(
    status=200, body=convert.EMPTY_TWIML, content_type="text/xml", headers={}
)
_BAD_REQUEST: Final = WebhookResponse(status=400, body=b"bad request")
_OK: Final = WebhookResponse(status=200)


class _TwilioHttp(AsyncTwilioHttpClient):  # type: ignore[misc]  # the SDK ships no types
    """The SDK's aiohttp client, raising our retryable errors itself.

    The SDK's own exception for an error answer drops the response headers, and with
    them Twilio's Retry-After, so a 429 is turned into `RateLimited` here.
    """

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the SDK calls it so
        allow_redirects: bool = False,
    ) -> Response:
        if auth is not None:
            # As a header: aiohttp deprecates the BasicAuth object the SDK would build.
            headers = {**(headers or {}), "Authorization": aiohttp.encode_basic_auth(*auth)}
        # The SDK's client ignores its own timeout setting and sends None (no limit).
        limit = timeout if timeout is not None else SEND_TIMEOUT_S
        try:
            response: Response = await super().request(
                method, url, params, data, headers, None, limit, allow_redirects
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlatformUnavailable(
                f"whatsapp: no answer from Twilio ({type(exc).__name__})"
            ) from None
        status = int(response.status_code)
        if status == 429 or status >= 500:
            raise convert.refusal(status, None, response.headers.get("Retry-After"))
        return response


class WhatsAppChannel:
    """One Twilio WhatsApp sender; `receive` mounts its webhooks until cancelled."""

    def __init__(
        self, settings: WhatsAppSettings, context: ChannelContext, webhooks: WebhookServer
    ) -> None:
        if settings.auth_token is None:
            raise ValueError("whatsapp: auth_token is required")
        self._settings = settings
        self._context = context
        self._webhooks = webhooks
        self._token = settings.auth_token.get_secret_value()
        self._media_headers = {
            "Authorization": aiohttp.encode_basic_auth(settings.account_sid, self._token)
        }
        self._validator = RequestValidator(self._token)
        # Trailing slash: "https://api.twilio.com" must not admit "https://api.twilio.com.evil/".
        self._media_prefix = settings.media_base.rstrip("/") + "/"
        self._http: _TwilioHttp | None = None
        self._client: Any = None
        self._media: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return convert.NAME

    @property
    def capabilities(self) -> Capabilities:
        return convert.CAPABILITIES

    # -- lifetime ----------------------------------------------------------------------

    def _twilio(self) -> Any:
        # Built on first use: the SDK's aiohttp session needs a running event loop.
        if self._client is None:
            self._http = _TwilioHttp()
            client = Client(self._settings.account_sid, self._token, http_client=self._http)
            client.api.base_url = self._settings.api_base.rstrip("/")
            self._client = client
        return self._client

    def _media_session(self) -> aiohttp.ClientSession:
        if self._media is None:
            self._media = aiohttp.ClientSession()
        return self._media

    async def aclose(self) -> None:
        """Close the HTTP sessions; the channel can be used again (they are reopened)."""
        http, media = self._http, self._media
        self._client = self._http = self._media = None
        if http is not None:
            await http.close()
        if media is not None:
            await media.close()

    async def receive(self, publish: Publish) -> None:
        settings = self._settings
        mounts = (
            Webhook(
                settings.webhook_path,
                self._verify,
                functools.partial(self._on_message, publish),
                convert.NAME,
            ),
            Webhook(settings.status_path, self._verify, self._on_status, convert.NAME),
        )
        try:
            for mount in mounts:
                self._webhooks.mount(mount)
            await asyncio.Event().wait()
        finally:
            for mount in mounts:
                self._webhooks.unmount(mount.path)
            await self.aclose()

    # -- inbound -----------------------------------------------------------------------

    def _verify(self, request: WebhookRequest) -> bool:
        return convert.signature_valid(
            self._validator,
            request.url,
            request.body,
            request.headers.get("X-Twilio-Signature", ""),
            request.headers.get("X-Twilio-Webhooks-Signature-Settings", ""),
        )

    async def _on_message(self, publish: Publish, request: WebhookRequest) -> WebhookResponse:
        try:
            message = convert.parse_message(convert.form_fields(request.body))
        except convert.PayloadError as exc:
            log.warning("whatsapp message webhook refused: %s; answered 400", exc)
            return _BAD_REQUEST
        received_at = time.time()
        attachments, notes = await receive_files(
            self._media_session(),
            convert.file_refs(message),
            self._context.media,
            self._context.blobs,
            allowed_prefixes=(self._media_prefix,),
            headers=self._media_headers,
        )
        inbound = convert.to_inbound(
            message, received_at=received_at, attachments=attachments, notes=notes
        )
        admission = await publish(inbound)
        if admission is not Admission.ACCEPTED:
            log.debug("whatsapp message %s: %s", message.sid, admission.value)
        return _TWIML

    async def _on_status(self, request: WebhookRequest) -> WebhookResponse:
        try:
            status = convert.parse_status(convert.form_fields(request.body))
        except convert.PayloadError as exc:
            log.warning("whatsapp status callback refused: %s; answered 400", exc)
            return _BAD_REQUEST
        receipt = await self._context.deliveries.update(
            convert.NAME, status.sid, status.status, status.error_code
        )
        if receipt is None:
            log.debug("whatsapp status %s for unknown message %s", status.status, status.sid)
        elif status.status in ("failed", "undelivered"):
            log.warning(
                "whatsapp message %s was %s (Twilio error %s)",
                status.sid,
                status.status,
                status.error_code or "none given",
            )
        return _OK

    # -- outbound ----------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> None:
        callback = self._webhooks.public_url(self._settings.status_path)

        async def send_part(index: int, body: str) -> None:
            sid = await self._create(outbound.conversation_id, body, callback)
            await self._context.deliveries.accepted(convert.NAME, sid, outbound)

        await send_parts(
            self._context.deliveries, outbound, convert.render(outbound.text), send_part
        )

    async def _create(self, to: str, body: str, callback: str) -> str:
        try:
            message = await self._twilio().messages.create_async(
                from_=self._settings.from_number, to=to, body=body, status_callback=callback
            )
        except (TwilioRestException, TwilioServiceException) as exc:
            code = exc.code if isinstance(exc.code, int) else None
            raise convert.refusal(int(exc.status), code) from None
        return str(message.sid)

    async def show_typing(self, conversation_id: str, thread_id: str) -> None:
        """Twilio's WhatsApp API has no typing indicator."""


def build(settings: WhatsAppSettings, context: ChannelContext) -> WhatsAppChannel:
    if context.webhooks is None:
        raise ValueError(
            "whatsapp needs the shared webhook server: Twilio delivers messages by "
            "webhook (configure [webhooks] with a public_url)"
        )
    return WhatsAppChannel(settings, context, context.webhooks)
