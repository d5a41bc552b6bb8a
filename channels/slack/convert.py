"""Pure conversion between Slack payloads and envelopes: typed parsing, text, replies.

Slack payloads (Events API callbacks, slash commands, Web API answers) are parsed
once here into frozen dataclasses; nothing untyped leaves this module. Which events
are for the bot is decided here too: direct messages (`message` with channel_type
"im") and mentions in channels (`app_mention`); never our own messages, and of the
message subtypes only plain messages, file shares, thread broadcasts and bot messages.
Another bot's message is kept and marked `from_bot`: whether bots are heard is the
core's decision, not the adapter's.

Threads: a reply stays in the thread it was asked in (`thread_ts`). A top-level
mention in a channel starts a thread under the mention (its own `ts`), so answers
do not flood the channel. A top-level direct message is answered inline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from channels._shared.chunking import chunk
from channels._shared.markdown import to_slack_mrkdwn
from channels._shared.media import FileRef, kind_of, with_notes
from channels.base import Capabilities
from gateway.envelope import Attachment, Inbound
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

NAME: Final = "slack"
MAX_TEXT: Final = 40_000
"""Slack truncates a message's text past 40,000 characters."""
PART_LIMIT: Final = 4_000
"""Replies are cut well below MAX_TEXT: Slack's chat.postMessage documentation asks
for at most 4,000 characters for best results, and a shorter part reads better."""
CAPABILITIES: Final = Capabilities(max_text=MAX_TEXT, threads=True, native_commands=True)

ACCEPTED_SUBTYPES: Final = frozenset(("", "file_share", "thread_broadcast", "bot_message"))
"""Subtypes that are someone writing (a person, or a bot or integration with
"bot_message"); edits, deletions, joins and the like are not."""

_ENTITY: Final = re.compile(r"<([^<>]*)>")
_MENTION: Final = re.compile(r"<@([A-Z0-9]+)(?:\|[^<>]*)?>")
_SPECIAL: Final = {"here": "@here", "channel": "@channel", "everyone": "@everyone"}


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who we are on Slack, as auth.test says: our messages come back as events, and
    carry one or both of these ids."""

    user_id: str
    bot_id: str


@dataclass(frozen=True, slots=True)
class SlackFile:
    """A file shared with a message, as the event announces it."""

    name: str
    mimetype: str
    url: str
    size: int | None


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A `message` or `app_mention` event from an Events API callback."""

    event_id: str
    kind: str
    """The event type: "message" or "app_mention" (others are never built)."""
    subtype: str
    user: str
    """Empty in a "bot_message" from an integration that has no bot user."""
    bot_id: str
    """Set when a bot or integration posted the message."""
    bot_name: str
    """The name a bot posted under ("username", else its bot profile's name)."""
    channel: str
    channel_type: str
    text: str
    """As Slack sends it: entities escaped, mentions and links in <...>."""
    ts: str
    thread_ts: str
    files: tuple[SlackFile, ...] = ()


@dataclass(frozen=True, slots=True)
class SlackCommand:
    """A slash command invocation."""

    trigger_id: str
    """Slash commands carry no event id; the trigger id is unique per invocation."""
    command: str
    text: str
    user_id: str
    user_name: str
    channel_id: str
    channel_name: str


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _file(data: object) -> SlackFile | None:
    if not isinstance(data, Mapping):
        return None
    url = _str(data, "url_private_download") or _str(data, "url_private")
    if not url:
        return None
    size = data.get("size")
    return SlackFile(
        name=_str(data, "name") or _str(data, "title"),
        mimetype=_str(data, "mimetype"),
        url=url,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
    )


def parse_event(body: Mapping[str, object]) -> SlackMessage | None:
    """The message in an event callback; None for any other event or a malformed one."""
    event = body.get("event")
    event_id = _str(body, "event_id")
    if not isinstance(event, Mapping) or not event_id:
        return None
    kind = _str(event, "type")
    if kind not in ("message", "app_mention"):
        return None
    raw_files = event.get("files")
    files = tuple(
        f
        for f in (_file(item) for item in (raw_files if isinstance(raw_files, list) else ()))
        if f is not None
    )
    profile = event.get("bot_profile")
    return SlackMessage(
        event_id=event_id,
        kind=kind,
        subtype=_str(event, "subtype"),
        user=_str(event, "user"),
        bot_id=_str(event, "bot_id"),
        bot_name=_str(event, "username")
        or (_str(profile, "name") if isinstance(profile, Mapping) else ""),
        channel=_str(event, "channel"),
        channel_type=_str(event, "channel_type"),
        text=_str(event, "text"),
        ts=_str(event, "ts"),
        thread_ts=_str(event, "thread_ts"),
        files=files,
    )


