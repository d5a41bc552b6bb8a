"""Pure Discord conversions: gateway payloads to envelopes, replies to API payloads."""

from __future__ import annotations

import json
from typing import Any

from channels.discord import convert
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

BOT = "900"
HOSTILE = "\u202e\u200b\U000e0041\x1b\ufeff"
ADA = {"id": "1001", "username": "ada", "global_name": "Ada Lovelace"}
NOW = 1_700_000_000.0


def message(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"id": "55", "channel_id": "77", "author": ADA, "content": content, "type": 0, **extra}


def parsed(content: str = "hi", **extra: Any) -> convert.DiscordMessage:
    result = convert.parse_message(message(content, **extra))
    assert result is not None
    return result


def inbound(msg: convert.DiscordMessage, channel: convert.ChannelInfo | None = None) -> Any:
    return convert.message_inbound(msg, bot_id=BOT, channel=channel, now=NOW)


def clean(value: str) -> bool:
    return not any(c in value for c in HOSTILE) and sanitize(value) == value


def test_a_gateway_frame_yields_its_event_and_data_and_other_opcodes_nothing() -> None:
    frame = json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": 3, "d": message()})
    assert convert.parse_frame(frame)[0] == "MESSAGE_CREATE"
    assert convert.parse_frame('{"op": 11}') == ("", {})
    assert convert.parse_frame("not json") == ("", {})


def test_a_direct_message_is_direct_and_addressed_to_the_bot() -> None:
    result = inbound(parsed())
    assert (result.event_id, result.conversation_id, result.sender_id) == ("55", "77", "1001")
    assert result.is_direct and result.mentioned and result.conversation_name == ""
    assert result.sender_name == "Ada Lovelace"


def test_a_guild_mention_drops_the_leading_mention_and_names_the_channel() -> None:
    msg = parsed(
        f"<@!{BOT}> ask <@1002>",
        guild_id="1",
        mentions=[
            {"id": BOT, "username": "stockade", "bot": True},
            {"id": "1002", "username": "bob"},
        ],
        member={"nick": "Countess"},
    )
    result = inbound(msg, convert.ChannelInfo("77", 0, "general"))
    assert result.text == "ask @bob"
    assert result.mentioned and not result.is_direct
    assert result.conversation_name == "general" and result.sender_name == "Countess"


def test_a_reply_to_the_bot_counts_as_a_mention_and_other_guild_messages_do_not() -> None:
    replying = parsed("yes", guild_id="1", type=19, referenced_message={"author": {"id": BOT}})
    assert convert.is_mentioned(replying, BOT) and convert.is_for_us(replying, BOT)
    assert not inbound(parsed("chatter", guild_id="1")).mentioned


def test_a_thread_is_its_own_conversation_and_thread() -> None:
    result = inbound(parsed(guild_id="1"), convert.ChannelInfo("77", 11, "a thread"))
    assert result.conversation_id == result.thread_id == "77"


def test_our_own_and_system_messages_are_ignored() -> None:
    assert not convert.is_for_us(parsed(author={"id": BOT, "bot": True}), BOT)
    assert not convert.is_for_us(parsed(author={"id": BOT}), BOT)
    # An interaction follow-up is posted by our application's webhook, as ourselves.
    assert not convert.is_for_us(parsed(author={"id": BOT, "bot": True}, webhook_id=BOT), BOT)
    assert not convert.is_for_us(parsed(type=7), BOT)  # a member joined
    assert not convert.is_for_us(parsed(author={"id": "643945264868098049", "system": True}), BOT)
    assert convert.is_for_us(parsed(), BOT)


def test_another_bots_message_is_kept_and_marked_from_bot() -> None:
    other = parsed("beep", author={"id": "5", "username": "otherbot", "bot": True})
    assert convert.is_for_us(other, BOT)
    env = inbound(other)
    assert env.from_bot
    assert (env.sender_id, env.sender_name, env.text) == ("5", "otherbot", "beep")


def test_a_webhook_message_is_kept_and_marked_from_bot() -> None:
    hook = parsed(
        "deployed", author={"id": "8", "username": "Deploys", "bot": True}, webhook_id="8"
    )
    assert convert.is_for_us(hook, BOT)
    assert inbound(hook).from_bot
    # The webhook flag alone marks it, whatever the stand-in author says.
    assert inbound(parsed("x", author={"id": "8", "username": "Deploys"}, webhook_id="8")).from_bot


