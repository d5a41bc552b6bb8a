"""Budget arithmetic as pure functions: money, prices, windows, the clamp rule and reports.

Money is a whole number of nano-dollars (1e-9 USD) everywhere, so Redis keeps it
with INCRBY and sums never drift. Prices are whole pico-dollars (1e-12 USD) per
token: cheap models cost fractions of a nano-dollar per token ($0.0375 per
million tokens is 37.5 nano-dollars per thousand tokens), and a whole number of
pico-dollars holds every price quoted to six decimals per million tokens.
Every conversion from a price to money rounds UP, to the next nano-dollar, so a
reservation and a bill are never below the true amount; caps round DOWN.

Everything here stays far below 2**53, because the reserve step runs in Redis's
Lua, whose numbers are doubles: caps are at most `MAX_CAP_USD`, prices at most
`MAX_PRICE_PICO` per token, prompts at most `MAX_PROMPT_TOKENS`, and the output
worst case of one call at most `MAX_CALL_OUTPUT_PICO`.

Windows are a calendar day and a calendar month in the configured time zone. A
call belongs to the windows it was reserved in, even when it settles after midnight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

from gateway.settings import BudgetSettings, Caps, Price

NANO_PER_USD: Final = 10**9
PICO_PER_NANO: Final = 1_000
PICO_PER_USD: Final = 10**12

MAX_CAP_USD: Final = 1_000_000
"""Largest cap we accept: 1e15 nano-dollars, an eighth of Lua's exact integer range."""
MAX_PRICE_PICO: Final = 10**11
"""0.1 USD per token ($100,000 per million), the settings' own upper bound."""
MAX_PROMPT_TOKENS: Final = 10_000_000
"""No model reads more; with the price bound a prompt costs at most 1e15 nano-dollars."""
MAX_CALL_OUTPUT_PICO: Final = 2**52
"""Worst-case output cost of one call (about $4,500): the reserve script multiplies the
money left by 1000 to divide it by a pico price, and must stay below 2**53."""


class Scope(StrEnum):
    """Whose spending a window counts: one user's, or everyone's together."""

    USER = "user"
    TOTAL = "total"


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


WINDOW_ORDER: Final = (
    (Scope.USER, Period.DAY),
    (Scope.USER, Period.MONTH),
    (Scope.TOTAL, Period.DAY),
    (Scope.TOTAL, Period.MONTH),
)
"""The four windows every call is counted in, in the order the store passes them around."""


# -- money and prices --------------------------------------------------------------------


def _decimal(value: float | int) -> Decimal:
    """The decimal a person wrote: repr() of a float is its shortest round-tripping form."""
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"a price or cap must be a finite number, 0 or more, not {value!r}")
    return Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """What one model costs, in whole pico-dollars (1e-12 USD) per token."""

    input_pico: int
    output_pico: int

    def __post_init__(self) -> None:
        for value in (self.input_pico, self.output_pico):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("token prices are whole pico-dollars")
            if not 0 <= value <= MAX_PRICE_PICO:
                raise ValueError(f"a token price must be 0 to {MAX_PRICE_PICO} pico-dollars")

    @classmethod
    def from_usd(cls, input_usd: float, output_usd: float) -> TokenPrice:
        """From US dollars per token (LiteLLM's cost map), rounded up to a pico-dollar."""
        return cls(
            _ceil(_decimal(input_usd) * PICO_PER_USD), _ceil(_decimal(output_usd) * PICO_PER_USD)
        )

    @classmethod
    def from_settings(cls, price: Price) -> TokenPrice:
        """From a configured price in US dollars per million tokens, rounded up."""
        per_mtok = PICO_PER_USD // 1_000_000
        return cls(
            _ceil(_decimal(price.input_usd_per_mtok) * per_mtok),
            _ceil(_decimal(price.output_usd_per_mtok) * per_mtok),
        )


def usd_to_nano(usd: float) -> int:
    """A cap in dollars as nano-dollars, rounded DOWN: a cap never grows in conversion."""
    value = _decimal(usd)
    if value > MAX_CAP_USD:
        raise ValueError(f"a cap may be at most ${MAX_CAP_USD:,}")
    return int(value * NANO_PER_USD)