def parse_command(body: Mapping[str, object]) -> SlackCommand | None:
    """A slash command payload; None without the fields a reply needs."""
    command = SlackCommand(
        trigger_id=_str(body, "trigger_id"),
        command=_str(body, "command"),
        text=_str(body, "text"),
        user_id=_str(body, "user_id"),
        user_name=_str(body, "user_name"),
        channel_id=_str(body, "channel_id"),
        channel_name=_str(body, "channel_name"),
    )
    if not (command.trigger_id and command.command and command.user_id and command.channel_id):
        return None
    return command


def is_own(message: SlackMessage, own: BotIdentity) -> bool:
    """Whether we posted this ourselves (its echo must never reach the agent)."""
    return (bool(own.user_id) and message.user == own.user_id) or (
        bool(own.bot_id) and message.bot_id == own.bot_id
    )


def is_from_bot(message: SlackMessage) -> bool:
    return bool(message.bot_id) or message.subtype == "bot_message"


def sender_of(message: SlackMessage) -> str:
    """The user who wrote it, or the bot id of an integration without a bot user."""
    return message.user or message.bot_id


def is_for_us(message: SlackMessage, own: BotIdentity) -> bool:
    """Whether someone other than us wrote this to the bot: a direct message or a mention."""
    if message.subtype not in ACCEPTED_SUBTYPES or is_own(message, own):
        return False
    if not sender_of(message) or not message.channel:
        return False
    if is_from_bot(message) and not (own.user_id or own.bot_id):
        return False  # without our own ids, a bot's message could be our own echo
    if message.kind == "app_mention":
        return True
    return message.channel_type == "im"


def is_direct(message: SlackMessage) -> bool:
    return message.channel_type == "im" or message.channel.startswith("D")


def thread_of(message: SlackMessage) -> str:
    """Where the answer goes: the message's thread, or a new one under a channel mention."""
    if message.thread_ts:
        return message.thread_ts
    if message.kind == "app_mention" and not is_direct(message):
        return message.ts
    return ""


def mentioned_users(text: str) -> list[str]:
    """User ids mentioned in `text` without a label, in order, each once."""
    seen: dict[str, None] = {}
    for match in _MENTION.finditer(text):
        if "|" not in match[0]:
            seen.setdefault(match[1])
    return list(seen)


def _unescape(text: str) -> str:
    # Slack escapes exactly these three; &amp; last so "&amp;lt;" stays "&lt;".
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _entity(inner: str, names: Mapping[str, str]) -> str:
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or names.get(target[1:]) or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        special = target[1:].split("^", 1)[0]
        return label or _SPECIAL.get(special, "@" + special)
    url = target.removeprefix("mailto:")
    if label and label != url and label != target:
        return f"{label} ({url})"
    return url


def readable(text: str, names: Mapping[str, str], bot_user_id: str = "") -> str:
    """Slack's wire text as a person reads it, without the leading mention of the bot.

    `<@U1>` becomes "@name" (from `names`, else the id), `<#C1|general>` "#general",
    `<https://x|label>` "label (https://x)" so no link hides behind its label, and
    `&amp; &lt; &gt;` their characters.
    """
    if bot_user_id:
        text = re.sub(rf"^\s*<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>[\s,:]*", "", text)
    pieces: list[str] = []
    pos = 0
    for match in _ENTITY.finditer(text):
        pieces.append(_unescape(text[pos : match.start()]))
        pieces.append(_unescape(_entity(match[1], names)))
        pos = match.end()
    pieces.append(_unescape(text[pos:]))
    return "".join(pieces).strip()


def file_refs(message: SlackMessage) -> list[FileRef]:
    """The message's files, to fetch (with the bot token) before publishing."""
    return [
        FileRef(
            kind=kind_of(f.mimetype),
            name=f.name,
            content_type=f.mimetype,
            url=f.url,
            declared_size=f.size,
        )
        for f in message.files
    ]


