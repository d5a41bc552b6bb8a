"""Slack conversion: which events are for the bot, readable text, threads, hostile input."""

from __future__ import annotations

from typing import Any

import pytest

from channels.slack import convert
from gateway.envelope import Attachment
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from tests.fakes.slack import BOT_ID, BOT_USER_ID, event_callback, message_event, slash_command

HOSTILE = "\u202e\u200b\U000e0041\ud800"
OWN = convert.BotIdentity(user_id=BOT_USER_ID, bot_id=BOT_ID)


def parsed(event: dict[str, Any], event_id: str = "Ev1") -> convert.SlackMessage:
    message = convert.parse_event(event_callback(event, event_id))
    assert message is not None
    return message


def dm(text: str, **extra: Any) -> convert.SlackMessage:
    return parsed(message_event(text, user="U1", channel="D1", ts="1.000100", **extra))


def mention(text: str, **extra: Any) -> convert.SlackMessage:
    event = message_event(
        f"<@{BOT_USER_ID}> {text}",
        user="U1",
        channel="C1",
        ts="2.000200",
        kind="app_mention",
        **extra,
    )
    return parsed(event)


def inbound_of(message: convert.SlackMessage, **names: Any) -> Any:
    return convert.message_inbound(
        message,
        bot_user_id=BOT_USER_ID,
        sender_name=names.get("sender", "Ada"),
        conversation_name=names.get("conversation", "general"),
        names=names.get("names", {}),
        now=5.0,
    )


def assert_clean(text: str) -> None:
    for ch in ("\u202e", "\u200b", "\U000e0041", "\ud800"):
        assert ch not in text


def test_a_direct_message_becomes_a_direct_inbound() -> None:
    message = dm("hello")
    assert convert.is_for_us(message, OWN)
    inbound = inbound_of(message)
    assert inbound.channel == "slack" and inbound.event_id == "Ev1"
    assert inbound.text == "hello"
    assert inbound.is_direct and not inbound.mentioned
    assert inbound.conversation_id == "D1" and inbound.conversation_name == ""
    assert inbound.sender_id == "U1" and inbound.sender_name == "Ada"
    assert inbound.thread_id == "" and inbound.received_at == 5.0


def test_a_channel_mention_loses_the_leading_mention_and_starts_a_thread() -> None:
    message = mention("what is up?")
    assert convert.is_for_us(message, OWN)
    inbound = inbound_of(message)
    assert inbound.text == "what is up?"
    assert inbound.mentioned and not inbound.is_direct
    assert inbound.conversation_name == "general"
    assert inbound.thread_id == "2.000200"


def test_a_reply_in_a_thread_stays_in_that_thread() -> None:
    assert inbound_of(mention("more", thread_ts="1.5")).thread_id == "1.5"
    assert inbound_of(dm("more", thread_ts="0.5")).thread_id == "0.5"


def test_a_channel_message_without_a_mention_is_not_for_the_bot() -> None:
    chatter = parsed(
        message_event("hi all", user="U1", channel="C1", ts="1.0", channel_type="channel")
    )
    assert not convert.is_for_us(chatter, OWN)


def test_our_own_messages_are_never_for_the_bot() -> None:
    assert not convert.is_for_us(dm("echo", bot_id=BOT_ID), OWN)
    own = parsed(message_event("mine", user=BOT_USER_ID, channel="D1", ts="1.0"))
    assert not convert.is_for_us(own, OWN)
    both = parsed(message_event("x", user=BOT_USER_ID, channel="D1", ts="1.0", bot_id=BOT_ID))
    assert not convert.is_for_us(both, OWN)
    hook = parsed(
        message_event("x", user="", channel="D1", ts="1.0", bot_id=BOT_ID, subtype="bot_message")
    )
    assert not convert.is_for_us(hook, OWN)


def test_another_apps_bot_user_message_is_for_the_bot_and_marked_from_bot() -> None:
    message = dm("beep", bot_id="B0OTHER")
    assert convert.is_for_us(message, OWN)
    inbound = inbound_of(message, sender="Other bot")
    assert inbound.from_bot
    assert inbound.sender_id == "U1" and inbound.sender_name == "Other bot"


def test_an_integrations_bot_message_without_a_user_is_keyed_by_its_bot_id() -> None:
    event = message_event(
        "deployed", user="", channel="D1", ts="1.0", subtype="bot_message", bot_id="B0HOOK"
    )
    event["username"] = f"Deploy{HOSTILE}"
    message = parsed(event)
    assert convert.is_for_us(message, OWN)
    inbound = inbound_of(message, sender="")
    assert inbound.from_bot
    assert inbound.sender_id == "B0HOOK"
    assert inbound.sender_name.startswith("Deploy")
    assert_clean(inbound.sender_name)


