"""Lookalike characters folded to ASCII on the control-token detector's shadow copy.

A small, hand-picked subset of UTS #39 `confusables.txt`: only letters, digits and the
punctuation that model control tokens are spelled with (`< > | [ ] / _`). The shadow copy
has already been through NFKD and casefold, so fullwidth forms, mathematical alphanumerics
and circled letters are ASCII by then; this table covers what compatibility normalization
leaves alone (other scripts' letters, and symbols that merely look alike).

It is used for detection only; user text is never rewritten with it.
"""

from __future__ import annotations

_LOOKALIKES: dict[str, str] = {
    # Cyrillic (lowercase: the shadow is casefolded, so uppercase attacks arrive here too).
    "а": "a",
    "в": "b",
    "ь": "b",
    "с": "c",
    "ԁ": "d",
    "е": "e",
    "ё": "e",
    "һ": "h",
    "н": "h",
    "і": "i",
    "ї": "i",
    "ј": "j",
    "к": "k",
    "ӏ": "l",
    "м": "m",
    "п": "n",
    "о": "o",
    "р": "p",
    "ԛ": "q",
    "г": "r",
    "ѕ": "s",
    "т": "t",
    "у": "y",
    "ү": "y",
    "ѵ": "v",
    "ԝ": "w",
    "х": "x",
    # Greek.
    "α": "a",
    "β": "b",
    "ϲ": "c",
    "ε": "e",
    "η": "n",
    "ι": "i",
    "ϳ": "j",
    "κ": "k",
    "μ": "u",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "χ": "x",
    "γ": "y",
    "ω": "w",
    "ζ": "z",
    # Armenian.
    "օ": "o",
    "ս": "u",
    "ց": "g",
    "հ": "h",
    "ո": "n",
    "զ": "q",
    # Latin letters outside ASCII, including small capitals.
    "ı": "i",
    "ȷ": "j",
    "ɑ": "a",
    "ɡ": "g",
    "ɩ": "i",
    "ᴀ": "a",
    "ʙ": "b",
    "ᴄ": "c",
    "ᴅ": "d",
    "ᴇ": "e",
    "ɢ": "g",
    "ʜ": "h",
    "ɪ": "i",
    "ᴊ": "j",
    "ᴋ": "k",
    "ʟ": "l",
    "ᴍ": "m",
    "ɴ": "n",
    "ᴏ": "o",
    "ᴘ": "p",
    "ʀ": "r",
    "ꜱ": "s",
    "ᴛ": "t",
    "ᴜ": "u",
    "ᴠ": "v",
    "ᴡ": "w",
    "ʏ": "y",
    "ᴢ": "z",
    # Less-than and greater-than.
    "‹": "<",
    "˂": "<",
    "ᐸ": "<",
    "〈": "<",
    "⟨": "<",
    "❮": "<",
    "❬": "<",
    "≺": "<",
    "›": ">",
    "˃": ">",
    "ᐳ": ">",
    "〉": ">",
    "⟩": ">",
    "❯": ">",
    "❭": ">",
    "≻": ">",
    # Vertical line.
    "ǀ": "|",
    "∣": "|",
    "│": "|",
    "┃": "|",
    "❘": "|",
    "⏐": "|",
    "׀": "|",
    "ߊ": "|",
    "ᛁ": "|",
    "ⵏ": "|",
    "ꓲ": "|",
    "¦": "|",
    # Brackets, slash and low line.
    "〔": "[",
    "〕": "]",
    "⟦": "[",
    "⟧": "]",
    "∕": "/",
    "⁄": "/",
    "⧸": "/",
    "⟋": "/",
    "‗": "_",
    "ˍ": "_",
    # U+2581, spelled into DeepSeek's tokens: <｜begin▁of▁sentence｜>.
    "▁": "_",
}


def _outlined() -> dict[str, str]:
    # Unicode 16's outlined Latin capitals and digits (U+1CCD6..U+1CCF9) have <font>
    # decompositions to ASCII, but Python 3.11's unicodedata (Unicode 14) does not know them,
    # so NFKD leaves them alone. Casefold has nothing to do for them either.
    table = {chr(0x1CCD6 + i): chr(ord("a") + i) for i in range(26)}
    table.update({chr(0x1CCF0 + i): chr(ord("0") + i) for i in range(10)})
    return table


# str.translate tables, keyed by code point.
NEWER_COMPATIBILITY: dict[int, str] = {ord(k): v for k, v in _outlined().items()}
CONFUSABLES: dict[int, str] = {ord(k): v for k, v in _LOOKALIKES.items()}

# Every character whose shadow (see gateway.sanitize._shadow) contains "<" or "[", which
# every control token starts with. Text without one of these cannot hold a token, so the
# detector skips the shadow copy. tests/gateway/test_sanitize.py rebuilds this set from the
# whole code space and compares.
TOKEN_OPENERS = (
    "<[\u02c2\u1438\u2039\u226e\u227a\u2280\u2329\u276c\u276e\u27e6\u27e8\u3008\u3014"
    "\ufe39\ufe3f\ufe47\ufe5d\ufe64\uff1c\uff3b\U0001f12a\U0001f240-\U0001f248"
)
