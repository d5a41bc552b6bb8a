"""Typed, frozen message envelopes and their codec to Redis stream fields.

Every message crossing the core is an `Inbound` (platform → agent) or an
`Outbound` (agent or core → platform). Core decisions read only the typed
fields; `extras` is an opaque string mapping for a channel's own use that the
core never routes or authorises on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from gateway.errors import EnvelopeError

SCHEMA_VERSION: Final = 1

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


def _freeze(extras: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(extras, MappingProxyType):
        return extras
    return MappingProxyType(dict(extras))


ATTACHMENT_KINDS: Final = frozenset(("image", "file", "voice"))


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that came with a message; its bytes wait in the blob store under `blob`."""

    kind: str
    """"image", "file" or "voice" (a voice note, kept as a file)."""
    name: str
    """The file name, sanitized and without any directory part."""
    content_type: str
    size: int
    """Bytes, as stored."""
    blob: str
    """The blob store's id of the bytes (their SHA-256, in hex)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a person on a platform, already sanitized by its channel."""

    channel: str
    """Channel name, e.g. "telegram"; with `event_id` it is the dedupe key."""
    event_id: str
    """The platform's own id for this event (update_id, event_id, MessageSid, …)."""
    sender_id: str
    """The sender's id on the platform."""
    conversation_id: str
    """Where to answer: chat, room or channel id on the platform."""
    text: str
    received_at: float
    """Unix time at which the channel received the event."""
    sender_name: str = ""
    thread_id: str = ""
    is_direct: bool = True
    """A one-to-one conversation with the bot, not a group."""
    mentioned: bool = False
    """In a group: the bot was mentioned or replied to."""
    user_id: str = ""
    """Stockade's internal user id; empty until the router resolves it."""
    conversation_name: str = ""
    """The chat's title or channel name, for people to read; empty in a direct chat."""
    attachments: tuple[Attachment, ...] = ()
    from_bot: bool = False
    """Sent by another bot (or an integration) as the platform says; the core ignores
    these unless the operator lets bots in. The bot's own messages never get this far."""
    extras: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "extras", _freeze(self.extras))
        object.__setattr__(self, "attachments", tuple(self.attachments))

    @property
    def dedupe_key(self) -> str:
        return f"{self.channel}:{self.event_id}"


@dataclass(frozen=True, slots=True)
class Outbound:
    """One reply to send on a platform."""

    channel: str
    conversation_id: str
    text: str
    outbound_id: str
    """Idempotency key of this reply; the same reply is never sent twice under it."""
    reply_to: str = ""
    """Platform event id this answers, when the platform can thread replies."""
    thread_id: str = ""
    user_id: str = ""
    extras: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "extras", _freeze(self.extras))


def reply(inbound: Inbound, text: str, suffix: str, user_id: str = "") -> Outbound:
    """A reply in the conversation and thread of `inbound`, keyed for idempotent sends.

    `suffix` tells apart several replies to one message ("cmd", "final", "r1", …).
    """
    return Outbound(
        channel=inbound.channel,
        conversation_id=inbound.conversation_id,
        text=text,
        outbound_id=f"{inbound.dedupe_key}:{suffix}",
        reply_to=inbound.event_id,
        thread_id=inbound.thread_id,
        user_id=user_id or inbound.user_id,
    )


Envelope = Inbound | Outbound

_INBOUND_STR: Final = (
    "channel",
    "event_id",
    "sender_id",
    "conversation_id",
    "text",
    "sender_name",
    "thread_id",
    "user_id",
    "conversation_name",
)
_OUTBOUND_STR: Final = (
    "channel",
    "conversation_id",
    "text",
    "outbound_id",
    "reply_to",
    "thread_id",
    "user_id",
)
_REQUIRED_IN: Final = frozenset(("channel", "event_id", "sender_id", "conversation_id"))
_REQUIRED_OUT: Final = frozenset(("channel", "conversation_id", "outbound_id"))


def encode(envelope: Envelope) -> dict[str, str]:
    """Stream fields for an envelope: flat strings, version and kind first."""
    if isinstance(envelope, Inbound):
        fields = {"v": str(envelope.schema), "kind": "in"}
        for name in _INBOUND_STR:
            fields[name] = getattr(envelope, name)
        fields["received_at"] = repr(envelope.received_at)
        fields["is_direct"] = "1" if envelope.is_direct else "0"
        fields["mentioned"] = "1" if envelope.mentioned else "0"
        if envelope.from_bot:
            fields["bot"] = "1"
        if envelope.attachments:
            fields["a"] = json.dumps(
                [_attachment_fields(a) for a in envelope.attachments], ensure_ascii=False
            )
    else:
        fields = {"v": str(envelope.schema), "kind": "out"}
        for name in _OUTBOUND_STR:
            fields[name] = getattr(envelope, name)
    if envelope.extras:
        fields["x"] = json.dumps(dict(envelope.extras), ensure_ascii=False, sort_keys=True)
    return fields


