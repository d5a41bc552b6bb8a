"""The budget's pure arithmetic: prices, rounding, the clamp rule, windows, the prompt bound."""

from __future__ import annotations

import importlib.util
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.policy.budget import (
    IMAGE_TOKENS,
    MAX_CALL_OUTPUT_PICO,
    MAX_PRICE_PICO,
    Period,
    Scope,
    TokenPrice,
    Usage,
    WindowUse,
    affordable_max_tokens,
    bounded_max_tokens,
    caps_nano,
    cost_nano,
    exceeded_sentence,
    format_reset,
    format_usd,
    input_cost_nano,
    output_cost_nano,
    prompt_token_bound,
    render_usage,
    render_warning,
    usd_to_nano,
    warn_threshold,
    windows_at,
    windows_of_day,
    worst_case,
)
from gateway.settings import BudgetSettings, Caps, Price
from tests.gateway.policy._budget import PRICE
from tests.gateway.sanitize_corpus import BENIGN


def at(text: str) -> float:
    """Epoch seconds of an ISO instant with its offset."""
    return datetime.fromisoformat(text).timestamp()


# -- prices and money ----------------------------------------------------------------------


def test_prices_from_dollars_per_token_drop_float_noise_and_round_up() -> None:
    assert TokenPrice.from_usd(0.15 / 1e6, 0.6 / 1e6) == TokenPrice(150_000, 600_000)
    assert TokenPrice.from_usd(1.5e-07, 0) == TokenPrice(150_000, 0)
    # A price finer than a pico-dollar is rounded up, never down.
    assert TokenPrice.from_usd(1.5000000000000002e-07, 1e-13) == TokenPrice(150_001, 1)


def test_prices_from_settings_are_per_million_tokens() -> None:
    price = TokenPrice.from_settings(Price(input_usd_per_mtok=0.0375, output_usd_per_mtok=15))
    assert price == TokenPrice(37_500, 15_000_000)
    top = TokenPrice.from_settings(Price(input_usd_per_mtok=100_000, output_usd_per_mtok=0))
    assert top.input_pico == MAX_PRICE_PICO


