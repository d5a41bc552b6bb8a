"""Pure Matrix conversions: parsing events, mentions, invites, reply contents, errors."""

from __future__ import annotations

import json
from typing import Any

from channels.matrix import convert
from gateway.errors import PlatformError, PlatformUnavailable, RateLimited
from gateway.sanitize import sanitize

HOSTILE = "\u202e\u200b\U000e0041\x1b\x07\ufeff"
BOT = convert.Bot("@bot:localhost", "Stocky")
HS = "http://127.0.0.1:8008"


def event(content: dict[str, Any], sender: str = "@alice:localhost") -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": "$ev1",
        "sender": sender,
        "origin_server_ts": 1_700_000_000_000,
        "content": content,
    }


def test_a_text_message_is_parsed_with_its_thread_and_mentions() -> None:
    message = convert.parse_message(
        event(
            {
                "msgtype": "m.text",
                "body": "hi",
                "m.mentions": {"user_ids": ["@bot:localhost", 7]},
                "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"},
            }
        )
    )
    assert message is not None
    assert (message.body, message.thread_root, message.mentions) == (
        "hi",
        "$root",
        ("@bot:localhost",),
    )


def test_edits_state_events_and_malformed_events_are_not_messages() -> None:
    edit = {"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.replace"}}
    assert convert.parse_message(event(edit)) is None
    assert convert.parse_message({**event({"msgtype": "m.text"}), "type": "m.room.name"}) is None
    assert convert.parse_message(event({"msgtype": "m.location", "body": "x"})) is None
    assert convert.parse_message({"type": "m.room.message", "content": "nope"}) is None


def test_mentions_count_by_id_display_name_or_reply_to_the_bot() -> None:
    def parsed(content: dict[str, Any]) -> convert.MatrixMessage:
        message = convert.parse_message(event({"msgtype": "m.text", **content}))
        assert message is not None
        return message

    assert convert.is_mentioned(parsed({"body": "hey STOCKY"}), BOT, ())
    assert convert.is_mentioned(parsed({"body": "@bot:localhost hi"}), BOT, ())
    reply = parsed({"body": "ok", "m.relates_to": {"m.in_reply_to": {"event_id": "$mine"}}})
    assert convert.is_mentioned(reply, BOT, {"$mine"})
    assert not convert.is_mentioned(reply, BOT, {"$other"})
    assert not convert.is_mentioned(parsed({"body": "plain"}), BOT, ())


def test_hostile_unicode_is_sanitized_in_every_field() -> None:
    message = convert.parse_message(event({"msgtype": "m.text", "body": f"he{HOSTILE}llo"}))
    assert message is not None
    inbound = convert.to_inbound(
        message,
        convert.Room("!r:localhost", f"Te{HOSTILE}am", 3),
        sender_name=f"Al{HOSTILE}ice",
        mentioned=True,
        received_at=1.0,
    )
    for value in (inbound.text, inbound.sender_name, inbound.conversation_name):
        assert sanitize(value) == value and not any(c in value for c in HOSTILE)
    assert (inbound.text, inbound.conversation_name) == ("hello", "Team")
    assert not inbound.is_direct


def test_a_file_resolves_to_the_authenticated_media_url_and_keeps_its_name() -> None:
    content = {
        "msgtype": "m.file",
        "body": f"re{HOSTILE}port.txt",
        "url": "mxc://localhost/AbC_12-x",
        "info": {"mimetype": "text/plain", "size": 12},
    }
    message = convert.parse_message(event(content))
    assert message is not None
    ref = convert.file_ref(message, HS + "/")
    assert ref is not None
    assert ref.url == f"{HS}/_matrix/client/v1/media/download/localhost/AbC_12-x"
    assert ref.name == f"re{HOSTILE}port.txt" and ref.declared_size == 12
    inbound = convert.to_inbound(
        message, convert.Room("!r", "", 2), sender_name="", mentioned=False, received_at=0
    )
    assert inbound.text == ""


def test_a_malformed_mxc_uri_is_never_resolved() -> None:
    for mxc in ("mxc://evil.org/../../x", "https://evil.org/x", "mxc://a/b/c", "mxc://a/"):
        assert convert.media_url(HS, mxc) is None


def test_the_inviter_is_read_from_the_invite_state() -> None:
    state = [
        {"type": "m.room.name", "state_key": "", "sender": "@x:l", "content": {}},
        {
            "type": "m.room.member",
            "state_key": "@bot:localhost",
            "sender": "@alice:localhost",
            "content": {"membership": "invite"},
        },
    ]
    assert convert.inviter(state, "@bot:localhost") == "@alice:localhost"
    assert convert.inviter(state[:1], "@bot:localhost") == ""
    assert convert.invite_allowed("@alice:localhost", ("@alice:localhost",))
    assert not convert.invite_allowed("", ("",))


def test_a_reply_is_rendered_threaded_and_split_into_parts_under_the_event_limit() -> None:
    [only] = convert.message_contents("**hi** & <you>", "$ev", "")
    assert only["body"] == "*hi* & <you>"
    assert only["formatted_body"] == "<b>hi</b> &amp; &lt;you&gt;"
    assert only["m.relates_to"] == {"m.in_reply_to": {"event_id": "$ev"}}
    parts = convert.message_contents("&" * 40_000, "$ev", "$root")
    assert len(parts) == 3
    for part in parts:
        assert len(json.dumps(part).encode()) <= 65_536
        relation = part["m.relates_to"]
        assert isinstance(relation, dict) and relation["rel_type"] == "m.thread"


def test_transaction_ids_are_stable_per_reply_part() -> None:
    assert convert.transaction_id("o1", 0) == convert.transaction_id("o1", 0)
    assert convert.transaction_id("o1", 0) != convert.transaction_id("o1", 1)


def test_homeserver_errors_map_onto_the_error_tree() -> None:
    limited = convert.send_error("M_LIMIT_EXCEEDED", "slow", 1500, 429)
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 1.5
    assert isinstance(convert.send_error("M_UNKNOWN", "boom", None, 502), PlatformUnavailable)
    refused = convert.send_error("M_FORBIDDEN", "no", None, 403)
    assert type(refused) is PlatformError


def test_a_message_is_never_marked_from_bot_for_matrix_has_no_bot_flag() -> None:
    message = convert.parse_message(event({"msgtype": "m.text", "body": "hi"}, "@otherbot:l"))
    assert message is not None
    inbound = convert.to_inbound(
        message, convert.Room("!r", "", 3), sender_name="", mentioned=False, received_at=0
    )
    assert not inbound.from_bot
