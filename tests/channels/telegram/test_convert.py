"""Telegram payloads to envelopes, as pure functions on plain values."""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import pytest

from channels.telegram import convert
from channels.telegram.convert import BotIdentity, WireError, parse_update, to_inbound
from gateway.envelope import Inbound
from gateway.sanitize import sanitize
from tests.fakes import telegram as tg

BOT: Final = BotIdentity(id=tg.BOT_ID, username=tg.BOT_USERNAME)
NOW: Final = 1_700_000_000.0
HOSTILE: Final = "a\u202eb\u200bc\U000e0041d\ud800e"
BAD: Final = ("\u202e", "\u200b", "\U000e0041", "\ud800")


def message(text: str = "hi", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "message_id": 7,
        "date": 1,
        "chat": {"id": 1001, "type": "private", "first_name": "Ada"},
        "from": tg.user(),
    }
    if text:
        data["text"] = text
    data.update(fields)
    return data


def group(text: str, **fields: Any) -> dict[str, Any]:
    return message(text, chat=tg.group_chat(title="Engines"), **fields)


def inbound(msg: dict[str, Any], kind: str = "message", update_id: int = 42) -> Inbound | None:
    return to_inbound(parse_update({"update_id": update_id, kind: msg}), BOT, NOW)


def must(msg: dict[str, Any]) -> Inbound:
    result = inbound(msg)
    assert result is not None
    return result


def test_a_private_message_is_a_direct_envelope_keyed_by_update_id() -> None:
    env = must(message("hello"))
    assert (env.channel, env.event_id, env.dedupe_key) == ("telegram", "42", "telegram:42")
    assert (env.sender_id, env.conversation_id, env.text) == ("1001", "1001", "hello")
    assert env.sender_name == "Ada Lovelace"
    assert env.is_direct and env.conversation_name == "" and env.thread_id == ""
    assert env.received_at == NOW
    assert env.extras == {"message_id": "7"}


def test_sender_name_falls_back_to_the_username() -> None:
    env = must(
        message("x", **{"from": {"id": 5, "is_bot": False, "first_name": "", "username": "bab"}})
    )
    assert env.sender_name == "bab"


def test_a_group_message_carries_the_title_and_is_not_direct() -> None:
    env = must(group("hello all"))
    assert not env.is_direct
    assert env.conversation_id == str(-1001234567890)
    assert env.conversation_name == "Engines"
    assert not env.mentioned


def test_an_at_mention_of_the_bot_marks_the_message_mentioned() -> None:
    text = f"hey @{tg.BOT_USERNAME.upper()} look"
    assert must(
        group(text, entities=tg.mention_entities(text, f"@{tg.BOT_USERNAME.upper()}"))
    ).mentioned


def test_a_mention_of_another_user_is_not_a_mention_of_the_bot() -> None:
    text = "hey @someone_else"
    assert not must(group(text, entities=tg.mention_entities(text, "@someone_else"))).mentioned


def test_mention_offsets_count_utf16_units_before_the_handle() -> None:
    text = f"😀😀 é @{tg.BOT_USERNAME}"
    entities = tg.mention_entities(text)
    assert entities[0]["offset"] == 7  # two surrogate pairs, a space, é, a space
    assert must(group(text, entities=entities)).mentioned


def test_a_text_mention_of_the_bot_counts() -> None:
    entity = {"type": "text_mention", "offset": 0, "length": 3, "user": tg.bot_user()}
    assert must(group("Bot, hi", entities=[entity])).mentioned


def test_a_reply_to_one_of_the_bots_messages_is_a_mention() -> None:
    replied = message("earlier answer", **{"from": tg.bot_user()})
    assert must(group("and then?", reply_to_message=replied)).mentioned


def test_a_reply_to_someone_else_is_not_a_mention() -> None:
    assert not must(group("and then?", reply_to_message=message("earlier"))).mentioned


def test_a_command_addressed_to_the_bot_loses_its_suffix_and_counts_as_mention() -> None:
    env = must(group(f"/usage@{tg.BOT_USERNAME} 7d"))
    assert env.text == "/usage 7d"
    assert env.mentioned


