"""`stockade vault list` as text: names, dates and ages, never values (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.vault._format import SecretEntry

_HEADER = ("NAME", "CREATED", "AGE", "ROTATED")


def age(seconds: float) -> str:
    """A short age in the largest whole unit: "45 s", "12 min", "5 h", "3 d"."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if whole >= size:
            return f"{whole // size} {unit}"
    return f"{whole} s"


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def render_listing(entries: Sequence[SecretEntry], now: datetime) -> list[str]:
    """A table, one line per entry. AGE is how long the current value has been in place."""
    rows = [_HEADER] + [
        (
            entry.name,
            _date(entry.created_at),
            age((now - entry.changed_at).total_seconds()),
            "never" if entry.rotated_at is None else _date(entry.rotated_at),
        )
        for entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
