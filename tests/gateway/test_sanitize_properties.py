"""Properties of gateway.sanitize over arbitrary Unicode text, lone surrogates included.

The invariant checks here are written independently of the module: a plain loop over the
output that applies the rules of shared/reference/security.md section 1.1 one character at
a time, with `regex` properties, instead of the module's lookaround patterns.
"""

from __future__ import annotations

import itertools

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sanitize import _sanitize_exact, detect_control_tokens, sanitize
from tests.gateway.sanitize_corpus import BLACK_FLAG, CONTROL_TOKENS, subdivision_flag, tags

RGI_FLAGS = tuple(subdivision_flag(code) for code in ("gbeng", "gbsct", "gbwls"))

# Characters whose neighbours matter, mixed into arbitrary text so that the contexts the
# policy distinguishes come up often.
INTERESTING = [
    "\u200c",
    "\u200d",
    "\ufe0e",
    "\ufe0f",
    "\ufe00",
    "\U000e0100",
    "\u094d",  # Devanagari virama
    "\u0915",  # ka
    "\u09b0",  # Bengali ra
    "\u09cd",  # Bengali virama
    "\u0628",  # beh, dual-joining
    "\u0627",  # alef, right-joining
    "\u064b",  # fathatan, transparent
    "\u0301",  # combining acute
    "\U0001f468",
    "\U0001f469",
    "\U0001f3fd",  # skin tone
    "\u2764",
    "\U0001f3f3",
    BLACK_FLAG,
    "\U000e0067",
    "\U000e0062",
    "\U000e0065",
    "\U000e006e",
    "\U000e007f",
    *RGI_FLAGS,
    "\u200b",
    "\u00ad",
    "\ufeff",
    "\u202e",
    "\u3164",
    "\x1b",
    "\x00",
    "\x85",
    "\u2028",
    "\ue000",
    "\ufdd0",
    "\ud83d",
    "\ude00",
    " ",
    "a",
    "1",
    "\u20e3",
    "<|",
    "|>",
]

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates included
ANY_TEXT = st.text(ANY_CHAR, max_size=60)
MIXED_TEXT = st.lists(st.one_of(ANY_CHAR, st.sampled_from(INTERESTING)), max_size=40).map("".join)
TEXTS = st.one_of(ANY_TEXT, MIXED_TEXT)

_DI = regex.compile(r"\p{DI}")
_VISIBLE = regex.compile(r"[^\p{C}\p{M}\p{Z}\p{DI}]|\p{ExtPict}")
_VIRAMA = regex.compile(r"\p{ccc=9}")
_LETTER = regex.compile(r"\p{L}")
_PICTO = regex.compile(r"\p{ExtPict}")
_MODIFIER = regex.compile(r"\p{EMod}")
_T = regex.compile(r"\p{jt=T}")
_LEFT = regex.compile(r"[\p{jt=L}\p{jt=D}]")
_RIGHT = regex.compile(r"[\p{jt=R}\p{jt=D}]")
_NEVER = regex.compile(
    r"[\p{Co}\p{Cs}\p{NChar}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u2028\u2029\uFFF9-\uFFFB]"
)


def _is(pattern: regex.Pattern[str], text: str, i: int) -> bool:
    return 0 <= i < len(text) and pattern.fullmatch(text[i]) is not None


def _joiner_allowed(out: str, i: int) -> bool:
    joiners = "\u200c\u200d"
    prev = out[i - 1] if i > 0 else ""
    nxt = out[i + 1] if i + 1 < len(out) else ""
    if (prev and prev in joiners) or (nxt and nxt in joiners):
        return False
    if _is(_VIRAMA, out, i - 1):
        return True
    if out[i] == "\u200c":
        j = i - 1
        while _is(_T, out, j):
            j -= 1
        k = i + 1
        while _is(_T, out, k):
            k += 1
        return _is(_LEFT, out, j) and _is(_RIGHT, out, k)
    if _is(_LETTER, out, i - 1) and _is(_VIRAMA, out, i + 1):
        return True
    after_emoji = (
        _is(_PICTO, out, i - 1)
        or _is(_MODIFIER, out, i - 1)
        or (prev == "\ufe0f" and _is(_PICTO, out, i - 2))
    )
    return after_emoji and _is(_PICTO, out, i + 1)


