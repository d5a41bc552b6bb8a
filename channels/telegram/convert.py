"""Pure conversion between Telegram Bot API payloads and envelopes.

An update's JSON is parsed once, by `parse_update`, into the frozen records below;
`to_inbound` decides from them alone whether it is a message for the agent and
builds its envelope. Every string taken from Telegram passes `sanitize` here, file
names `media.safe_name`. Entity offsets are in UTF-16 code units, as Telegram counts.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from channels._shared.media import FileRef, safe_name, with_notes
from channels.base import Capabilities
from gateway.envelope import Attachment, Inbound
from gateway.sanitize import sanitize

NAME: Final = "telegram"
CAPABILITIES: Final = Capabilities(max_text=4096, threads=True, native_commands=True, typing=True)
ALLOWED_UPDATES: Final = ("message",)
"""The update kinds asked of Telegram; any other kind that still arrives is ignored."""
UPDATE_KINDS: Final = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "callback_query",
    "inline_query",
    "my_chat_member",
    "chat_member",
)


class WireError(ValueError):
    """A payload that is not a Telegram update; the text never quotes the payload."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    is_bot: bool
    first_name: str = ""
    last_name: str = ""
    username: str = ""


@dataclass(frozen=True, slots=True)
class Chat:
    id: int
    type: str
    """"private", "group", "supergroup" or "channel"."""
    title: str = ""


