"""Secret names and values: what is accepted, and that a refusal never repeats a value."""

from __future__ import annotations

import pytest

from gateway.errors import VaultError
from gateway.vault import MAX_VALUE_BYTES, check_name, clean_value


@pytest.mark.parametrize("name", ["openai", "a", "9", "Anthropic.prod-2_b", "x" * 64])
def test_plain_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "a/b", "a b", "a\n", "a:b", "x" * 65, "clé", "a\u200bb"]
)
def test_other_names_are_refused_without_being_repeated(name: str) -> None:
    with pytest.raises(VaultError) as caught:
        check_name(name)
    assert "invalid secret name" in str(caught.value)
    if name.strip():
        assert name not in str(caught.value)


def test_a_long_key_typed_as_the_name_is_not_echoed() -> None:
    key = "sk-proj-" + "Ab3" * 40
    with pytest.raises(VaultError) as caught:
        check_name(key)
    assert key[:20] not in str(caught.value)


def test_values_lose_surrounding_whitespace_only() -> None:
    assert clean_value("  sk-a b\n") == "sk-a b"
    assert clean_value("line one\nline two\n") == "line one\nline two"


@pytest.mark.parametrize("value", ["", " ", "\n\t\n"])
def test_empty_values_are_refused(value: str) -> None:
    with pytest.raises(VaultError, match="empty"):
        clean_value(value)


def test_values_up_to_16_kib_are_accepted_and_longer_refused_without_the_value() -> None:
    assert clean_value("k" * MAX_VALUE_BYTES) == "k" * MAX_VALUE_BYTES
    too_long = "sk-canary-" + "k" * MAX_VALUE_BYTES
    with pytest.raises(VaultError, match="16 KiB") as caught:
        clean_value(too_long)
    assert "canary" not in str(caught.value)


def test_the_size_limit_counts_utf8_bytes() -> None:
    with pytest.raises(VaultError):
        clean_value("é" * (MAX_VALUE_BYTES // 2 + 1))