def test_a_bot_message_falls_back_to_its_bot_profile_name_then_its_id() -> None:
    event = message_event("x", user="", channel="C1", ts="1.0", kind="app_mention")
    event["bot_id"] = "B0APP"
    event["bot_profile"] = {"id": "B0APP", "name": "Helper"}
    assert inbound_of(parsed(event), sender="").sender_name == "Helper"
    nameless = message_event("x", user="", channel="D1", ts="1.0", bot_id="B0APP")
    assert inbound_of(parsed(nameless), sender="").sender_name == "B0APP"


def test_a_bot_message_subtype_without_a_bot_id_is_still_from_a_bot() -> None:
    message = dm("x", subtype="bot_message")
    assert convert.is_for_us(message, OWN)
    assert inbound_of(message).from_bot


def test_a_persons_message_is_not_from_a_bot() -> None:
    assert not inbound_of(dm("hello")).from_bot
    assert not inbound_of(mention("hello")).from_bot


def test_a_bot_message_with_neither_user_nor_bot_id_is_not_for_the_bot() -> None:
    anonymous = parsed(message_event("x", user="", channel="D1", ts="1.0", subtype="bot_message"))
    assert not convert.is_for_us(anonymous, OWN)


def test_without_a_known_identity_a_persons_message_is_kept_and_a_bots_dropped() -> None:
    unknown = convert.BotIdentity(user_id="", bot_id="")
    assert convert.is_for_us(dm("x"), unknown)
    assert not convert.is_for_us(dm("x", bot_id="B0OTHER"), unknown)


@pytest.mark.parametrize(
    ("subtype", "wanted"),
    [
        ("", True),
        ("file_share", True),
        ("thread_broadcast", True),
        ("message_changed", False),
        ("message_deleted", False),
        ("channel_join", False),
        ("bot_message", True),
        ("me_message", False),
    ],
)
def test_only_new_messages_are_for_the_bot(subtype: str, wanted: bool) -> None:
    assert convert.is_for_us(dm("x", subtype=subtype), OWN) is wanted


def test_other_event_types_and_malformed_callbacks_are_not_parsed() -> None:
    assert convert.parse_event(event_callback({"type": "reaction_added"}, "Ev1")) is None
    assert convert.parse_event({"type": "event_callback", "event": "nope", "event_id": "E"}) is None
    assert convert.parse_event({"event": {"type": "message"}}) is None


def test_slack_markup_becomes_readable_text() -> None:
    names = {"U2": "Grace"}
    text = (
        "a &amp; b &lt;tag&gt; <@U2> <@U3> <@U4|bob> <#C1|general> <#C2> "
        "<https://x.example/a|the docs> <https://y.example> <mailto:a@b.example|a@b.example> "
        "<!here> <!subteam^S1|@team> &amp;lt;"
    )
    assert convert.readable(text, names) == (
        "a & b <tag> @Grace @U3 @bob #general #C2 the docs (https://x.example/a) "
        "https://y.example a@b.example @here @team &lt;"
    )


def test_only_the_leading_mention_of_the_bot_is_stripped() -> None:
    text = f"<@{BOT_USER_ID}>: ask <@{BOT_USER_ID}> again"
    assert convert.readable(text, {BOT_USER_ID: "stockade"}, BOT_USER_ID) == "ask @stockade again"


def test_mentioned_users_are_listed_once_without_labelled_ones() -> None:
    assert convert.mentioned_users("<@U1> <@U2|x> <@U1> <@U3>") == ["U1", "U3"]


def test_a_slash_command_becomes_its_command_line() -> None:
    payload = slash_command("/usage", "  7d ", user="U1", channel="D1", trigger_id="123.456")
    command = convert.parse_command(payload)
    assert command is not None
    inbound = convert.command_inbound(command, sender_name="Ada", conversation_name="", now=1.0)
    assert inbound.text == "/usage 7d"
    assert inbound.event_id == "123.456"
    assert inbound.conversation_id == "D1" and inbound.is_direct
    assert inbound.sender_name == "Ada"


def test_a_slash_command_in_a_channel_is_not_direct_and_keeps_the_channel_name() -> None:
    payload = slash_command(
        "/help", "", user="U1", channel="C1", trigger_id="1.2", channel_name="general"
    )
    command = convert.parse_command(payload)
    assert command is not None
    inbound = convert.command_inbound(command, sender_name="", conversation_name="", now=1.0)
    assert inbound.text == "/help" and not inbound.is_direct
    assert inbound.conversation_name == "general"
    assert inbound.sender_name == "u1"


def test_a_slash_command_without_a_trigger_id_is_not_parsed() -> None:
    payload = slash_command("/usage", "", user="U1", channel="D1", trigger_id="")
    assert convert.parse_command(payload) is None