def _rgi_flag_spans(out: str) -> set[int]:
    covered: set[int] = set()
    for flag in RGI_FLAGS:
        start = out.find(flag)
        while start != -1:
            covered.update(range(start + 1, start + len(flag)))
            start = out.find(flag, start + 1)
    return covered


def _violations(out: str) -> list[tuple[int, str]]:
    """Characters of `out` that the policy does not allow where they stand."""
    bad = []
    in_flags = _rgi_flag_spans(out)
    for i, c in enumerate(out):
        if _NEVER.fullmatch(c):
            bad.append((i, c))
        elif _DI.fullmatch(c):
            if c in "\u200c\u200d":
                ok = _joiner_allowed(out, i)
            elif "\ufe00" <= c <= "\ufe0f":
                ok = _is(_VISIBLE, out, i - 1)
            else:
                ok = i in in_flags
            if not ok:
                bad.append((i, c))
    return bad


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_sanitize_never_raises_and_returns_encodable_text(text: str) -> None:
    out = sanitize(text)
    assert isinstance(out, str)
    out.encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_sanitize_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_output_holds_no_ignorable_or_control_character_outside_allowed_contexts(
    text: str,
) -> None:
    out = sanitize(text)
    assert _violations(out) == [], ascii(text)


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_screened_fast_path_agrees_with_the_whole_text_policy(text: str) -> None:
    assert sanitize(text) == _sanitize_exact(text)


_POLICY_CHARS = regex.compile(
    r"[\p{DI}\p{Co}\p{Cs}\p{NChar}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u2028\u2029\uFFF9-\uFFFB]"
)
_TO_FFFD = regex.compile(r"[\p{Co}\p{Cs}\p{NChar}]")


@settings(max_examples=400, deadline=None)
@given(TEXTS)
def test_only_policy_characters_are_touched(text: str) -> None:
    # Map the input the way the policy maps its one-for-one replacements, then drop every
    # character the policy may remove from both: what is left must be identical.
    expected = _TO_FFFD.sub("\ufffd", text).replace("\u2028", "\n").replace("\u2029", "\n")
    assert _POLICY_CHARS.sub("", sanitize(text)) == _POLICY_CHARS.sub("", expected)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_detect_control_tokens_never_raises(text: str) -> None:
    found = detect_control_tokens(text)
    assert isinstance(found, tuple)
    assert all(isinstance(token, str) for token in found)
    assert detect_control_tokens(sanitize(text)) == found


HIDING = st.sampled_from(
    ["\u200b", "\u00ad", "\u2060", "\ufeff", "\u200c", "\u200d", "\ufe0f", "\u202e", "\x00"]
    + [tags(c) for c in "ab"]
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONTROL_TOKENS), st.lists(st.tuples(st.integers(0, 40), HIDING), max_size=6))
def test_tokens_split_by_invisible_characters_are_still_detected(
    token: str, inserts: list[tuple[int, str]]
) -> None:
    text = token
    for position, hidden in inserts:
        cut = position % (len(text) + 1)
        text = text[:cut] + hidden + text[cut:]
    assert token in detect_control_tokens(text)


# Every sequence of up to four of these: the neighbourhoods the policy tells apart.
SMALL_ALPHABET = [
    "\u0915",  # Devanagari ka
    "\u094d",  # virama
    "\u0628",  # beh, dual-joining
    "\u0627",  # alef, right-joining
    "\u064b",  # fathatan, transparent
    "\U0001f468",
    "\U0001f3fd",  # skin tone
    "\ufe0f",
    "\ufe00",
    "\u200d",
    "\u200c",
    "\u200b",
    BLACK_FLAG,
    RGI_FLAGS[0][1:],  # the tags of the England flag
    "\ue000",
    " ",
]


def test_every_short_sequence_of_context_characters() -> None:
    for n in range(1, 5):
        for parts in itertools.product(SMALL_ALPHABET, repeat=n):
            text = "".join(parts)
            out = sanitize(text)
            assert out == _sanitize_exact(text), ascii(text)
            assert sanitize(out) == out, ascii(text)
            assert _violations(out) == [], ascii(text)
