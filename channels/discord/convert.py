"""Pure conversion between Discord gateway/REST payloads and envelopes.

Gateway dispatches (`MESSAGE_CREATE`, `INTERACTION_CREATE`) are parsed once here from
the raw JSON into frozen dataclasses; nothing untyped leaves this module. Which
messages are for the bot is decided here too: never our own, never a system message;
another bot's or a webhook's message is published marked `from_bot`, and whether bots
are heard is the core's decision. In a guild every message is published with
`mentioned` set when the bot is @mentioned or replied to, and the core decides what
to answer.

A message in a thread has the thread as its conversation: in Discord a thread is a
channel of its own, so the thread channel id is both `conversation_id` and
`thread_id`, and a reply posted there stays in the thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from channels._shared.chunking import DISCORD_LIMIT, chunk
from channels._shared.media import FileRef, kind_of, with_notes
from channels.base import Capabilities
from gateway.envelope import Attachment, Inbound
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

NAME: Final = "discord"
CAPABILITIES: Final = Capabilities(
    max_text=DISCORD_LIMIT, threads=True, native_commands=True, typing=True
)
DISCORD_API: Final = "https://discord.com/"
CDN_PREFIXES: Final = (
    "https://cdn.discordapp.com/attachments/",
    "https://media.discordapp.net/attachments/",
)
NONCE_LEN: Final = 25
"""Discord accepts a nonce of at most 25 characters."""
MESSAGE_TYPES: Final = frozenset((0, 19))
"""A person writing: a default message (0) or a reply (19); joins, pins and the like not."""
THREAD_TYPES: Final = frozenset((10, 11, 12))
DM_TYPES: Final = frozenset((1, 3))
APPLICATION_COMMAND: Final = 2
DEFERRED_RESPONSE: Final = 5
"""Interaction callback type: "thinking…", the answer follows as a follow-up."""
ARGS_OPTION: Final = "args"
MAX_COMMAND_DESCRIPTION: Final = 100

_MENTION: Final = re.compile(r"<@!?(\d+)>")
_COMMAND_NAME: Final = re.compile(r"^[-_a-z0-9]{1,32}$")


@dataclass(frozen=True, slots=True)
class DiscordUser:
    id: str
    username: str
    global_name: str
    bot: bool
    system: bool = False
    """Discord's own system user (official notices), never a person or a bot."""

    @property
    def display(self) -> str:
        return self.global_name or self.username or self.id


@dataclass(frozen=True, slots=True)
class DiscordAttachment:
    filename: str
    content_type: str
    url: str
    size: int | None


@dataclass(frozen=True, slots=True)
class DiscordMessage:
    """A `MESSAGE_CREATE` dispatch."""

    id: str
    channel_id: str
    guild_id: str
    """Empty in a direct message."""
    author: DiscordUser
    member_nick: str
    content: str
    kind: int
    webhook_id: str
    mentions: tuple[DiscordUser, ...]
    replied_to_author: str
    """The author id of the message this one replies to; empty when none."""
    attachments: tuple[DiscordAttachment, ...] = ()


@dataclass(frozen=True, slots=True)
class DiscordInteraction:
    """An `INTERACTION_CREATE` for an application (slash) command."""

    id: str
    token: str
    channel_id: str
    guild_id: str
    user: DiscordUser
    member_nick: str
    command: str
    args: str


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What `GET /channels/{id}` says about a channel."""

    id: str
    kind: int
    name: str

    @property
    def is_thread(self) -> bool:
        return self.kind in THREAD_TYPES


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key)
    return value if isinstance(value, list) else []


def _user(data: Mapping[str, object]) -> DiscordUser:
    return DiscordUser(
        id=_str(data, "id"),
        username=_str(data, "username"),
        global_name=_str(data, "global_name"),
        bot=data.get("bot") is True,
        system=data.get("system") is True,
    )


def _attachment(data: object) -> DiscordAttachment | None:
    if not isinstance(data, Mapping) or not _str(data, "url"):
        return None
    return DiscordAttachment(
        filename=_str(data, "filename"),
        content_type=_str(data, "content_type"),
        url=_str(data, "url"),
        size=_int(data, "size"),
    )


def parse_frame(raw: str | bytes | Mapping[str, object]) -> tuple[str, Mapping[str, object]]:
    """A gateway frame's event name and data; ("", {}) for anything but a dispatch."""
    frame: object = raw
    if isinstance(raw, str | bytes):
        try:
            frame = json.loads(raw)
        except ValueError:
            return "", {}
    if not isinstance(frame, Mapping) or frame.get("op") != 0:
        return "", {}
    return _str(frame, "t"), _map(frame, "d")


