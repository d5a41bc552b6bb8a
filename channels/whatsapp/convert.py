"""Twilio's WhatsApp webhooks typed, turned into envelopes, and replies made ready to send.

Everything here is pure: form bodies are parsed into frozen dataclasses once, every
text that reaches an envelope passes `sanitize` (file names through `safe_name`), and
Twilio's refusals are mapped onto the platform error tree.

Identity: `conversation_id` is the sender's address as Twilio gives it
("whatsapp:+15551234567"), so a reply goes back to it unchanged. `sender_id` is the
WhatsApp id, the E.164 number's digits without "+" ("15551234567"): what Twilio sends
as `WaId`, but always derived from the signed `From`, so one person has one id even
when `WaId` is missing.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

from multidict import MultiDict
from twilio.request_validator import RequestValidator, get_signature_algorithm

from channels._shared.chunking import TWILIO_LIMIT, chunk, utf16_len
from channels._shared.markdown import to_plain
from channels._shared.media import FileRef, kind_of, media_type, safe_name, with_notes
from channels.base import Capabilities
from gateway.envelope import Attachment, Inbound
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

NAME: Final = "whatsapp"
CAPABILITIES: Final = Capabilities(max_text=TWILIO_LIMIT)

EMPTY_TWIML: Final = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
"""The answer to a message webhook: Twilio sends nothing back to the person."""

MAX_MEDIA: Final = 10
"""Twilio attaches at most 10 media to one message; more indices are not read."""
DEFAULT_RETRY_AFTER_S: Final = 1.0
"""The wait after a 429 that names none (Twilio's queue limits rarely do)."""
MAX_FORM_FIELDS: Final = 1_000

_SID: Final = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_ADDRESS: Final = re.compile(r"whatsapp:\+?([0-9]{1,20})")
_STATUS: Final = re.compile(r"[a-z_]{1,32}")
_ERROR_CODE: Final = re.compile(r"[0-9]{1,10}")

# Explicit, so a name does not depend on the interpreter's mimetypes tables; the first
# extension is the one added, any of them is accepted as already there.
_EXTENSIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "image/jpeg": (".jpg", ".jpeg"),
    "image/png": (".png",),
    "image/gif": (".gif",),
    "image/webp": (".webp",),
    "audio/ogg": (".ogg", ".oga", ".opus"),
    "audio/opus": (".opus",),
    "audio/mpeg": (".mp3",),
    "audio/amr": (".amr",),
    "audio/aac": (".aac",),
    "audio/mp4": (".m4a",),
    "video/mp4": (".mp4",),
    "video/3gpp": (".3gp",),
    "application/pdf": (".pdf",),
    "text/plain": (".txt",),
    "text/csv": (".csv",),
    "text/vcard": (".vcf",),
    "text/x-vcard": (".vcf",),
    "application/json": (".json",),
    "application/zip": (".zip",),
}


class PayloadError(ValueError):
    """A webhook's form lacks a field we need, or holds one malformed.

    The message names the field, never its value: the request is platform input.
    """


@dataclass(frozen=True, slots=True)
class Media:
    url: str
    content_type: str


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound WhatsApp message, as Twilio's webhook describes it (raw strings)."""

    sid: str
    from_address: str
    """"whatsapp:+15551234567"."""
    to_address: str
    body: str
    profile_name: str
    media: tuple[Media, ...]


@dataclass(frozen=True, slots=True)
class Status:
    """One status callback about a message we sent."""

    sid: str
    status: str
    """queued, sent, delivered, read, failed, undelivered, ..."""
    error_code: str
    """Twilio's error code as digits, or empty."""


# --------------------------------------------------------------------------- forms


def form_fields(body: bytes) -> MultiDict[str]:
    """The fields of a urlencoded body, repeated keys kept (Twilio signs every value).

    Raises `PayloadError` on a body that is not UTF-8 or has too many fields.
    """
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("the form body is not valid urlencoded UTF-8") from None
    return MultiDict(pairs)


def signature_valid(
    validator: RequestValidator, url: str, body: bytes, signature: str, settings_header: str
) -> bool:
    """Whether `signature` (X-Twilio-Signature) signs `url` and the form in `body`.

    The form is parsed only into key/value pairs, which is what the signature covers;
    the algorithm comes from X-Twilio-Webhooks-Signature-Settings (SHA-1 when absent).
    """
    if not signature:
        return False
    try:
        fields = form_fields(body)
    except PayloadError:
        return False
    algorithm = get_signature_algorithm(settings_header)
    return bool(validator.validate(url, fields, signature, algorithm))


def _one(fields: Mapping[str, str], name: str) -> str:
    return fields.get(name, "")


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "")
    if not value:
        raise PayloadError(f"{name} is missing")
    return value


def _sid(fields: Mapping[str, str]) -> str:
    sid = _required(fields, "MessageSid")
    if not _SID.fullmatch(sid):
        raise PayloadError("MessageSid is not a Twilio message id")
    return sid