def _pico_to_nano_up(pico: int) -> int:
    return -(-pico // PICO_PER_NANO)


def input_cost_nano(price: TokenPrice, tokens: int) -> int:
    """What `tokens` prompt tokens cost, rounded up to a nano-dollar."""
    return _pico_to_nano_up(tokens * price.input_pico)


def output_cost_nano(price: TokenPrice, tokens: int) -> int:
    """What `tokens` completion tokens cost, rounded up to a nano-dollar."""
    return _pico_to_nano_up(tokens * price.output_pico)


def worst_case(price: TokenPrice, prompt_tokens: int, max_tokens: int) -> int:
    """The most a call can cost: the prompt plus every completion token it may produce.

    Each part is rounded up on its own, so this is never below `cost_nano` of the
    same call with at most `max_tokens` completion tokens.
    """
    return input_cost_nano(price, prompt_tokens) + output_cost_nano(price, max_tokens)


def cost_nano(price: TokenPrice, prompt_tokens: int, completion_tokens: int) -> int:
    """What a finished call costs, rounded up to a nano-dollar."""
    pico = prompt_tokens * price.input_pico + completion_tokens * price.output_pico
    return _pico_to_nano_up(pico)


def bounded_max_tokens(price: TokenPrice, max_tokens: int) -> int:
    """`max_tokens`, lowered so that its output cost stays within `MAX_CALL_OUTPUT_PICO`."""
    if price.output_pico == 0:
        return max_tokens
    return min(max_tokens, MAX_CALL_OUTPUT_PICO // price.output_pico)


def affordable_max_tokens(
    price: TokenPrice, prompt_tokens: int, max_tokens: int, remaining_nano: int | None
) -> int:
    """The clamp rule: the most completion tokens the money left pays for, up to `max_tokens`.

    `remaining_nano` is what the tightest window has left (None: no cap). 0 means
    the call is refused: nothing is left, or not enough for the prompt and one
    token. The reserve script in Redis applies the same rule, in the same integers.
    """
    max_tokens = bounded_max_tokens(price, max_tokens)
    if remaining_nano is None:
        return max_tokens
    prompt = input_cost_nano(price, prompt_tokens)
    if remaining_nano <= 0 or remaining_nano < prompt + output_cost_nano(price, 1):
        return 0
    left = remaining_nano - prompt
    if left >= output_cost_nano(price, max_tokens):
        return max_tokens
    # output_pico > 0 here: a free output would have cost nothing above.
    return left * PICO_PER_NANO // price.output_pico


# -- windows -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Windows:
    """The day and the month an instant falls in, in one time zone, and when each ends."""

    day: str
    """ISO date, e.g. "2026-11-22"."""
    month: str
    """e.g. "2026-11"."""
    day_starts_at: float
    """Epoch seconds of the local midnight that began the day."""
    day_resets_at: float
    """Epoch seconds of the next local midnight."""
    month_resets_at: float
    """Epoch seconds of local midnight on the first of the next month."""

    def holds(self, at: float) -> bool:
        """Whether the instant `at` falls in this day."""
        return self.day_starts_at <= at < self.day_resets_at

    def key(self, period: Period) -> str:
        return self.day if period is Period.DAY else self.month

    def resets_at(self, period: Period) -> float:
        return self.day_resets_at if period is Period.DAY else self.month_resets_at


def _start_of(day: date, zone: ZoneInfo) -> float:
    # Where a zone skips midnight (a DST change at 00:00), fold=0 maps the missing
    # 00:00 to the first instant that exists on that day.
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _windows(day: date, zone: ZoneInfo) -> Windows:
    next_month = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return Windows(
        day=day.isoformat(),
        month=f"{day.year:04d}-{day.month:02d}",
        day_starts_at=_start_of(day, zone),
        day_resets_at=_start_of(day + timedelta(days=1), zone),
        month_resets_at=_start_of(next_month, zone),
    )


def windows_at(at: float, timezone: str) -> Windows:
    """The windows the instant `at` (epoch seconds) falls in, in the IANA zone `timezone`."""
    zone = ZoneInfo(timezone)
    return _windows(datetime.fromtimestamp(at, zone).date(), zone)


def windows_of_day(day: str, timezone: str) -> Windows:
    """The windows of a day key such as "2026-11-22"."""
    return _windows(date.fromisoformat(day), ZoneInfo(timezone))


# -- caps --------------------------------------------------------------------------------


def caps_nano(settings: BudgetSettings, user_id: str) -> tuple[int | None, ...]:
    """The caps of `user_id`'s four windows, in `WINDOW_ORDER`; None means no cap.

    An override replaces the user caps as a whole: an override without a daily cap
    means no daily cap for that user.
    """
    return window_caps(settings.overrides.get(user_id, settings.user), settings.total)


def window_caps(user: Caps, total: Caps) -> tuple[int | None, ...]:
    """Caps in nano-dollars, in `WINDOW_ORDER`, from a user's caps and the total caps."""
    return tuple(
        None if usd is None else usd_to_nano(usd)
        for usd in (user.daily_usd, user.monthly_usd, total.daily_usd, total.monthly_usd)
    )


def caps_to_json(caps: Caps) -> str:
    """The runtime override of a user's caps as the operator's hash holds it; ValueError
    when a cap is not one the gate can count (negative, not finite, above `MAX_CAP_USD`)."""
    for usd in (caps.daily_usd, caps.monthly_usd):
        if usd is not None:
            usd_to_nano(usd)
    return json.dumps(
        {"daily_usd": caps.daily_usd, "monthly_usd": caps.monthly_usd}, separators=(",", ":")
    )


def caps_from_json(raw: str | bytes) -> Caps:
    """A runtime override of a user's caps, read back; ValueError when it is malformed.

    Exactly the two keys, each a number or null: a value the gate cannot count is
    never half-applied.
    """
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a caps override is a JSON object")
    caps = Caps.model_validate(data, strict=True)
    caps_to_json(caps)
    return caps


def warn_threshold(cap: int | None, warn_at: float) -> int | None:
    """Spend from which a window's user is warned; None for no cap or a cap of 0."""
    if cap is None or cap == 0:
        return None
    return _ceil(Decimal(cap) * _decimal(warn_at))


# -- the prompt bound ---------------------------------------------------------------------

MESSAGE_OVERHEAD_TOKENS: Final = 16
"""Chat-template framing per message (role markers, separators): 3 to 8 tokens in the
OpenAI, ChatML and Llama 3 formats."""
TOOL_OVERHEAD_TOKENS: Final = 16
"""Framing per tool definition, beyond its JSON."""
REQUEST_OVERHEAD_TOKENS: Final = 256
"""Per request: the reply priming, a template's default system prompt (Llama 3.1 and Qwen
add 20 to 30 tokens) and its tool-use instructions (about 100)."""
IMAGE_TOKENS: Final = 16_384
"""Per image part, whatever its size: the most any common model charges for one image
(Qwen2-VL's default pixel limit; OpenAI, Anthropic and Gemini charge under 5,000)."""


def _image_free(message: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
    """The message without its image data, and how many images it held."""
    content = message.get("content")
    if not isinstance(content, list):
        return message, 0
    parts = [p for p in content if not (isinstance(p, Mapping) and p.get("type") == "image_url")]
    return {**message, "content": parts}, len(content) - len(parts)


def _utf8_len(text: str) -> int:
    # surrogatepass: a lone surrogate counts as the 3 bytes it would take.
    return len(text.encode("utf-8", "surrogatepass"))


def prompt_token_bound(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> int:
    """An upper bound on the prompt tokens of a chat request, with no tokenizer.

    Byte-level BPE tokenizers (GPT, Llama 3, Qwen, Mistral's Tekken) and
    SentencePiece with byte fallback never make more tokens of a text than it has
    UTF-8 bytes: every token stands for at least one byte. So the bound is the
    UTF-8 length of each message serialized as JSON (every string, with keys,
    quotes, escapes and separators on top, which covers a template that
    re-serializes tool-call arguments), plus the framing overheads above; tools
    count as their JSON with non-ASCII escaped and room for HTML escaping, as
    Jinja's `tojson` renders them. Images count `IMAGE_TOKENS` each instead of
    their bytes.

    It over-reserves, typically by 3 to 4 times for English text. That is safe:
    the reservation is an upper bound, the call is billed at the real cost when it
    settles, and the only effect is that a user close to a cap is clamped or
    refused a little early.
    """
    total = REQUEST_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages)
    stripped = [_image_free(message) for message in messages]
    total += IMAGE_TOKENS * sum(images for _, images in stripped)
    # One serialization of the whole list: as long as the messages' own (plus a comma
    # between each and two brackets), and several times faster than one per message.
    total += _utf8_len(json.dumps([text for text, _ in stripped], ensure_ascii=False))
    for tool in tools or ():
        rendered = json.dumps(tool, ensure_ascii=True)
        # tojson turns < > & ' into \u003c and the like: 6 bytes for 1.
        escaped = sum(rendered.count(c) for c in "<>&'")
        total += TOOL_OVERHEAD_TOKENS + len(rendered) + 5 * escaped
    return total


# -- what the user reads -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowUse:
    """One window's money at one moment."""

    scope: Scope
    period: Period
    key: str
    """The day or month key, e.g. "2026-11-22" or "2026-11"."""
    spent_nano: int
    """Billed: settled calls and expired reservations."""
    held_nano: int
    """Reserved by calls still running."""
    cap_nano: int | None
    resets_at: float
    as_of: float
    timezone: str

    @property
    def used_nano(self) -> int:
        return self.spent_nano + self.held_nano

    @property
    def remaining_nano(self) -> int | None:
        return None if self.cap_nano is None else max(0, self.cap_nano - self.used_nano)


@dataclass(frozen=True, slots=True)
class Usage:
    """A user's spending now: their windows, everyone's windows, and their models this month."""

    user_id: str
    windows: tuple[WindowUse, ...]
    """Four, in `WINDOW_ORDER`."""
    models: tuple[tuple[str, int], ...]
    """(model, nano-dollars spent this month), most expensive first."""

    def window(self, scope: Scope, period: Period) -> WindowUse:
        return self.windows[WINDOW_ORDER.index((scope, period))]


_MONTHS: Final = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def format_usd(nano: int) -> str:
    """Dollars for people: cents, or four decimals below a cent."""
    if nano == 0:
        return "$0.00"
    if nano < 100_000:
        return "< $0.0001"
    usd = Decimal(nano) / NANO_PER_USD
    if nano < NANO_PER_USD // 100:
        return f"${usd.quantize(Decimal('0.0001'))}"
    return f"${usd.quantize(Decimal('0.01')):,}"


def _in(seconds: float) -> str:
    minutes = math.ceil(max(0.0, seconds) / 60)
    if minutes <= 1:
        return "in under a minute" if seconds < 60 else "in 1 min"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"in {days} d {hours} h" if hours else f"in {days} d"
    if hours:
        return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"
    return f"in {minutes} min"


def format_reset(period: Period, resets_at: float, as_of: float, timezone: str) -> str:
    """When a window opens again: "at 00:00 UTC (in 3 h 12 min)" or "on 1 December at …"."""
    local = datetime.fromtimestamp(resets_at, ZoneInfo(timezone))
    zone = local.strftime("%Z")
    if zone[:1] in "+-":
        zone = "UTC" + zone
    clock = f"{local:%H:%M} {zone}"
    when = (
        f"at {clock}"
        if period is Period.DAY
        else f"on {local.day} {_MONTHS[local.month - 1]} at {clock}"
    )
    return f"{when} ({_in(resets_at - as_of)})"


def exceeded_sentence(window: WindowUse, *, needed_nano: int) -> str:
    """Why a call is refused, for the user: which budget, what is left, when it resets."""
    period = "daily" if window.period is Period.DAY else "monthly"
    cap = window.cap_nano or 0
    left = window.remaining_nano or 0
    when = format_reset(window.period, window.resets_at, window.as_of, window.timezone)
    if window.scope is Scope.TOTAL:
        state = "is used up" if left == 0 else "has too little left for this request"
        return f"The {period} budget shared by all users {state}; it resets {when}."
    if cap == 0:
        return f"Your {period} budget is $0.00, so no model calls can be made."
    if left == 0:
        return f"Your {period} budget of {format_usd(cap)} is used up; it resets {when}."
    return (
        f"Your {period} budget of {format_usd(cap)} has {format_usd(left)} left, not enough "
        f"for this request (it needs at least {format_usd(needed_nano)}); a shorter "
        f"conversation needs less, or it resets {when}."
    )


def render_warning(window: WindowUse) -> str:
    """The one-time notice when a window passes its warning threshold."""
    period = "daily" if window.period is Period.DAY else "monthly"
    cap = window.cap_nano or 0
    percent = window.spent_nano * 100 // cap if cap else 100
    when = format_reset(window.period, window.resets_at, window.as_of, window.timezone)
    if window.scope is Scope.TOTAL:
        return (
            f"Heads-up: {percent} % of the {period} budget shared by all users is spent; "
            f"it resets {when}."
        )
    return (
        f"Heads-up: you have spent {format_usd(window.spent_nano)} of your {period} budget "
        f"of {format_usd(cap)} ({percent} %); it resets {when}."
    )


def _window_line(label: str, window: WindowUse) -> str:
    line = f"  {label} ({window.key}): {format_usd(window.spent_nano)}"
    if window.cap_nano is not None:
        line += f" of {format_usd(window.cap_nano)}"
    if window.held_nano:
        line += f", {format_usd(window.held_nano)} reserved by running calls"
    if window.cap_nano is None:
        return line + " (no cap)"
    when = format_reset(window.period, window.resets_at, window.as_of, window.timezone)
    return f"{line}; resets {when}"


def render_usage(
    usage: Usage, *, heading: str = "Your spending:", include_total: bool = True
) -> str:
    """A short report: each window's spend, cap and reset; models this month; and,
    with `include_total`, all users' spend together."""
    lines = [heading]
    lines.append(_window_line("today", usage.window(Scope.USER, Period.DAY)))
    lines.append(_window_line("this month", usage.window(Scope.USER, Period.MONTH)))
    if usage.models:
        spent = ", ".join(f"{model} {format_usd(nano)}" for model, nano in usage.models)
        lines.append(f"  by model this month: {spent}")
    if not include_total:
        return "\n".join(lines)
    lines.append("All users together:")
    lines.append(_window_line("today", usage.window(Scope.TOTAL, Period.DAY)))
    lines.append(_window_line("this month", usage.window(Scope.TOTAL, Period.MONTH)))
    return "\n".join(lines)


def render_overview(users: Sequence[tuple[str, Sequence[str], Usage]]) -> str:
    """The operator's view: one line per user (id, identities, today, this month), then
    all users together. `users` pairs each id with its platform identities and usage."""
    lines = []
    for user_id, identities, usage in users:
        day, month = usage.window(Scope.USER, Period.DAY), usage.window(Scope.USER, Period.MONTH)
        names = f" ({', '.join(identities)})" if identities else ""
        lines.append(f"{user_id}{names}: today {_spent_of(day)}, this month {_spent_of(month)}")
    if not users:
        lines.append("no users yet")
        return "\n".join(lines)
    total = users[0][2]
    lines.append("All users together:")
    lines.append(_window_line("today", total.window(Scope.TOTAL, Period.DAY)))
    lines.append(_window_line("this month", total.window(Scope.TOTAL, Period.MONTH)))
    return "\n".join(lines)


def _spent_of(window: WindowUse) -> str:
    spent = format_usd(window.used_nano)
    return spent if window.cap_nano is None else f"{spent} of {format_usd(window.cap_nano)}"