def _text(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for key, value in raw.items():
            k = key.decode() if isinstance(key, bytes) else key
            v = value.decode() if isinstance(value, bytes) else value
            if not isinstance(k, str) or not isinstance(v, str):
                raise EnvelopeError(f"field {k!r} is not text")
            out[k] = v
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"field is not valid UTF-8: {exc.reason}") from None
    return out


def _flag(fields: Mapping[str, str], name: str) -> bool:
    value = fields.get(name, "0")
    if value not in ("0", "1"):
        raise EnvelopeError(f"field {name!r} must be 0 or 1, got {value[:20]!r}")
    return value == "1"


def _extras(fields: Mapping[str, str]) -> Mapping[str, str]:
    raw = fields.get("x")
    if raw is None:
        return _EMPTY
    try:
        value = json.loads(raw)
    except ValueError:
        raise EnvelopeError("field 'x' is not JSON") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise EnvelopeError("field 'x' must map strings to strings")
    return MappingProxyType(value)


def _attachment_fields(attachment: Attachment) -> dict[str, str | int]:
    return {
        "kind": attachment.kind,
        "name": attachment.name,
        "type": attachment.content_type,
        "size": attachment.size,
        "blob": attachment.blob,
    }


def _attachment(value: object) -> Attachment:
    if not isinstance(value, dict):
        raise EnvelopeError("an attachment must be an object")
    kind, name, ctype, size, blob = (value.get(k) for k in ("kind", "name", "type", "size", "blob"))
    if kind not in ATTACHMENT_KINDS:
        raise EnvelopeError(f"unknown attachment kind {str(kind)[:20]!r}")
    if not (isinstance(name, str) and isinstance(ctype, str) and isinstance(blob, str)):
        raise EnvelopeError("attachment name, type and blob must be strings")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise EnvelopeError("attachment size must be a whole number of bytes")
    return Attachment(kind=kind, name=name, content_type=ctype, size=size, blob=blob)


def _attachments(fields: Mapping[str, str]) -> tuple[Attachment, ...]:
    raw = fields.get("a")
    if raw is None:
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        raise EnvelopeError("field 'a' is not JSON") from None
    if not isinstance(value, list):
        raise EnvelopeError("field 'a' must be a list of attachments")
    return tuple(_attachment(item) for item in value)


def decode(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> Envelope:
    """The envelope in stream fields; `EnvelopeError` says what is wrong."""
    fields = _text(raw)
    version = fields.get("v")
    if version != str(SCHEMA_VERSION):
        raise EnvelopeError(f"unsupported schema version {str(version)[:20]!r}")
    kind = fields.get("kind")
    if kind == "in":
        missing = _REQUIRED_IN - fields.keys()
        if missing:
            raise EnvelopeError(f"missing field(s) {', '.join(sorted(missing))}")
        try:
            received_at = float(fields.get("received_at", "0"))
        except ValueError:
            raise EnvelopeError("field 'received_at' is not a number") from None
        return Inbound(
            channel=fields["channel"],
            event_id=fields["event_id"],
            sender_id=fields["sender_id"],
            conversation_id=fields["conversation_id"],
            text=fields.get("text", ""),
            received_at=received_at,
            sender_name=fields.get("sender_name", ""),
            thread_id=fields.get("thread_id", ""),
            is_direct=_flag(fields, "is_direct"),
            mentioned=_flag(fields, "mentioned"),
            user_id=fields.get("user_id", ""),
            conversation_name=fields.get("conversation_name", ""),
            attachments=_attachments(fields),
            from_bot=_flag(fields, "bot"),
            extras=_extras(fields),
        )
    if kind == "out":
        missing = _REQUIRED_OUT - fields.keys()
        if missing:
            raise EnvelopeError(f"missing field(s) {', '.join(sorted(missing))}")
        return Outbound(
            channel=fields["channel"],
            conversation_id=fields["conversation_id"],
            text=fields.get("text", ""),
            outbound_id=fields["outbound_id"],
            reply_to=fields.get("reply_to", ""),
            thread_id=fields.get("thread_id", ""),
            user_id=fields.get("user_id", ""),
            extras=_extras(fields),
        )
    raise EnvelopeError(f"unknown envelope kind {str(kind)[:20]!r}")


def decode_inbound(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> Inbound:
    envelope = decode(raw)
    if not isinstance(envelope, Inbound):
        raise EnvelopeError("expected an inbound envelope")
    return envelope


def decode_outbound(raw: Mapping[str, str] | Mapping[bytes, bytes]) -> Outbound:
    envelope = decode(raw)
    if not isinstance(envelope, Outbound):
        raise EnvelopeError("expected an outbound envelope")
    return envelope
