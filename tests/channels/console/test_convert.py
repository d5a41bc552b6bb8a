"""Console conversion: lines become sanitized envelopes; replies render for a terminal."""

from __future__ import annotations

from channels.console import convert
from gateway.envelope import Outbound


def test_a_line_becomes_an_inbound_for_this_session() -> None:
    inbound = convert.line_to_inbound("hello\n", user="ada", session="s1", seq=3, now=5.0)
    assert inbound.text == "hello"
    assert inbound.event_id == "s1-3"
    assert inbound.conversation_id == "s1"
    assert inbound.sender_id == "ada"
    assert inbound.is_direct


def test_hostile_characters_are_removed_at_the_edge() -> None:
    inbound = convert.line_to_inbound(
        "hi\x1b[31m\u202e\U000e0041\n", user="a\u200bda", session="s", seq=1, now=0.0
    )
    assert "\x1b" not in inbound.text and "\u202e" not in inbound.text
    assert "\U000e0041" not in inbound.text
    assert inbound.sender_id == "ada"


def test_an_oversized_line_is_bounded() -> None:
    inbound = convert.line_to_inbound("x" * 100_000, user="a", session="s", seq=1, now=0.0)
    assert len(inbound.text) == convert.MAX_LINE


def test_replies_render_with_a_prefix_on_every_line() -> None:
    reply = Outbound(channel="console", conversation_id="s", text="a\nb", outbound_id="o")
    assert convert.render(reply) == "« a\n« b"
    assert convert.is_for(reply, "s") and not convert.is_for(reply, "t")