def parse_message(data: Mapping[str, object]) -> DiscordMessage | None:
    """A `MESSAGE_CREATE`'s data; None when it lacks the ids a reply needs."""
    author = _user(_map(data, "author"))
    if not (_str(data, "id") and _str(data, "channel_id") and author.id):
        return None
    referenced = _map(data, "referenced_message")
    attachments = (_attachment(item) for item in _list(data, "attachments"))
    return DiscordMessage(
        id=_str(data, "id"),
        channel_id=_str(data, "channel_id"),
        guild_id=_str(data, "guild_id"),
        author=author,
        member_nick=_str(_map(data, "member"), "nick"),
        content=_str(data, "content"),
        kind=_int(data, "type") or 0,
        webhook_id=_str(data, "webhook_id"),
        mentions=tuple(_user(m) for m in _list(data, "mentions") if isinstance(m, Mapping)),
        replied_to_author=_str(_map(referenced, "author"), "id"),
        attachments=tuple(a for a in attachments if a is not None),
    )


def parse_interaction(data: Mapping[str, object]) -> DiscordInteraction | None:
    """An application command's data; None for other interactions or a malformed one."""
    if _int(data, "type") != APPLICATION_COMMAND:
        return None
    member = _map(data, "member")
    user = _user(_map(member, "user") or _map(data, "user"))
    command = _map(data, "data")
    args = ""
    for option in _list(command, "options"):
        if isinstance(option, Mapping) and _str(option, "name") == ARGS_OPTION:
            args = _str(option, "value")
    interaction = DiscordInteraction(
        id=_str(data, "id"),
        token=_str(data, "token"),
        channel_id=_str(data, "channel_id") or _str(_map(data, "channel"), "id"),
        guild_id=_str(data, "guild_id"),
        user=user,
        member_nick=_str(member, "nick"),
        command=_str(command, "name"),
        args=args,
    )
    if not (interaction.id and interaction.token and interaction.channel_id and user.id):
        return None
    return interaction if interaction.command else None


def parse_channel(data: Mapping[str, object]) -> ChannelInfo:
    return ChannelInfo(id=_str(data, "id"), kind=_int(data, "type") or 0, name=_str(data, "name"))


def is_from_bot(message: DiscordMessage) -> bool:
    """Another bot wrote it, or a webhook posted it (its author is a stand-in, not a person)."""
    return message.author.bot or bool(message.webhook_id)


def is_for_us(message: DiscordMessage, bot_id: str) -> bool:
    """Whether someone other than us wrote this: not our own message, not a system one.

    Until the bot knows its own id, a bot's message could be its own echo, so it is
    dropped then."""
    if message.author.system or message.author.id == bot_id:
        return False
    if is_from_bot(message) and not bot_id:
        return False
    return message.kind in MESSAGE_TYPES


def is_mentioned(message: DiscordMessage, bot_id: str) -> bool:
    """The bot was @mentioned, or the message replies to one of the bot's."""
    if not bot_id:
        return False
    return message.replied_to_author == bot_id or any(u.id == bot_id for u in message.mentions)


def readable(content: str, mentions: Sequence[DiscordUser], bot_id: str) -> str:
    """Content as a person reads it: the leading mention of the bot dropped, other
    user mentions as "@name"."""
    if bot_id:
        content = re.sub(rf"^\s*<@!?{re.escape(bot_id)}>[\s,:]*", "", content)
    names = {u.id: u.display for u in mentions}

    def name(match: re.Match[str]) -> str:
        return "@" + names.get(match[1], match[1])

    return _MENTION.sub(name, content).strip()


def file_refs(message: DiscordMessage) -> list[FileRef]:
    return [
        FileRef(
            kind=kind_of(a.content_type),
            name=a.filename,
            content_type=a.content_type,
            url=a.url,
            declared_size=a.size,
        )
        for a in message.attachments
    ]


def cdn_prefixes(api_base: str) -> tuple[str, ...]:
    """Where attachments may be fetched from: Discord's CDN for the real API, the
    same origin's `/attachments/` for any other base (a fake, a proxy)."""
    if api_base.startswith(DISCORD_API):
        return CDN_PREFIXES
    parts = urlsplit(api_base)
    return (f"{parts.scheme}://{parts.netloc}/attachments/",)


