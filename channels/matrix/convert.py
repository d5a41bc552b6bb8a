"""Pure conversion between Matrix events and envelopes: typed parsing, mentions, replies.

Events arrive as the client-server API's JSON (`event.source` in matrix-nio, the
decrypted payload for encrypted rooms) and are parsed once here into frozen
dataclasses. Which messages are for the bot is decided here: never the bot's own, only
`m.room.message` of a text or file kind, not edits. Files are announced as `mxc://`
URIs and fetched from the homeserver's authenticated media API; only URIs naming a
well-formed server and media id are resolved, so a message cannot point the download
anywhere else.

Replies go out as `m.text` with a plain `body` and an `org.matrix.custom.html`
`formatted_body` (the Telegram HTML subset is valid Matrix HTML). A reply in a thread
stays in it (`rel_type: m.thread`); otherwise the first part replies to the message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from channels._shared.chunking import chunk
from channels._shared.markdown import to_plain, to_telegram_html
from channels._shared.media import FileRef, with_notes
from channels.base import Capabilities
from gateway.envelope import Attachment, Inbound
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

NAME: Final = "matrix"
MAX_TEXT: Final = 16_000
"""Characters per reply part. An event may hold 65,536 bytes of JSON; 16,000 characters
leave room for the HTML rendering and its escapes, even of four-byte characters."""
MAX_EVENT_BYTES: Final = 60_000
"""Above this the HTML rendering is left out and the part goes as plain text only."""
CAPABILITIES: Final = Capabilities(max_text=MAX_TEXT, threads=True, typing=True)
HTML_FORMAT: Final = "org.matrix.custom.html"
MEDIA_PATH: Final = "/_matrix/client/v1/media/download/"

TEXT_TYPES: Final = frozenset(("m.text", "m.notice", "m.emote"))
FILE_KINDS: Final = {"m.file": "file", "m.image": "image", "m.audio": "voice", "m.video": "file"}
_MXC: Final = re.compile(r"mxc://([A-Za-z0-9.:\[\]-]{1,255})/([A-Za-z0-9_-]{1,255})")
_REPLY_FALLBACK: Final = re.compile(r"\A(?:>[^\n]*\n)+\n")


@dataclass(frozen=True, slots=True)
class MatrixFile:
    """A file announced in an `m.room.message` (unencrypted: a plain mxc:// URI)."""

    kind: str
    name: str
    mimetype: str
    mxc: str
    size: int | None


@dataclass(frozen=True, slots=True)
class MatrixMessage:
    """An `m.room.message` event a person sent."""

    event_id: str
    sender: str
    msgtype: str
    body: str
    timestamp_ms: int
    mentions: tuple[str, ...] = ()
    """`m.mentions.user_ids`."""
    thread_root: str = ""
    reply_to: str = ""
    file: MatrixFile | None = None


@dataclass(frozen=True, slots=True)
class Room:
    """What the envelope needs to know about the room a message came from."""

    room_id: str
    name: str
    joined: int


@dataclass(frozen=True, slots=True)
class Bot:
    user_id: str
    display_name: str = ""


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _map(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _file(content: Mapping[str, object], msgtype: str) -> MatrixFile | None:
    kind = FILE_KINDS.get(msgtype)
    url = _str(content, "url")
    if kind is None or not url:
        return None  # encrypted files carry `file` instead of `url`: not fetched
    info = _map(content, "info")
    return MatrixFile(
        kind=kind,
        name=_str(content, "filename") or _str(content, "body"),
        mimetype=_str(info, "mimetype"),
        mxc=url,
        size=_int(info.get("size")),
    )


def parse_message(source: Mapping[str, object]) -> MatrixMessage | None:
    """The message in an event's JSON; None for anything else, edits and malformed ones."""
    if _str(source, "type") != "m.room.message":
        return None
    content = _map(source, "content")
    event_id, sender = _str(source, "event_id"), _str(source, "sender")
    msgtype = _str(content, "msgtype")
    if not event_id or not sender or not (msgtype in TEXT_TYPES or msgtype in FILE_KINDS):
        return None
    relates = _map(content, "m.relates_to")
    if _str(relates, "rel_type") == "m.replace":
        return None
    thread_root = _str(relates, "event_id") if _str(relates, "rel_type") == "m.thread" else ""
    reply_to = _str(_map(relates, "m.in_reply_to"), "event_id")
    if reply_to and thread_root and relates.get("is_falling_back") is True:
        reply_to = ""  # a plain message in a thread names the last one only for old clients
    raw_mentions = _map(content, "m.mentions").get("user_ids")
    mentions = tuple(
        m for m in (raw_mentions if isinstance(raw_mentions, list) else ()) if isinstance(m, str)
    )
    return MatrixMessage(
        event_id=event_id,
        sender=sender,
        msgtype=msgtype,
        body=_str(content, "body"),
        timestamp_ms=_int(source.get("origin_server_ts")) or 0,
        mentions=mentions,
        thread_root=thread_root,
        reply_to=reply_to,
        file=_file(content, msgtype),
    )


def inviter(invite_state: Sequence[Mapping[str, object]], bot_id: str) -> str:
    """Who invited the bot, from an invited room's stripped state; "" when not said."""
    for event in invite_state:
        if (
            _str(event, "type") == "m.room.member"
            and _str(event, "state_key") == bot_id
            and _str(_map(event, "content"), "membership") == "invite"
        ):
            return _str(event, "sender")
    return ""


def invite_allowed(sender: str, allowed: Collection[str]) -> bool:
    return bool(sender) and sender in allowed


def without_reply_fallback(body: str) -> str:
    """The body without the quoted "> <@user> ..." lines old clients put before a reply."""
    return _REPLY_FALLBACK.sub("", body, count=1)


def is_mentioned(message: MatrixMessage, bot: Bot, own_events: Collection[str]) -> bool:
    """Named in `m.mentions`, by id or display name in the text, or a reply to the bot."""
    if bot.user_id in message.mentions or (message.reply_to and message.reply_to in own_events):
        return True
    body = message.body.casefold()
    names = (bot.user_id, bot.display_name)
    return any(name and name.casefold() in body for name in names)


def media_url(homeserver: str, mxc: str) -> str | None:
    """The authenticated download URL of an mxc:// URI; None for a malformed one."""
    match = _MXC.fullmatch(mxc)
    if match is None:
        return None
    return f"{media_prefix(homeserver)}{match.group(1)}/{match.group(2)}"


def media_prefix(homeserver: str) -> str:
    return homeserver.rstrip("/") + MEDIA_PATH


def file_ref(message: MatrixMessage, homeserver: str) -> FileRef | None:
    """What to fetch for the message's file; None without one or with a malformed URI."""
    if message.file is None:
        return None
    url = media_url(homeserver, message.file.mxc)
    if url is None:
        return None
    return FileRef(
        kind=message.file.kind,
        name=message.file.name,
        content_type=message.file.mimetype or "application/octet-stream",
        url=url,
        declared_size=message.file.size,
    )


def to_inbound(
    message: MatrixMessage,
    room: Room,
    *,
    sender_name: str,
    mentioned: bool,
    received_at: float,
    attachments: tuple[Attachment, ...] = (),
    notes: Sequence[str] = (),
) -> Inbound:
    """The envelope of a message; every platform string is sanitized here, once."""
    # A file's body is its name (or a caption when `filename` is set): the name goes
    # with the attachment, only a caption is text.
    if message.file is None:
        text = without_reply_fallback(message.body)
    else:
        text = message.body if message.file.name != message.body else ""
    return Inbound(
        channel=NAME,
        event_id=message.event_id,
        sender_id=message.sender,
        conversation_id=room.room_id,
        text=with_notes(sanitize(text), list(notes)),
        received_at=received_at,
        sender_name=sanitize(sender_name),
        thread_id=message.thread_root,
        is_direct=room.joined <= 2,
        mentioned=mentioned,
        conversation_name=sanitize(room.name),
        attachments=attachments,
        # Matrix marks no account as a bot, so `from_bot` stays False; the bot's own
        # events never get here (the adapter drops them by sender).
    )


def message_contents(text: str, reply_to: str, thread_id: str) -> list[dict[str, object]]:
    """The `m.room.message` contents of a reply: one per part, each within the limits."""
    contents: list[dict[str, object]] = []
    for index, part in enumerate(chunk(text, MAX_TEXT)):
        content: dict[str, object] = {
            "msgtype": "m.text",
            "body": to_plain(part),
            "format": HTML_FORMAT,
            "formatted_body": to_telegram_html(part),
        }
        if thread_id:
            relation: dict[str, object] = {
                "rel_type": "m.thread",
                "event_id": thread_id,
                "is_falling_back": True,
            }
            relation["m.in_reply_to"] = {"event_id": reply_to or thread_id}
            content["m.relates_to"] = relation
        elif reply_to and index == 0:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        if len(json.dumps(content, ensure_ascii=False).encode()) > MAX_EVENT_BYTES:
            del content["format"], content["formatted_body"]
        contents.append(content)
    return contents


def transaction_id(outbound_id: str, index: int) -> str:
    """The same for the same part of the same reply, so the homeserver drops a resend."""
    return hashlib.sha256(f"{outbound_id}\x00{index}".encode()).hexdigest()[:32]


def send_error(
    errcode: str, message: str, retry_after_ms: int | None, http_status: int | None
) -> PlatformError:
    """Our error for a homeserver's error answer: its `errcode` and HTTP status."""
    if errcode == "M_LIMIT_EXCEEDED" or http_status == 429:
        wait_ms = retry_after_ms if retry_after_ms is not None and retry_after_ms >= 0 else 5_000
        return RateLimited(wait_ms / 1000, NAME)
    text = f"matrix: {errcode}: {message[:200]}"
    if http_status is not None and http_status >= 500:
        return PlatformUnavailable(text)
    return PlatformError(text)
