"""Vault fixtures: real files under tmp_path, a fresh key and a canary value per test."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


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


def environment(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any STOCKADE_ variable, for a CLI run in
    `data_dir`, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("STOCKADE_")}
    return {**base, "STOCKADE_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), **(extra or {})}


def stockade(
    data_dir: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`stockade ARGS` run to its end in `data_dir`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment(data_dir, env),
        cwd=data_dir,
        timeout=60,
    )
