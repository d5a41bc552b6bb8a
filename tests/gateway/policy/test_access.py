"""The access policy as plain values: who is admitted, who pairs, who is ignored."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.envelope import Inbound
from gateway.policy.access import (
    CODE_ALPHABET,
    CODE_LENGTH,
    Role,
    Standing,
    Verdict,
    decide,
    loop_guard_trips,
    new_code,
    normal_code,
    shown_code,
)
from gateway.settings import AccessSettings, ChannelAccess, DmPolicy

DM = Inbound(
    channel="telegram",
    event_id="1",
    sender_id="42",
    conversation_id="42",
    text="hi",
    received_at=0.0,
)
GROUP = dataclasses.replace(DM, conversation_id="-100", is_direct=False, mentioned=True)
STRANGER = Standing()
ALLOWED = Standing(user_id="u0000000000000001", allowed=True)
DENIED = Standing(user_id="u0000000000000001", denied=True)


def policy(dm: DmPolicy = "pairing", **kw: object) -> ChannelAccess:
    return ChannelAccess(dm_policy=dm, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dm", "standing", "verdict"),
    [
        ("pairing", STRANGER, Verdict.PAIR),
        ("allowlist", STRANGER, Verdict.REFUSE),
        ("open", STRANGER, Verdict.ADMIT),
        ("disabled", STRANGER, Verdict.REFUSE),
        ("pairing", ALLOWED, Verdict.ADMIT),
        ("allowlist", ALLOWED, Verdict.ADMIT),
        ("disabled", ALLOWED, Verdict.ADMIT),
        ("open", DENIED, Verdict.REFUSE),
        ("pairing", DENIED, Verdict.REFUSE),
    ],
)
def test_a_direct_message_is_decided_by_the_channels_policy(
    dm: DmPolicy, standing: Standing, verdict: Verdict
) -> None:
    assert decide(DM, policy(dm), standing, allow_bots=False).verdict is verdict


def test_an_admin_from_the_configuration_is_admitted_as_admin_even_if_denied() -> None:
    decision = decide(DM, policy("disabled", admins=("42",)), DENIED, allow_bots=False)
    assert decision.verdict is Verdict.ADMIT and decision.role is Role.ADMIN


def test_an_admin_on_one_channel_is_an_ordinary_user_on_another() -> None:
    settings = AccessSettings(telegram=policy("open", admins=("42",)), slack=policy("open"))
    on_slack = dataclasses.replace(DM, channel="slack")
    assert decide(DM, settings.of("telegram"), ALLOWED, allow_bots=False).role is Role.ADMIN
    assert decide(on_slack, settings.of("slack"), ALLOWED, allow_bots=False).role is Role.USER


def test_being_known_or_linked_never_makes_anyone_an_admin() -> None:
    known = Standing(user_id="u0000000000000001", allowed=True)
    assert decide(DM, policy("open"), known, allow_bots=False).role is Role.USER


def test_a_sender_allowed_in_the_configuration_is_admitted_without_an_identity() -> None:
    assert decide(DM, policy("allowlist", allow=("42",)), STRANGER, allow_bots=False).verdict is (
        Verdict.ADMIT
    )


def test_bots_are_ignored_unless_allowed() -> None:
    bot = dataclasses.replace(DM, from_bot=True)
    assert decide(bot, policy("open"), ALLOWED, allow_bots=False).verdict is Verdict.IGNORE
    assert decide(bot, policy("open"), ALLOWED, allow_bots=True).verdict is Verdict.ADMIT


def test_a_bot_configured_as_admin_is_still_ignored_unless_bots_are_allowed() -> None:
    bot = dataclasses.replace(DM, from_bot=True)
    assert decide(bot, policy(admins=("42",)), STRANGER, allow_bots=False).verdict is (
        Verdict.IGNORE
    )


def test_groups_follow_mention_gating_and_never_hand_out_pairing_codes() -> None:
    unaddressed = dataclasses.replace(GROUP, mentioned=False)
    assert decide(unaddressed, policy("open"), ALLOWED, allow_bots=False).verdict is Verdict.IGNORE
    assert decide(GROUP, policy("open"), STRANGER, allow_bots=False).verdict is Verdict.ADMIT
    assert decide(GROUP, policy("pairing"), STRANGER, allow_bots=False).verdict is Verdict.REFUSE
    assert decide(GROUP, policy("pairing"), ALLOWED, allow_bots=False).verdict is Verdict.ADMIT


def test_open_groups_take_every_message_and_disabled_groups_none() -> None:
    unaddressed = dataclasses.replace(GROUP, mentioned=False)
    assert decide(
        unaddressed, policy("open", groups="open"), ALLOWED, allow_bots=False
    ).verdict is (Verdict.ADMIT)
    assert decide(GROUP, policy("open", groups="disabled"), ALLOWED, allow_bots=False).verdict is (
        Verdict.IGNORE
    )


def test_an_unknown_channel_gets_the_strictest_policy() -> None:
    strict = AccessSettings().of("irc")
    assert strict.dm_policy == "disabled" and strict.groups == "disabled"
    odd = dataclasses.replace(DM, channel="irc")
    assert decide(odd, strict, STRANGER, allow_bots=False).verdict is Verdict.REFUSE


def test_the_defaults_pair_strangers_on_platforms_and_open_the_local_console() -> None:
    settings = AccessSettings()
    for channel in ("telegram", "discord", "slack", "matrix", "whatsapp"):
        assert settings.of(channel).dm_policy == "pairing"
        assert settings.of(channel).admins == ()
    assert settings.of("console").dm_policy == "open"


def test_the_loop_guard_trips_only_past_the_rate() -> None:
    assert not loop_guard_trips(Standing(conversation_count=30), 30)
    assert loop_guard_trips(Standing(conversation_count=31), 30)


def test_pairing_codes_use_only_unambiguous_characters() -> None:
    codes = {new_code() for _ in range(2_000)}
    assert len(codes) == 2_000
    for code in codes:
        assert len(code) == CODE_LENGTH
        assert set(code) <= set(CODE_ALPHABET)
    assert not set(CODE_ALPHABET) & set("0O1IL5S2Z8B")


def test_a_typed_code_is_read_in_any_case_with_spaces_or_dashes() -> None:
    code = "ACDE3479"
    assert normal_code(shown_code(code)) == code
    assert normal_code("acde 3479") == code
    assert normal_code("ACDE-347") is None
    assert normal_code("ACDE-34O9") is None
    assert normal_code("") is None