def test_shared_files_become_file_refs_by_kind() -> None:
    files = [
        {"name": "a.png", "mimetype": "image/png", "size": 10, "url_private_download": "u1"},
        {"name": "b.m4a", "mimetype": "audio/mp4", "url_private": "u2"},
        {"name": "c.pdf", "mimetype": "application/pdf", "size": 3, "url_private": "u3"},
        {"name": "no url", "mimetype": "text/plain"},
    ]
    refs = convert.file_refs(dm("files", subtype="file_share", files=files))
    assert [(r.kind, r.name, r.url, r.declared_size) for r in refs] == [
        ("image", "a.png", "u1", 10),
        ("voice", "b.m4a", "u2", None),
        ("file", "c.pdf", "u3", 3),
    ]


def test_attachments_and_refusal_notes_ride_with_the_text() -> None:
    attachment = Attachment(kind="file", name="a.txt", content_type="text/plain", size=1, blob="b")
    inbound = convert.message_inbound(
        dm("see file"),
        bot_user_id=BOT_USER_ID,
        sender_name="Ada",
        conversation_name="",
        names={},
        attachments=[attachment],
        notes=[f"[file 'x{HOSTILE}' was not received: too big]"],
        now=0.0,
    )
    assert inbound.attachments == (attachment,)
    assert inbound.text.startswith("see file\n[file 'x")
    assert_clean(inbound.text)


def test_hostile_unicode_is_neutralised_in_every_text_field() -> None:
    message = mention(f"hi{HOSTILE} <@U2>", thread_ts="1.0")
    inbound = inbound_of(
        message, sender=f"Ada{HOSTILE}", conversation=f"gen{HOSTILE}", names={"U2": f"Bo{HOSTILE}"}
    )
    for value in (inbound.text, inbound.sender_name, inbound.conversation_name):
        assert_clean(value)
    assert inbound.text.startswith("hi") and "@Bo" in inbound.text
    assert inbound.sender_name.startswith("Ada")
    assert inbound.conversation_name.startswith("gen")


def test_hostile_unicode_is_neutralised_in_command_arguments() -> None:
    payload = slash_command(
        "/usage",
        f"7d{HOSTILE}",
        user="U1",
        channel="C1",
        trigger_id="1.1",
        channel_name=f"x{HOSTILE}",
    )
    command = convert.parse_command(payload)
    assert command is not None
    inbound = convert.command_inbound(
        command, sender_name=f"Ada{HOSTILE}", conversation_name="", now=0.0
    )
    for value in (inbound.text, inbound.sender_name, inbound.conversation_name):
        assert_clean(value)
    assert inbound.text.startswith("/usage 7d")


def test_names_fall_back_to_ids_when_slack_gave_none() -> None:
    inbound = inbound_of(mention("hi"), sender="", conversation="")
    assert inbound.sender_name == "U1"
    assert inbound.conversation_name == "C1"


def test_display_names_prefer_the_profiles_display_name() -> None:
    user = {
        "name": "ada",
        "real_name": "Ada L",
        "profile": {"display_name": "", "real_name": "A L"},
    }
    assert convert.display_name({"ok": True, "user": user}) == "A L"
    user["profile"] = {"display_name": "ada!"}
    assert convert.display_name({"ok": True, "user": user}) == "ada!"
    assert convert.display_name({"ok": True, "user": {"name": "ada"}}) == "ada"
    assert convert.display_name({"ok": False}) == ""


def test_channel_names_come_from_conversations_info() -> None:
    assert convert.channel_name({"ok": True, "channel": {"id": "C1", "name": "ops"}}) == "ops"
    assert convert.channel_name({"ok": False, "error": "channel_not_found"}) == ""


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("30", 30.0), ("0.2", 0.2), (None, 1.0), ("soon", 1.0), ("-5", 1.0), ("nan", 1.0)],
)
def test_retry_after_is_read_in_seconds_with_a_safe_default(
    header: str | None, seconds: float
) -> None:
    assert convert.retry_after_s(header) == seconds


def test_replies_render_as_mrkdwn_in_parts_below_the_readable_limit() -> None:
    assert convert.render("**bold** and _it_") == ["*bold* and _it_"]
    parts = convert.render("\n\n".join("word " * 200 for _ in range(20)))
    assert len(parts) > 1 and all(len(p) <= convert.PART_LIMIT for p in parts)
    assert convert.render("   ") == []


def test_capabilities_say_threads_and_commands_but_no_typing() -> None:
    caps = convert.CAPABILITIES
    assert caps.max_text == 40_000 and caps.threads and caps.native_commands
    assert not caps.typing


def test_send_errors_map_onto_the_error_tree() -> None:
    limited = convert.send_error(429, "0.5", "ratelimited")
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 0.5
    assert isinstance(convert.send_error(503, None, ""), PlatformUnavailable)
    refused = convert.send_error(200, None, "not_in_channel")
    assert type(refused) is PlatformError and "not_in_channel" in str(refused)
