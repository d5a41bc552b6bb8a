"""`stockade vault list` text: ages in the largest whole unit, dates, never a value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.vault import SecretEntry, age, render_listing


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0 s"),
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (3_599, "59 min"),
        (5 * 3_600 + 10, "5 h"),
        (86_399, "23 h"),
        (3 * 86_400 + 7_200, "3 d"),
        (400 * 86_400, "400 d"),
    ],
)
def test_age_uses_the_largest_whole_unit(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_listing_shows_dates_and_the_age_of_the_current_value() -> None:
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    entries = [
        SecretEntry("anthropic", now - timedelta(days=30), now - timedelta(hours=5)),
        SecretEntry("openai", now - timedelta(days=3), None),
    ]
    lines = render_listing(entries, now)
    assert lines[0].split() == ["NAME", "CREATED", "AGE", "ROTATED"]
    assert lines[1].split() == ["anthropic", "2025-02-08", "12:00", "5", "h", "2025-03-10", "07:00"]
    assert lines[2].split() == ["openai", "2025-03-07", "12:00", "3", "d", "never"]
    # Columns line up.
    assert lines[1].index("2025-02-08") == lines[2].index("2025-03-07")