def test_a_persons_message_is_not_from_a_bot() -> None:
    assert not inbound(parsed()).from_bot


def test_a_bots_message_is_dropped_while_our_own_id_is_unknown() -> None:
    assert not convert.is_for_us(parsed(author={"id": "5", "bot": True}), "")
    assert not convert.is_for_us(parsed(webhook_id="8"), "")
    assert convert.is_for_us(parsed(), "")


def test_a_bots_system_message_is_still_ignored() -> None:
    assert not convert.is_for_us(parsed(author={"id": "5", "bot": True}, type=7), BOT)


def test_a_message_without_ids_is_not_parsed() -> None:
    assert convert.parse_message({"content": "x"}) is None


def test_attachments_become_file_refs_and_the_cdn_is_derived_from_the_api_base() -> None:
    attachment = {
        "filename": "a.png",
        "url": "https://cdn.discordapp.com/attachments/1/a.png",
        "content_type": "image/png",
        "size": 9,
    }
    [ref] = convert.file_refs(parsed(attachments=[attachment, {"filename": "no url"}]))
    assert (ref.kind, ref.name, ref.declared_size) == ("image", "a.png", 9)
    assert (
        convert.cdn_prefixes("https://discord.com/api/v10")[0]
        == "https://cdn.discordapp.com/attachments/"
    )
    assert convert.cdn_prefixes("http://127.0.0.1:9/api/v10") == (
        "http://127.0.0.1:9/attachments/",
    )


def test_hostile_unicode_is_neutralised_in_text_names_and_channel_names() -> None:
    msg = parsed(
        f"te{HOSTILE}xt",
        guild_id="1",
        author={"id": "1001", "username": "ada", "global_name": f"Ada{HOSTILE}"},
    )
    result = inbound(msg, convert.ChannelInfo("77", 0, f"gen{HOSTILE}eral"))
    assert all(clean(v) for v in (result.text, result.sender_name, result.conversation_name))
    assert (result.text, result.conversation_name) == ("text", "general")


def test_a_slash_command_becomes_its_command_line_with_sanitized_args() -> None:
    data = {
        "id": "66",
        "type": 2,
        "token": "tok",
        "channel_id": "77",
        "guild_id": "1",
        "member": {"user": ADA, "nick": None},
        "data": {
            "name": "usage",
            "options": [{"name": "args", "type": 3, "value": f"7{HOSTILE}d"}],
        },
    }
    interaction = convert.parse_interaction(data)
    assert interaction is not None and interaction.token == "tok"
    result = convert.command_inbound(interaction, channel=None, now=NOW)
    assert (result.text, result.event_id, result.sender_name) == ("/usage 7d", "66", "Ada Lovelace")
    assert convert.parse_interaction({**data, "type": 3}) is None


def test_commands_are_offered_with_an_optional_args_option_and_bad_names_left_out() -> None:
    payload = convert.command_payload((("help", "list"), ("Bad Name", "x"), ("usage", "u" * 200)))
    assert [c["name"] for c in payload] == ["help", "usage"]
    assert len(str(payload[1]["description"])) == 100
    assert payload[0]["options"] == [
        {"type": 3, "name": "args", "description": "arguments", "required": False}
    ]


def test_a_reply_keeps_its_markdown_and_its_nonce_is_stable_and_short() -> None:
    assert convert.render("**bold**") == ["**bold**"]
    assert all(len(p) <= 2_000 for p in convert.render("word " * 1_000))
    assert convert.nonce("o:1", 0) == convert.nonce("o:1", 0) != convert.nonce("o:1", 1)
    assert len(convert.nonce("o:1", 0)) <= 25
    payload = convert.message_payload("x", "n", "55")
    assert payload["enforce_nonce"] is True
    assert payload["message_reference"] == {"message_id": "55", "fail_if_not_exists": False}
    assert "message_reference" not in convert.message_payload("x", "n", "")


def test_send_errors_map_onto_the_error_tree() -> None:
    limited = convert.send_error(429, {"retry_after": 1.5}, "2")
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 1.5
    assert isinstance(convert.send_error(429, {}, "2"), RateLimited)
    assert isinstance(convert.send_error(502, {}, None), PlatformUnavailable)
    refused = convert.send_error(400, {"code": 50035, "message": "Invalid Form Body"}, None)
    assert type(refused) is PlatformError and "50035" in str(refused)