def message_inbound(
    message: DiscordMessage,
    *,
    bot_id: str,
    channel: ChannelInfo | None,
    attachments: Sequence[Attachment] = (),
    notes: Sequence[str] = (),
    now: float,
) -> Inbound:
    """The envelope of a message that `is_for_us`; `channel` as looked up (None: unknown)."""
    direct = not message.guild_id
    thread = channel is not None and channel.is_thread
    text = with_notes(readable(message.content, message.mentions, bot_id), list(notes))
    name = channel.name if channel is not None and channel.name else message.channel_id
    return Inbound(
        channel=NAME,
        event_id=sanitize(message.id),
        sender_id=sanitize(message.author.id),
        conversation_id=sanitize(message.channel_id),
        text=sanitize(text),
        received_at=now,
        sender_name=sanitize(message.member_nick or message.author.display),
        thread_id=sanitize(message.channel_id) if thread else "",
        is_direct=direct,
        mentioned=direct or is_mentioned(message, bot_id),
        conversation_name="" if direct else sanitize(name),
        attachments=tuple(attachments),
        from_bot=is_from_bot(message),
        extras={"message_id": sanitize(message.id)},
    )


def command_inbound(
    interaction: DiscordInteraction, *, channel: ChannelInfo | None, now: float
) -> Inbound:
    """The envelope of a slash command: its text is the command line, "/usage 7d"."""
    direct = not interaction.guild_id
    line = f"/{interaction.command} {interaction.args.strip()}".strip()
    name = channel.name if channel is not None and channel.name else interaction.channel_id
    thread = channel is not None and channel.is_thread
    return Inbound(
        channel=NAME,
        event_id=sanitize(interaction.id),
        sender_id=sanitize(interaction.user.id),
        conversation_id=sanitize(interaction.channel_id),
        text=sanitize(line),
        received_at=now,
        sender_name=sanitize(interaction.member_nick or interaction.user.display),
        thread_id=sanitize(interaction.channel_id) if thread else "",
        is_direct=direct,
        mentioned=True,
        conversation_name="" if direct else sanitize(name),
    )


def command_payload(commands: Sequence[tuple[str, str]]) -> list[dict[str, object]]:
    """The core's chat commands as slash commands, each with an optional "args" string.

    Names Discord would refuse (upper case, spaces, longer than 32) are left out, and
    descriptions cut to Discord's 100 characters.
    """
    payload: list[dict[str, object]] = []
    for name, description in commands:
        if not _COMMAND_NAME.match(name):
            continue
        payload.append(
            {
                "name": name,
                "description": (description or name)[:MAX_COMMAND_DESCRIPTION],
                "type": 1,
                "options": [
                    {
                        "type": 3,
                        "name": ARGS_OPTION,
                        "description": "arguments",
                        "required": False,
                    }
                ],
            }
        )
    return payload


def nonce(outbound_id: str, index: int) -> str:
    """The same for a part whenever it is sent again, so Discord keeps only the first."""
    return hashlib.sha256(f"{outbound_id}\x00{index}".encode()).hexdigest()[:NONCE_LEN]


def render(text: str) -> list[str]:
    """Discord renders Markdown itself: the reply as written, in parts within 2,000."""
    return chunk(text, DISCORD_LIMIT)


def message_payload(part: str, part_nonce: str, reply_to: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "content": part,
        "nonce": part_nonce,
        "enforce_nonce": True,
        "allowed_mentions": {"parse": []},
    }
    if reply_to:
        payload["message_reference"] = {"message_id": reply_to, "fail_if_not_exists": False}
    return payload


def retry_after_s(body: Mapping[str, object], header: str | None, default: float = 1.0) -> float:
    """Discord's wait in seconds: the body's `retry_after` (fractional), else the
    Retry-After header; `default` when neither is a sane number."""
    value = body.get("retry_after")
    candidates: list[object] = [value, header]
    for candidate in candidates:
        try:
            seconds = float(candidate) if isinstance(candidate, int | float | str) else math.nan
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return default


def send_error(status: int, body: Mapping[str, object], retry_after: str | None) -> PlatformError:
    """Discord's answer to a send as our error tree: 429 waits as asked, 5xx is retried
    with backoff, any other refusal is final (its JSON error code named, nothing else)."""
    if status == 429:
        return RateLimited(retry_after_s(body, retry_after), NAME)
    if status >= 500:
        return PlatformUnavailable(f"discord answered HTTP {status}")
    code = _str(body, "code")
    return PlatformError(f"discord refused the message: HTTP {status} code {code or '-'}")