def test_a_command_addressed_to_another_bot_is_left_alone() -> None:
    env = must(group("/usage@other_bot 7d"))
    assert env.text == "/usage@other_bot 7d"
    assert not env.mentioned


def test_a_plain_command_passes_unchanged() -> None:
    assert must(message("/help")).text == "/help"


def test_a_forum_topic_message_carries_its_thread() -> None:
    env = must(group("in a topic", message_thread_id=12, is_topic_message=True))
    assert env.thread_id == "12"


def test_a_thread_id_outside_a_topic_is_not_a_thread() -> None:
    # Telegram also sets message_thread_id on replies in ordinary groups.
    assert must(group("reply", message_thread_id=12)).thread_id == ""


def test_a_caption_is_the_text_of_a_media_message() -> None:
    msg = message("", caption="see this", document=tg.document("d1", "notes.txt"))
    assert must(msg).text == "see this"


def test_a_caption_mention_uses_the_caption_entities() -> None:
    caption = f"@{tg.BOT_USERNAME} look"
    msg = group(
        "",
        caption=caption,
        caption_entities=tg.mention_entities(caption),
        photo=tg.photo("p1"),
    )
    assert must(msg).mentioned


def files(msg: dict[str, Any]) -> tuple[convert.FileInfo, ...]:
    parsed = parse_update({"update_id": 1, "message": msg}).message
    assert parsed is not None
    return parsed.files


def test_a_photo_is_announced_by_its_largest_size() -> None:
    (info,) = files(message("", photo=list(reversed(tg.photo("p1", 900)))))
    assert (info.kind, info.file_id, info.size) == ("image", "p1", 900)
    assert info.name == "photo.jpg" and info.content_type == "image/jpeg"


def test_a_voice_note_is_a_voice_attachment() -> None:
    (info,) = files(message("", voice=tg.voice("v1", 30)))
    assert (info.kind, info.content_type, info.size) == ("voice", "audio/ogg", 30)


def test_a_document_keeps_its_name_and_type() -> None:
    (info,) = files(message("", document=tg.document("d1", "report.pdf", "application/pdf", 5)))
    assert (info.kind, info.name, info.content_type) == ("file", "report.pdf", "application/pdf")


def test_audio_and_video_are_files() -> None:
    audio = {"file_id": "a1", "file_unique_id": "ua", "duration": 1}
    video = {"file_id": "v1", "file_unique_id": "uv", "duration": 1, "width": 1, "height": 1}
    assert [i.kind for i in files(message("", audio=audio, video=video))] == ["file", "file"]


def test_a_file_name_cannot_climb_out_of_the_workspace() -> None:
    (info,) = files(message("", document=tg.document("d1", "../../etc/passwd")))
    assert info.name == "passwd"


def test_a_message_with_only_a_file_is_kept() -> None:
    assert must(message("", document=tg.document("d1", "a.txt"))).text == ""


def test_file_ref_carries_what_the_policy_checks() -> None:
    (info,) = files(message("", document=tg.document("d1", "a.txt", "text/plain", 12)))
    ref = convert.file_ref(info, "http://127.0.0.1:1/file/botT/documents/a.txt")
    assert (ref.kind, ref.name, ref.content_type, ref.declared_size) == (
        "file",
        "a.txt",
        "text/plain",
        12,
    )


def test_with_files_adds_attachments_and_notes() -> None:
    env = convert.with_files(must(message("hi")), (), ["[file 'x' was not received: too big]"])
    assert env.text == "hi\n[file 'x' was not received: too big]"


@pytest.mark.parametrize("kind", ["edited_message", "channel_post", "edited_channel_post"])
def test_updates_other_than_new_messages_are_ignored(kind: str) -> None:
    assert inbound(message("changed"), kind=kind) is None


def test_a_message_from_another_bot_is_kept_and_marked_from_bot() -> None:
    other = tg.user(9, "Other", "", "otherbot", is_bot=True)
    env = must(group("beep", **{"from": other}))
    assert env.from_bot
    assert (env.sender_id, env.sender_name, env.text) == ("9", "Other", "beep")


def test_a_message_from_a_person_is_not_from_a_bot() -> None:
    assert not must(message("hello")).from_bot


def test_the_bots_own_message_is_ignored() -> None:
    assert inbound(group("my own answer", **{"from": tg.bot_user()})) is None