@dataclass(frozen=True, slots=True)
class Entity:
    type: str
    offset: int
    length: int
    user_id: int | None = None
    """For "text_mention": the user mentioned."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file a message announces, before anything is fetched."""

    kind: str
    """Attachment kind: "image", "file" or "voice"."""
    file_id: str
    name: str
    """Sanitized, safe for a workspace."""
    content_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class Message:
    message_id: int
    chat: Chat
    sender: User | None
    text: str
    """The text, or the caption of a media message; raw, as Telegram sent it."""
    entities: tuple[Entity, ...] = ()
    thread_id: int | None = None
    """The forum topic, only when the message is in one."""
    reply_to_sender: User | None = None
    files: tuple[FileInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Update:
    update_id: int
    kind: str
    """Which field of the update was set ("message", "edited_message", ...; "" if none known)."""
    message: Message | None


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, for telling mentions and replies to it apart."""

    id: int
    username: str
    """Without the "@"."""


# -- parsing -------------------------------------------------------------------------------


def _obj(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise WireError(f"{what} is not an object")
    return value


def _int(data: Mapping[str, object], key: str, what: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"{what}.{key} is not an integer")
    return value


def _opt_int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _user(value: object) -> User | None:
    if value is None:
        return None
    data = _obj(value, "user")
    return User(
        id=_int(data, "id", "user"),
        is_bot=data.get("is_bot") is True,
        first_name=_str(data, "first_name"),
        last_name=_str(data, "last_name"),
        username=_str(data, "username"),
    )


def _chat(value: object) -> Chat:
    data = _obj(value, "chat")
    return Chat(id=_int(data, "id", "chat"), type=_str(data, "type"), title=_str(data, "title"))


def _entities(value: object) -> tuple[Entity, ...]:
    if not isinstance(value, list):
        return ()
    entities = []
    for item in value:
        data = _obj(item, "entity")
        user = data.get("user")
        entities.append(
            Entity(
                type=_str(data, "type"),
                offset=_int(data, "offset", "entity"),
                length=_int(data, "length", "entity"),
                user_id=_opt_int(_obj(user, "entity.user"), "id") if user is not None else None,
            )
        )
    return tuple(entities)


_MEDIA: Final = (
    # (field, attachment kind, fallback name, fallback content type)
    ("document", "file", "document", ""),
    ("audio", "file", "audio", "audio/mpeg"),
    ("video", "file", "video.mp4", "video/mp4"),
    ("voice", "voice", "voice.ogg", "audio/ogg"),
)


def _file(value: object, kind: str, fallback: str, content_type: str) -> FileInfo:
    data = _obj(value, "file")
    file_id = _str(data, "file_id")
    if not file_id:
        raise WireError("file.file_id is missing")
    return FileInfo(
        kind=kind,
        file_id=file_id,
        name=safe_name(_str(data, "file_name"), fallback),
        content_type=_str(data, "mime_type") or content_type,
        size=_opt_int(data, "file_size"),
    )


def _files(data: Mapping[str, object]) -> tuple[FileInfo, ...]:
    files: list[FileInfo] = []
    photo = data.get("photo")
    if isinstance(photo, list) and photo:
        # Telegram sends one PhotoSize per resolution; the largest is the original.
        sizes = [_obj(size, "photo") for size in photo]
        largest = max(
            sizes, key=lambda s: (_opt_int(s, "width") or 0) * (_opt_int(s, "height") or 0)
        )
        files.append(_file(largest, "image", "photo.jpg", "image/jpeg"))
    for key, kind, fallback, content_type in _MEDIA:
        if key in data:
            files.append(_file(data[key], kind, fallback, content_type))
    return tuple(files)


def _message(value: object) -> Message:
    data = _obj(value, "message")
    reply = data.get("reply_to_message")
    text_key, entities_key = (
        ("text", "entities") if "text" in data else ("caption", "caption_entities")
    )
    return Message(
        message_id=_int(data, "message_id", "message"),
        chat=_chat(data.get("chat")),
        sender=_user(data.get("from")),
        text=_str(data, text_key),
        entities=_entities(data.get(entities_key)),
        thread_id=_opt_int(data, "message_thread_id") if data.get("is_topic_message") else None,
        reply_to_sender=_user(_obj(reply, "reply_to_message").get("from")) if reply else None,
        files=_files(data),
    )


def parse_update(raw: object) -> Update:
    """The typed update in a decoded JSON payload; `WireError` if it is not one."""
    data = _obj(raw, "update")
    update_id = _int(data, "update_id", "update")
    kind = next((k for k in UPDATE_KINDS if k in data), "")
    message = _message(data["message"]) if kind == "message" else None
    return Update(update_id=update_id, kind=kind, message=message)


# -- deciding ------------------------------------------------------------------------------


def entity_text(text: str, entity: Entity) -> str:
    """The part of `text` an entity covers (offsets count UTF-16 code units)."""
    units = text.encode("utf-16-le", "surrogatepass")
    piece = units[2 * entity.offset : 2 * (entity.offset + entity.length)]
    return piece.decode("utf-16-le", "replace")


_COMMAND: Final = re.compile(r"(/[A-Za-z0-9_]{1,64})@([A-Za-z0-9_]{1,64})(?=\s|$)")


def strip_command_target(text: str, username: str) -> tuple[str, bool]:
    """`/usage@mybot 7d` → (`/usage 7d`, True) when addressed to this bot."""
    match = _COMMAND.match(text)
    if match is None or not username or match[2].casefold() != username.casefold():
        return text, False
    return match[1] + text[match.end() :], True


def is_mentioned(message: Message, bot: BotIdentity) -> bool:
    """Whether a group message is for the bot: @mention, text mention, or a reply to it."""
    if message.reply_to_sender is not None and message.reply_to_sender.id == bot.id:
        return True
    handle = f"@{bot.username}".casefold()
    for entity in message.entities:
        if entity.type == "text_mention" and entity.user_id == bot.id:
            return True
        if (
            entity.type == "mention"
            and bot.username
            and entity_text(message.text, entity).casefold() == handle
        ):
            return True
    return False


def display_name(user: User) -> str:
    full = " ".join(part for part in (user.first_name, user.last_name) if part)
    return sanitize(full or user.username)


def to_inbound(update: Update, bot: BotIdentity, now: float) -> Inbound | None:
    """The envelope of a message; None for everything the agent ignores: other update
    kinds (edits, channel posts), the bot's own messages, service messages.

    Another bot's message is kept with `from_bot`: whether bots are heard is the core's
    decision, not the adapter's."""
    message = update.message
    if message is None or message.sender is None or message.sender.id == bot.id:
        return None
    if message.chat.type not in ("private", "group", "supergroup"):
        return None
    if not message.text and not message.files:
        return None  # a service message (joins, pins, titles) or a kind we do not take
    text, addressed = strip_command_target(message.text, bot.username)
    is_direct = message.chat.type == "private"
    return Inbound(
        channel=NAME,
        event_id=str(update.update_id),
        sender_id=str(message.sender.id),
        conversation_id=str(message.chat.id),
        text=sanitize(text),
        received_at=now,
        sender_name=display_name(message.sender),
        thread_id=str(message.thread_id) if message.thread_id is not None else "",
        is_direct=is_direct,
        mentioned=addressed or is_mentioned(message, bot),
        conversation_name="" if is_direct else sanitize(message.chat.title),
        from_bot=message.sender.is_bot,
        extras={"message_id": str(message.message_id)},
    )


def file_ref(info: FileInfo, url: str) -> FileRef:
    """What `media.receive_files` fetches; an empty `url` is refused, never fetched."""
    return FileRef(
        kind=info.kind,
        name=info.name,
        content_type=info.content_type,
        url=url,
        declared_size=info.size,
    )


def with_files(inbound: Inbound, attachments: tuple[Attachment, ...], notes: list[str]) -> Inbound:
    """The envelope with its fetched files, and a line per refused one in its text."""
    return dataclasses.replace(
        inbound, attachments=attachments, text=with_notes(inbound.text, notes)
    )


# -- sending -------------------------------------------------------------------------------

_TAG: Final = re.compile(r"<[^<>]*>")


def html_to_text(part: str) -> str:
    """A Telegram HTML part as the plain text Telegram would show of it."""
    return html.unescape(_TAG.sub("", part))


def parse_id(value: str, what: str) -> int:
    """A chat, thread or message id from an envelope; ValueError names `what`, not the value."""
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} is not a Telegram id") from None