def message_inbound(
    message: SlackMessage,
    *,
    bot_user_id: str,
    sender_name: str,
    conversation_name: str,
    names: Mapping[str, str],
    attachments: Sequence[Attachment] = (),
    notes: Sequence[str] = (),
    now: float,
) -> Inbound:
    """The envelope for a message that `is_for_us`; names as fetched (raw, unsanitized)."""
    direct = is_direct(message)
    text = with_notes(readable(message.text, names, bot_user_id), list(notes))
    return Inbound(
        channel=NAME,
        event_id=sanitize(message.event_id),
        sender_id=sanitize(sender_of(message)),
        conversation_id=sanitize(message.channel),
        text=sanitize(text),
        received_at=now,
        sender_name=sanitize(sender_name or message.bot_name or sender_of(message)),
        thread_id=sanitize(thread_of(message)),
        is_direct=direct,
        mentioned=message.kind == "app_mention",
        conversation_name="" if direct else sanitize(conversation_name or message.channel),
        attachments=tuple(attachments),
        from_bot=is_from_bot(message),
    )


def command_inbound(
    command: SlackCommand, *, sender_name: str, conversation_name: str, now: float
) -> Inbound:
    """The envelope for a slash command: its text is the command line, "/usage 7d"."""
    direct = command.channel_id.startswith("D")
    line = f"{command.command} {command.text.strip()}".strip()
    return Inbound(
        channel=NAME,
        event_id=sanitize(command.trigger_id),
        sender_id=sanitize(command.user_id),
        conversation_id=sanitize(command.channel_id),
        text=sanitize(line),
        received_at=now,
        sender_name=sanitize(sender_name or command.user_name or command.user_id),
        is_direct=direct,
        conversation_name=""
        if direct
        else sanitize(conversation_name or command.channel_name or command.channel_id),
    )


def display_name(answer: Mapping[str, object]) -> str:
    """The name people see, from a users.info answer; "" when it has none."""
    user = answer.get("user")
    if not isinstance(user, Mapping):
        return ""
    profile = user.get("profile")
    profile = profile if isinstance(profile, Mapping) else {}
    return (
        _str(profile, "display_name")
        or _str(profile, "real_name")
        or _str(user, "real_name")
        or _str(user, "name")
    )


def channel_name(answer: Mapping[str, object]) -> str:
    """A channel's name from a conversations.info answer; "" when it has none."""
    channel = answer.get("channel")
    return _str(channel, "name") if isinstance(channel, Mapping) else ""


def retry_after_s(header: str | None, default: float = 1.0) -> float:
    """Slack's Retry-After header in seconds (whole seconds in practice; fractions are
    taken as given); `default` when it is missing or not a sane number."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def send_error(status: int, retry_after: str | None, code: str) -> PlatformError:
    """Slack's answer to a send as our error tree: 429 waits as asked, 5xx is retried
    with backoff, any other refusal (`ok: false` with an error code) is final."""
    if status == 429:
        return RateLimited(retry_after_s(retry_after), NAME)
    if status >= 500:
        return PlatformUnavailable(f"slack answered HTTP {status}")
    return PlatformError(f"slack refused the message: {(code or f'HTTP {status}')[:80]}")


def render(text: str) -> list[str]:
    """A reply as Slack mrkdwn, in parts of at most PART_LIMIT characters."""
    return chunk(to_slack_mrkdwn(text), PART_LIMIT)


SERVER_SIDE_CODES: Final = frozenset(
    ("fatal_error", "internal_error", "service_unavailable", "request_timeout")
)
"""`ok: false` codes that report Slack's own trouble, not a refusal: worth waiting out."""


def start_error(
    method: str, credential: str, status: int, retry_after: str | None, code: str
) -> PlatformError:
    """Slack's answer to a call made at start (auth.test, apps.connections.open) as our
    error: a refusal of `credential` ("bot token", "app token") is final; a 429, a 5xx
    or Slack's own trouble is waited out. The text names the code, never the token."""
    if status == 429:
        return RateLimited(retry_after_s(retry_after), NAME)
    if status >= 500 or code in SERVER_SIDE_CODES:
        return PlatformUnavailable(f"slack: {method} failed ({code or f'HTTP {status}'})")
    return PlatformError(
        f"slack: {method} refused the {credential} ({(code or f'HTTP {status}')[:80]})"
    )