def test_a_price_must_be_a_whole_non_negative_number_of_pico_dollars() -> None:
    with pytest.raises(ValueError, match="pico"):
        TokenPrice(-1, 0)
    with pytest.raises(ValueError, match="pico"):
        TokenPrice(0, MAX_PRICE_PICO + 1)
    with pytest.raises(TypeError):
        TokenPrice(1.5, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        TokenPrice.from_usd(float("nan"), 0)


def test_costs_round_up_to_the_next_nano_dollar() -> None:
    cheap = TokenPrice(37_500, 37_500)  # 37.5 nano-dollars per token
    assert input_cost_nano(cheap, 1) == 38
    assert output_cost_nano(cheap, 2) == 75
    assert cost_nano(cheap, 1, 2) == 113  # 112.5 → 113, rounded once
    assert worst_case(cheap, 1, 2) == 38 + 75  # each part rounded: never below cost
    assert cost_nano(cheap, 0, 0) == 0
    assert cost_nano(PRICE, 1_000, 500) == 1_000_000 + 2_000_000


@given(
    st.integers(0, MAX_PRICE_PICO),
    st.integers(0, MAX_PRICE_PICO),
    st.integers(0, 10_000_000),
    st.integers(1, 200_000),
    st.data(),
)
def test_worst_case_bounds_every_real_cost(
    input_pico: int, output_pico: int, prompt: int, max_tokens: int, data: st.DataObject
) -> None:
    price = TokenPrice(input_pico, output_pico)
    real_prompt = data.draw(st.integers(0, prompt))
    completion = data.draw(st.integers(0, max_tokens))
    assert cost_nano(price, real_prompt, completion) <= worst_case(price, prompt, max_tokens)
    assert worst_case(price, prompt, max_tokens) < 2**53


def test_caps_round_down_and_have_an_upper_bound() -> None:
    assert usd_to_nano(1.0) == 1_000_000_000
    assert usd_to_nano(0.1) == 100_000_000
    assert usd_to_nano(20) == 20_000_000_000
    assert usd_to_nano(1e-10) == 0
    with pytest.raises(ValueError, match="at most"):
        usd_to_nano(1_000_001)


def test_overrides_replace_the_user_caps_and_none_means_no_cap() -> None:
    settings = BudgetSettings(
        user=Caps(daily_usd=1, monthly_usd=20),
        overrides={"vip": Caps(monthly_usd=50)},
        total=Caps(monthly_usd=200),
    )
    assert caps_nano(settings, "anyone") == (10**9, 20 * 10**9, None, 200 * 10**9)
    assert caps_nano(settings, "vip") == (None, 50 * 10**9, None, 200 * 10**9)


def test_warning_threshold_is_a_fraction_of_the_cap_rounded_up() -> None:
    assert warn_threshold(10**9, 0.8) == 800_000_000
    assert warn_threshold(3, 0.5) == 2
    assert warn_threshold(None, 0.8) is None
    assert warn_threshold(0, 0.8) is None


# -- the clamp rule ------------------------------------------------------------------------


def test_clamp_keeps_max_tokens_when_the_money_left_pays_for_them() -> None:
    assert affordable_max_tokens(PRICE, 1_000, 500, None) == 500
    assert affordable_max_tokens(PRICE, 1_000, 500, worst_case(PRICE, 1_000, 500)) == 500


def test_clamp_lowers_max_tokens_to_what_the_money_left_pays_for() -> None:
    left = input_cost_nano(PRICE, 1_000) + 4_000 * 123 + 3_999
    assert affordable_max_tokens(PRICE, 1_000, 500, left) == 123


def test_clamp_refuses_when_the_prompt_and_one_token_cannot_be_paid() -> None:
    prompt = input_cost_nano(PRICE, 1_000)
    assert affordable_max_tokens(PRICE, 1_000, 500, prompt + 3_999) == 0
    assert affordable_max_tokens(PRICE, 1_000, 500, prompt + 4_000) == 1
    assert affordable_max_tokens(PRICE, 0, 500, 0) == 0
    assert affordable_max_tokens(PRICE, 0, 500, -5) == 0
    free = TokenPrice(0, 0)
    assert affordable_max_tokens(free, 1_000, 500, 1) == 500
    assert affordable_max_tokens(free, 1_000, 500, 0) == 0


@given(
    st.integers(0, MAX_PRICE_PICO),
    st.integers(1, MAX_PRICE_PICO),
    st.integers(0, 100_000),
    st.integers(1, 200_000),
    st.integers(-(10**9), 10**15),
)
def test_a_clamped_call_never_costs_more_than_the_money_left(
    input_pico: int, output_pico: int, prompt: int, max_tokens: int, left: int
) -> None:
    price = TokenPrice(input_pico, output_pico)
    n = affordable_max_tokens(price, prompt, max_tokens, left)
    assert 0 <= n <= max_tokens
    if n:
        assert worst_case(price, prompt, n) <= left
        if n < bounded_max_tokens(price, max_tokens):
            assert worst_case(price, prompt, n + 1) > left  # the most it can pay for


def test_one_call_output_is_bounded_for_the_lua_arithmetic() -> None:
    dear = TokenPrice(0, MAX_PRICE_PICO)
    assert bounded_max_tokens(dear, 10**9) == MAX_CALL_OUTPUT_PICO // MAX_PRICE_PICO
    assert bounded_max_tokens(TokenPrice(0, 0), 10**9) == 10**9


# -- windows -------------------------------------------------------------------------------


def test_windows_in_utc() -> None:
    windows = windows_at(at("2026-11-22T15:00:00+00:00"), "UTC")
    assert (windows.day, windows.month) == ("2026-11-22", "2026-11")
    assert windows.day_resets_at == at("2026-11-23T00:00:00+00:00")
    assert windows.month_resets_at == at("2026-12-01T00:00:00+00:00")
    assert windows.key(Period.DAY) == "2026-11-22"
    assert windows.resets_at(Period.MONTH) == windows.month_resets_at


def test_windows_follow_the_configured_zone_not_utc() -> None:
    # 05:00 UTC on the 23rd is still the evening of the 22nd in Los Angeles.
    windows = windows_at(at("2026-11-23T05:00:00+00:00"), "America/Los_Angeles")
    assert windows.day == "2026-11-22"
    assert windows.day_resets_at == at("2026-11-23T00:00:00-08:00")
    tokyo = windows_at(at("2026-11-22T15:00:00+00:00"), "Asia/Tokyo")
    assert tokyo.day == "2026-11-23"


def test_windows_change_exactly_at_local_midnight() -> None:
    midnight = at("2026-11-23T00:00:00+09:00")
    assert windows_at(midnight - 0.001, "Asia/Tokyo").day == "2026-11-22"
    assert windows_at(midnight, "Asia/Tokyo").day == "2026-11-23"


def test_month_and_year_ends() -> None:
    end = at("2026-12-01T00:00:00+01:00")
    november = windows_at(end - 1, "Europe/Berlin")
    assert (november.day, november.month) == ("2026-11-30", "2026-11")
    assert november.month_resets_at == end == november.day_resets_at
    december = windows_at(end, "Europe/Berlin")
    assert (december.day, december.month) == ("2026-12-01", "2026-12")
    new_year = windows_of_day("2026-12-31", "Europe/Berlin")
    assert new_year.month_resets_at == at("2027-01-01T00:00:00+01:00")
    assert windows_of_day("2028-02-28", "UTC").day_resets_at == at("2028-02-29T00:00:00+00:00")


@pytest.mark.parametrize(
    ("zone", "first", "days"),
    [
        ("Europe/Berlin", "2026-03-27", 4),  # 23-hour day
        ("Europe/Berlin", "2026-10-23", 4),  # 25-hour day
        ("America/Santiago", "2026-09-04", 4),  # midnight does not exist on the 6th
        ("America/Havana", "2026-03-06", 4),  # DST starts at 00:00
        ("Asia/Kolkata", "2026-11-20", 4),
        ("Pacific/Chatham", "2026-09-25", 4),  # +12:45 / +13:45
    ],
)
def test_every_day_ends_where_the_next_begins(zone: str, first: str, days: int) -> None:
    day = date.fromisoformat(first)
    for _ in range(days):
        ends = windows_of_day(day.isoformat(), zone).day_resets_at
        assert windows_at(ends - 0.001, zone).day == day.isoformat()
        day += timedelta(days=1)
        assert windows_at(ends, zone).day == day.isoformat()


def test_a_dst_day_has_its_true_length() -> None:
    start = windows_of_day("2026-03-28", "Europe/Berlin").day_resets_at
    end = windows_of_day("2026-03-29", "Europe/Berlin").day_resets_at
    assert end - start == 23 * 3600


# -- the prompt bound ----------------------------------------------------------------------


def _litellm_dir() -> Path:
    spec = importlib.util.find_spec("litellm")  # found, not imported: that takes seconds
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


TOKENIZERS = _litellm_dir() / "litellm_core_utils" / "tokenizers"


def _tokenizers() -> list[Any]:
    """OpenAI's two encodings and Anthropic's, from the files LiteLLM ships (no download)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TOKENIZERS))
    import tiktoken
    import tokenizers

    claude = tokenizers.Tokenizer.from_file(str(TOKENIZERS / "anthropic_tokenizer.json"))
    return [
        tiktoken.get_encoding("cl100k_base").encode,
        tiktoken.get_encoding("o200k_base").encode,
        lambda text: claude.encode(text).ids,
    ]


def test_prompt_bound_is_above_real_token_counts_in_every_script() -> None:
    # LiteLLM is a dependency and bundles these: their absence is a broken install.
    assert TOKENIZERS.is_dir(), f"LiteLLM's bundled tokenizers are missing at {TOKENIZERS}"
    encoders = _tokenizers()
    conversation = [{"role": "user", "content": text} for text in BENIGN]
    for message in conversation:
        bound = prompt_token_bound([message], None)
        for encode in encoders:
            assert bound >= len(encode(message["content"])) + 16
    whole = "\n".join(str(m["content"]) for m in conversation)
    assert prompt_token_bound(conversation, None) >= max(len(e(whole)) for e in encoders)


def test_prompt_bound_counts_bytes_of_every_string_plus_overheads() -> None:
    empty = prompt_token_bound([], None)
    one = prompt_token_bound([{"role": "user", "content": "héllo"}], None)
    longer = prompt_token_bound([{"role": "user", "content": "héllo" * 100}], None)
    assert one > empty
    assert longer - one == 99 * len("héllo".encode())
    lone = prompt_token_bound([{"role": "user", "content": "\ud800"}], None)
    assert lone - prompt_token_bound([{"role": "user", "content": ""}], None) == 3


def test_prompt_bound_counts_tool_calls_tools_and_images() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "shell", "arguments": '{"cmd":"ls -la"}'},
            }
        ],
    }
    assert prompt_token_bound([call], None) > prompt_token_bound([{"role": "assistant"}], None)
    tool = {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run <cmd> & return",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }
    with_tool = prompt_token_bound([], [tool]) - prompt_token_bound([], None)
    assert with_tool > len(str(tool)) + 3 * 5
    image = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 99_999}},
        ],
    }
    text_only = {"role": "user", "content": [{"type": "text", "text": "what is this?"}]}
    assert prompt_token_bound([image], None) == prompt_token_bound([text_only], None) + IMAGE_TOKENS


# -- what the user reads -------------------------------------------------------------------

NOW = at("2026-11-22T20:48:00+00:00")


def window(
    scope: Scope = Scope.USER,
    period: Period = Period.DAY,
    spent: int = 0,
    held: int = 0,
    cap: int | None = 10**9,
) -> WindowUse:
    windows = windows_at(NOW, "UTC")
    return WindowUse(
        scope=scope,
        period=period,
        key=windows.key(period),
        spent_nano=spent,
        held_nano=held,
        cap_nano=cap,
        resets_at=windows.resets_at(period),
        as_of=NOW,
        timezone="UTC",
    )


def test_dollar_amounts_for_people() -> None:
    assert format_usd(0) == "$0.00"
    assert format_usd(1_000_000_000) == "$1.00"
    assert format_usd(1_234_567_890_000) == "$1,234.57"
    assert format_usd(4_200_000) == "$0.0042"
    assert format_usd(99_999) == "< $0.0001"


def test_reset_times_say_when_and_how_long() -> None:
    day = windows_at(NOW, "UTC")
    assert format_reset(Period.DAY, day.day_resets_at, NOW, "UTC") == "at 00:00 UTC (in 3 h 12 min)"
    assert format_reset(Period.MONTH, day.month_resets_at, NOW, "UTC") == (
        "on 1 December at 00:00 UTC (in 8 d 3 h)"
    )
    assert format_reset(Period.DAY, NOW + 30, NOW, "UTC").endswith("(in under a minute)")
    berlin = windows_at(NOW, "Europe/Berlin")
    assert format_reset(Period.DAY, berlin.day_resets_at, NOW, "Europe/Berlin") == (
        "at 00:00 CET (in 2 h 12 min)"
    )


def test_exceeded_sentences() -> None:
    used_up = window(spent=10**9)
    assert exceeded_sentence(used_up, needed_nano=5) == (
        "Your daily budget of $1.00 is used up; it resets at 00:00 UTC (in 3 h 12 min)."
    )
    short = exceeded_sentence(window(spent=999_000_000), needed_nano=2_000_000)
    assert short.startswith("Your daily budget of $1.00 has $0.0010 left, not enough")
    assert "at least $0.0020" in short
    monthly = exceeded_sentence(window(period=Period.MONTH, spent=10**9), needed_nano=1)
    assert "monthly budget" in monthly and "on 1 December" in monthly
    shared = exceeded_sentence(window(scope=Scope.TOTAL, spent=10**9), needed_nano=1)
    assert shared.startswith("The daily budget shared by all users is used up")
    assert "$0.00" in exceeded_sentence(window(cap=0), needed_nano=1)


def test_warning_text() -> None:
    text = render_warning(window(spent=850_000_000))
    assert text == (
        "Heads-up: you have spent $0.85 of your daily budget of $1.00 (85 %); "
        "it resets at 00:00 UTC (in 3 h 12 min)."
    )
    assert "shared by all users" in render_warning(window(scope=Scope.TOTAL, spent=9 * 10**8))


def test_usage_report() -> None:
    usage = Usage(
        user_id="u1",
        windows=(
            window(spent=420_000_000, held=50_000_000),
            window(period=Period.MONTH, spent=3_100_000_000, cap=20 * 10**9),
            window(scope=Scope.TOTAL, spent=4_100_000_000, cap=None),
            window(scope=Scope.TOTAL, period=Period.MONTH, spent=41 * 10**9, cap=200 * 10**9),
        ),
        models=(("openai/gpt-4o-mini", 2_900_000_000), ("local", 200_000_000)),
    )
    assert render_usage(usage) == "\n".join(
        [
            "Your spending:",
            "  today (2026-11-22): $0.42 of $1.00, $0.05 reserved by running calls; "
            "resets at 00:00 UTC (in 3 h 12 min)",
            "  this month (2026-11): $3.10 of $20.00; resets on 1 December at 00:00 UTC "
            "(in 8 d 3 h)",
            "  by model this month: openai/gpt-4o-mini $2.90, local $0.20",
            "All users together:",
            "  today (2026-11-22): $4.10 (no cap)",
            "  this month (2026-11): $41.00 of $200.00; resets on 1 December at 00:00 UTC "
            "(in 8 d 3 h)",
        ]
    )
    assert usage.window(Scope.TOTAL, Period.DAY).remaining_nano is None
    assert usage.window(Scope.USER, Period.DAY).remaining_nano == 530_000_000


def test_windows_are_independent_of_the_machine_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    import time

    time.tzset()
    try:
        assert windows_at(at("2026-11-22T23:30:00+00:00"), "UTC").day == "2026-11-22"
    finally:
        monkeypatch.undo()
        time.tzset()
    assert datetime.fromtimestamp(0, UTC).year == 1970