def test_the_bots_own_id_is_ignored_even_without_the_bot_flag() -> None:
    own = tg.user(tg.BOT_ID, "Stockade", "", tg.BOT_USERNAME, is_bot=False)
    assert inbound(message("echo", **{"from": own})) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"new_chat_members": [tg.user(5)]},
        {"left_chat_member": tg.user(5)},
        {"pinned_message": message("old")},
        {"new_chat_title": "Renamed"},
        {"sticker": {"file_id": "s", "file_unique_id": "s", "type": "regular"}},
    ],
)
def test_service_messages_are_ignored(fields: dict[str, Any]) -> None:
    assert inbound(group("", **fields)) is None


def test_a_message_without_a_sender_is_ignored() -> None:
    msg = group("anonymous")
    del msg["from"]
    assert inbound(msg) is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "text",
        {},
        {"update_id": "1"},
        {"update_id": True},
        {"update_id": 1, "message": "x"},
        {"update_id": 1, "message": {"message_id": 1, "chat": {"id": "x"}}},
        {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "chat": {"id": 1, "type": "private"},
                "text": "x",
                "entities": [1],
            },
        },
    ],
)
def test_what_is_not_an_update_is_a_wire_error(payload: object) -> None:
    with pytest.raises(WireError):
        parse_update(payload)


def test_an_unknown_update_kind_parses_to_nothing_to_do() -> None:
    update = parse_update({"update_id": 3, "poll": {"id": "1"}})
    assert update.kind == "" and update.message is None
    assert to_inbound(update, BOT, NOW) is None


def test_hostile_unicode_is_neutralised_in_every_field() -> None:
    sender = tg.user(1001, HOSTILE, HOSTILE, "")
    chat = tg.group_chat(title=HOSTILE)
    msg = message(
        f"/usage@{tg.BOT_USERNAME} {HOSTILE}",
        chat=chat,
        **{"from": sender},
        document=tg.document("d1", f"{HOSTILE}.txt"),
    )
    env = must(msg)
    assert env.text == sanitize(f"/usage {HOSTILE}")
    assert env.sender_name == sanitize(f"{HOSTILE} {HOSTILE}")
    assert env.conversation_name == sanitize(HOSTILE)
    (info,) = files(msg)
    fields = [env.text, env.sender_name, env.conversation_name, info.name]
    for value in fields:
        for bad in BAD:
            assert bad not in value
        value.encode("utf-8")  # no lone surrogate survives


def test_hostile_caption_is_neutralised() -> None:
    env = must(message("", caption=HOSTILE, photo=tg.photo("p")))
    assert env.text == sanitize(HOSTILE)
    assert not any(bad in env.text for bad in BAD)


def test_benign_text_in_any_script_passes_byte_for_byte() -> None:
    text = "Grüße, 你好, مرحبا, नमस्ते, 👩‍💻 🇩🇪"
    assert must(message(text)).text == text


def test_the_envelope_is_frozen() -> None:
    env = must(message("x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.text = "y"  # type: ignore[misc]


def test_html_to_text_is_what_telegram_shows() -> None:
    assert convert.html_to_text('<b>a &amp; b</b> <a href="x">link</a>') == "a & b link"


def test_parse_id_names_the_field_not_the_value() -> None:
    assert convert.parse_id("-100123", "chat id") == -100123
    with pytest.raises(ValueError, match="chat id is not a Telegram id"):
        convert.parse_id("secret-ish", "chat id")


def test_the_capabilities_match_telegram() -> None:
    caps = convert.CAPABILITIES
    assert (caps.max_text, caps.threads, caps.native_commands, caps.typing) == (
        4096,
        True,
        True,
        True,
    )


def test_the_fake_counts_the_limit_on_parsed_text() -> None:
    assert tg.utf16_units(tg.parse_html("<b>" + "a" * 4096 + "</b>")) == 4096
    assert tg.utf16_units(tg.parse_html("😀" * 2)) == 4
    assert tg.parse_html("&lt;b&gt; &#65;") == "<b> A"
    for broken in ("<b>open", "<b><i>x</b></i>", "<br>", "a < b", "&nbsp;"):
        with pytest.raises(tg.CantParse):
            tg.parse_html(broken)
