"""Command parsing is pure and strict; the registry answers unknown and malformed commands."""

from __future__ import annotations

import pytest

from gateway.commands import CommandContext, Invocation, default_registry, parse
from gateway.envelope import Inbound


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/help", Invocation("help", ())),
        ("  /HELP  ", Invocation("help", ())),
        ("/whoami@stockade_bot", Invocation("whoami", ())),
        ("/budget alice daily 5", Invocation("budget", ("alice", "daily", "5"))),
        ("hello", None),
        ("/", None),
        ("/ help", None),
        ("//help", None),
        ("/hélp", None),
        ("/1abc", None),
        ("path /help", None),
    ],
)
def test_parse_recognises_only_well_formed_commands(text: str, expected: Invocation | None) -> None:
    assert parse(text) == expected


def test_parse_bounds_the_number_of_arguments() -> None:
    parsed = parse("/x " + " ".join(["a"] * 1000))
    assert parsed is not None
    assert len(parsed.args) == 16


def test_another_prefix_can_be_configured() -> None:
    assert parse("!help", "!") == Invocation("help", ())
    assert parse("/help", "!") is None


def context() -> CommandContext:
    inbound = Inbound(
        channel="console",
        event_id="s-1",
        sender_id="ada",
        sender_name="Ada",
        conversation_id="s",
        text="",
        received_at=0.0,
    )
    return CommandContext(inbound=inbound, user_id="u1", registry=default_registry())


async def test_help_lists_every_command_for_everyone() -> None:
    registry = default_registry()
    answer = await registry.run(Invocation("help", ()), context())
    assert "/help" in answer and "/whoami" in answer


async def test_whoami_names_the_internal_and_platform_identity() -> None:
    answer = await default_registry().run(Invocation("whoami", ()), context())
    assert "u1" in answer and "ada" in answer and "console" in answer


async def test_unknown_command_points_to_help() -> None:
    answer = await default_registry().run(Invocation("launch", ()), context())
    assert "Unknown command /launch" in answer and "/help" in answer


async def test_bad_arguments_get_the_usage_line() -> None:
    answer = await default_registry().run(Invocation("whoami", ("extra",)), context())
    assert "Usage: /whoami" in answer


def test_registering_a_name_twice_is_refused() -> None:
    registry = default_registry()
    command = registry.get("help")
    assert command is not None
    with pytest.raises(ValueError, match="twice"):
        registry.add(command)