def parse_message(fields: Mapping[str, str]) -> Message:
    """A message webhook's fields, typed; unknown fields are ignored.

    Raises `PayloadError` without a well-formed MessageSid or a WhatsApp `From`.
    """
    sid = _sid(fields)
    from_address = _required(fields, "From")
    if not _ADDRESS.fullmatch(from_address):
        raise PayloadError("From is not a WhatsApp address")
    try:
        count = min(max(int(_one(fields, "NumMedia") or "0"), 0), MAX_MEDIA)
    except ValueError:
        raise PayloadError("NumMedia is not a number") from None
    media = tuple(
        Media(url=url, content_type=_one(fields, f"MediaContentType{index}"))
        for index in range(count)
        if (url := _one(fields, f"MediaUrl{index}"))
    )
    return Message(
        sid=sid,
        from_address=from_address,
        to_address=_one(fields, "To"),
        body=_one(fields, "Body"),
        profile_name=_one(fields, "ProfileName"),
        media=media,
    )


def parse_status(fields: Mapping[str, str]) -> Status:
    """A status callback's fields, typed; raises `PayloadError` when one is malformed."""
    sid = _sid(fields)
    status = _required(fields, "MessageStatus").lower()
    if not _STATUS.fullmatch(status):
        raise PayloadError("MessageStatus is not a status name")
    error_code = _one(fields, "ErrorCode")
    if error_code and not _ERROR_CODE.fullmatch(error_code):
        raise PayloadError("ErrorCode is not a number")
    return Status(sid=sid, status=status, error_code=error_code)


# --------------------------------------------------------------------------- inbound


def sender_id(from_address: str) -> str:
    """The WhatsApp id (digits, no "+") of a "whatsapp:+<number>" address."""
    match = _ADDRESS.fullmatch(from_address)
    if match is None:
        raise PayloadError("From is not a WhatsApp address")
    return match[1]


def extension(content_type: str) -> tuple[str, ...]:
    bare = media_type(content_type)
    known = _EXTENSIONS.get(bare)
    if known is not None:
        return known
    guessed = mimetypes.guess_extension(bare, strict=True) if bare else None
    return (guessed,) if guessed else ()


def media_name(url: str, content_type: str, index: int) -> str:
    """A safe file name for a media URL: its last path segment plus the type's extension.

    Twilio names media by id (ME…), which carries no extension.
    """
    fallback = f"{kind_of(content_type)}-{index}"
    name = safe_name(unquote(urlsplit(url).path.rsplit("/", 1)[-1]), "") or fallback
    extensions = extension(content_type)
    if extensions and not name.lower().endswith(extensions):
        name += extensions[0]
    return safe_name(name, fallback)


def file_refs(message: Message) -> list[FileRef]:
    return [
        FileRef(
            kind=kind_of(item.content_type),
            name=media_name(item.url, item.content_type, index),
            content_type=item.content_type,
            url=item.url,
        )
        for index, item in enumerate(message.media, start=1)
    ]


def to_inbound(
    message: Message,
    *,
    received_at: float,
    attachments: tuple[Attachment, ...] = (),
    notes: list[str] | None = None,
) -> Inbound:
    """The envelope of one message; `notes` (refused files) are appended to its text."""
    return Inbound(
        channel=NAME,
        event_id=message.sid,
        sender_id=sender_id(message.from_address),
        conversation_id=message.from_address,
        text=with_notes(sanitize(message.body), notes or []),
        received_at=received_at,
        sender_name=sanitize(message.profile_name),
        is_direct=True,
        attachments=attachments,
    )


# --------------------------------------------------------------------------- outbound


def render(markdown: str) -> list[str]:
    """A reply as the bodies to send: WhatsApp markers, in parts within Twilio's limit.

    Parts are measured in UTF-16 units: Twilio counts some characters (emoji) as two,
    and never fewer than one per code point, so this is never over.
    """
    return chunk(to_plain(markdown), TWILIO_LIMIT, measure=utf16_len)


def retry_after_s(header: str | None) -> float:
    """Seconds from a Retry-After header; the default when absent or an HTTP date."""
    if not header:
        return DEFAULT_RETRY_AFTER_S
    try:
        value = float(header.strip())
    except ValueError:
        return DEFAULT_RETRY_AFTER_S
    return value if 0 <= value < 86_400 else DEFAULT_RETRY_AFTER_S


def refusal(status: int, code: int | None, retry_after: str | None = None) -> PlatformError:
    """The platform error for a Twilio error answer (HTTP status, Twilio error code)."""
    if status == 429:
        return RateLimited(retry_after_s(retry_after), NAME)
    if status >= 500:
        return PlatformUnavailable(f"{NAME}: Twilio answered HTTP {status}")
    label = f"Twilio error {code}" if code is not None else "no Twilio error code"
    return PlatformError(f"{NAME}: the message was refused ({label}, HTTP {status})")
