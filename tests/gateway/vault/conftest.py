"""Vault fixtures: real files under tmp_path, a fresh key and a canary value per test."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STOCKADE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "vault" / "secrets.json"


@pytest.fixture
def canary() -> str:
    return f"sk-canary-{secrets.token_hex(16)}"


def renderings(secret: str | bytes) -> list[bytes]:
    """Ways a leaked value could appear in a file or an output: raw, base64 (at each of the
    three alignments it can take inside longer data), and hex."""
    raw = secret.encode() if isinstance(secret, str) else secret
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        found.append(encoded[4 if shift else 0 : -4])
        found.append(base64.urlsafe_b64encode(b"\0" * shift + raw)[4 if shift else 0 : -4])
    return found


def assert_absent(secret: str | bytes, *haystacks: str | bytes) -> None:
    for haystack in haystacks:
        data = haystack.encode() if isinstance(haystack, str) else haystack
        for needle in renderings(secret):
            assert needle not in data
