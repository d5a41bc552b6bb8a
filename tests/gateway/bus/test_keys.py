"""Stream names and the consume batch size: pure functions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.bus import IN_STREAM, agent_stream, dead_letter_stream, keys, out_stream
from gateway.bus._streams import batch_size


def test_stream_names_follow_the_documented_layout() -> None:
    assert IN_STREAM == keys.inbound() == "stockade:in"
    assert agent_stream("u-42") == "stockade:agent:u-42"
    assert out_stream("telegram") == "stockade:out:telegram"
    assert dead_letter_stream(IN_STREAM) == "stockade:dead:stockade:in"


@pytest.mark.parametrize("make", [agent_stream, out_stream])
def test_empty_user_or_channel_is_refused_rather_than_sharing_one_stream(
    make: Callable[[str], str],
) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        make("")


def test_long_dedupe_keys_are_hashed_to_a_bounded_redis_key() -> None:
    short = keys.dedupe(IN_STREAM, "telegram:123")
    assert short == "stockade:dedupe:stockade:in:telegram:123"
    long_key = keys.dedupe(IN_STREAM, "x" * 10_000)
    assert len(long_key) < 120
    assert long_key != keys.dedupe(IN_STREAM, "x" * 10_001)


def test_first_batch_is_small_until_the_handler_time_is_known() -> None:
    assert batch_size(100, 30_000, None) == 10
    assert batch_size(5, 30_000, None) == 5


def test_fast_handlers_get_the_full_batch() -> None:
    assert batch_size(100, 30_000, 0.0001) == 100
    assert batch_size(100, 30_000, 0.0) == 100


def test_slow_handlers_get_batches_that_fit_a_quarter_of_the_claim_time() -> None:
    # 30 s claim time, 1 s per entry: 7 entries take 7 s, under 7.5 s.
    assert batch_size(100, 30_000, 1.0) == 7
    assert batch_size(100, 30_000, 60.0) == 1
