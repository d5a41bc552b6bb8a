"""What the budget gate's tests share: a price, a fixed noon and a clock they move."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from gateway.policy import TokenPrice

PRICE: Final = TokenPrice(input_pico=1_000_000, output_pico=4_000_000)  # $1 and $4 per Mtok
NOON: Final = datetime.fromisoformat("2026-11-22T12:00:00+00:00").timestamp()


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
