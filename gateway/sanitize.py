"""Unicode sanitizer for every string that enters Stockade from outside.

`sanitize(text)` removes what a person cannot see but a model reads, and what breaks the
layers below; `detect_control_tokens(text)` reports disguised model control tokens without
rewriting anything. Policy (docs: shared/reference/security.md section 1):

- lone surrogates, private use and noncharacters become U+FFFD, so the result always
  encodes as UTF-8;
- C0/C1 controls are dropped except tab, line feed and carriage return; U+2028/U+2029
  become line feeds;
- Default_Ignorable_Code_Point characters (bidi controls, zero-width characters, invisible
  operators, Hangul fillers, the tag block, variation selectors ...) are dropped, except:
  tag characters inside the three RGI subdivision flags (England, Scotland, Wales); one
  VS1-VS16 directly after a visible base character; ZWJ/ZWNJ where a script or an emoji
  sequence needs them (see `_ZWNJ_KEPT` and `_ZWJ_KEPT`);
- U+FFF9-U+FFFB (interlinear annotation) are dropped as well.

Everything else is returned byte for byte. Documented strips that can touch benign text:
a leading BOM, soft hyphens, LRM/RLM/ALM, Mongolian free variation selectors, ZWNJ/ZWJ in
contexts no script needs (e.g. ligature control in Latin text), ideographic variation
sequences (VS17-VS256), and tags of subdivision flags other than the three RGI ones.

Unicode data comes from the `regex` library, not the interpreter's `unicodedata`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Protocol

import regex

from gateway import _sanitize_tables as t
from gateway._sanitize_confusables import CONFUSABLES, NEWER_COMPATIBILITY, TOKEN_OPENERS

__all__ = ["detect_control_tokens", "sanitize"]


# The slice of the `regex` API used here, typed (the package ships no stubs).
class _Match(Protocol):
    @property
    def lastgroup(self) -> str | None: ...
    def end(self) -> int: ...


class _Pattern(Protocol):
    def match(self, string: str, pos: int = ...) -> _Match | None: ...
    def sub(self, repl: str, string: str, *, pos: int | None = None) -> str: ...


# --- The policy, in `regex` syntax (version 1: set operations) -------------------------------
#
# Every decision reads the *input* around a character, and a character is kept only when its
# deciding neighbours are characters the policy never changes (letters, viramas, emoji, kept
# VS16). So a kept character keeps the same neighbours in the output, which is what makes
# sanitize idempotent.

_JOINER = r"[\u200C\u200D]"
_VIRAMA = r"\p{ccc=9}"
# A visible base for a variation selector. Unicode never uses a combining mark, a control,
# a format character or a space as the base of a variation sequence. Extended_Pictographic
# is added so that emoji the library does not yet know (Cn in reserved emoji blocks) count.
_VISIBLE = r"(?:[^\p{C}\p{M}\p{Z}\p{DI}]|\p{ExtPict})"
_LETTER = r"[\p{L}--\p{DI}]"  # minus the Hangul fillers, which are Lo but invisible

# ZWNJ stays after a virama (explicit halant in Indic scripts) unless another joiner
# follows, or between joining letters: (L|D) T* ZWNJ T* (R|D), RFC 5892 Appendix A.1.
# Both are checked just after the ZWNJ.
_ZWNJ_KEPT = (
    rf"(?<={_VIRAMA}\u200C)(?!{_JOINER})"
    r"|(?<=[\p{jt=L}\p{jt=D}]\p{jt=T}*\u200C)\p{jt=T}*[\p{jt=R}\p{jt=D}]"
)
# ZWJ stays after a virama (half forms, Malayalam chillus, Sinhala conjuncts) unless another
# joiner follows; between a letter and a virama (Bengali ra-phala/ya-phala, Sinhala touching
# letters); and inside emoji ZWJ sequences: after a pictograph, a skin-tone modifier or a
# pictograph's VS16, before a pictograph.
_ZWJ_KEPT = (
    rf"(?<={_VIRAMA}\u200D)(?!{_JOINER})"
    rf"|(?<={_LETTER}\u200D){_VIRAMA}"
    r"|(?<=(?:[\p{ExtPict}\p{EMod}]|\p{ExtPict}\uFE0F)\u200D)\p{ExtPict}"
)
_UNCONDITIONAL_DROP = (
    r"[\p{DI}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\uFFF9-\uFFFB--[\u200C\u200D\uFE00-\uFE0F]]"
)
# The only subdivision flags that are RGI (recommended for general interchange): England,
# Scotland, Wales. Other well-formed ones (black flag + 2-6 tags + cancel tag) still carry up
# to six smuggled letters each, so their tags are dropped, leaving the black flag.
_RGI_FLAG_TAGS = tuple(
    "".join(chr(0xE0000 + ord(c)) for c in region) + "\U000e007f"
    for region in ("gbeng", "gbsct", "gbwls")
)

_POLICY: _Pattern = regex.compile(
    # Tags of an RGI subdivision flag, matched from the first tag after U+1F3F4: kept.
    rf"(?P<keep>(?<=\U0001F3F4)(?:{'|'.join(_RGI_FLAG_TAGS)}))"
    rf"|(?:{_UNCONDITIONAL_DROP}"
    rf"|[\uFE00-\uFE0F](?<!{_VISIBLE}[\uFE00-\uFE0F])"
    rf"|\u200C(?!{_ZWNJ_KEPT})"
    rf"|\u200D(?!{_ZWJ_KEPT}))+",
    flags=regex.V1,
)
# The substitution template: a kept flag stays, everything else _POLICY matches goes. An
# unmatched group substitutes as "", so no Python code runs per match.
_KEEP = r"\g<keep>"


def _cls(*ranges: t.Ranges) -> str:
    """A stdlib `re` character class for the union of `ranges`."""
    return "[" + t.class_body(t.merge(*ranges)) + "]"


# Replaced one for one before _POLICY runs, so that the policy sees what the output will hold
# (U+FFFD is a visible base for a variation selector; a private-use character is not).
_TO_FFFD: re.Pattern[str] = re.compile(_cls(t.PRIVATE_USE, t.SURROGATES, t.NONCHARACTERS))
_TO_LF: re.Pattern[str] = re.compile("[\u2028\u2029]")
_ONE_FOR_ONE: re.Pattern[str] = re.compile(
    _cls(t.PRIVATE_USE, t.SURROGATES, t.NONCHARACTERS, t.LINE_SEPARATORS)
)


def _sanitize_exact(text: str) -> str:
    """The policy applied by whole-text scans, without the screen: the reference for tests."""
    text = _TO_LF.sub("\n", _TO_FFFD.sub("\ufffd", text))
    return _POLICY.sub(_KEEP, text)


# --- The screen, in stdlib `re` syntax -------------------------------------------------------
#
# A superset of the positions where _POLICY can match, minus the contexts that benign text
# uses all the time (Persian ZWNJ between letters, emoji ZWJ sequences, VS16 after an emoji,
# keycaps). Text with no screen hit is returned as it is, without a copy. At a hit, _POLICY
# decides. `re` needs fixed-width lookbehind, so the screen only exempts one-character
# contexts; the rest (harakat between a letter and a ZWNJ, VS1 after a CJK ideograph, the
# tags of an RGI flag ...) are left to _POLICY.

_S_VIRAMA = _cls(t.VIRAMA)
_S_LEFT = _cls(t.LEFT_JOINING)
_S_T = _cls(t.TRANSPARENT)  # up to two, e.g. a haraka and a shadda, around a ZWNJ
_S_EMOJI = _cls(t.EXTENDED_PICTOGRAPHIC)
_S_EMOJI_OR_MODIFIER = _cls(t.EXTENDED_PICTOGRAPHIC, t.EMOJI_MODIFIER)
_S_VS_BASE = _cls(t.EXTENDED_PICTOGRAPHIC, ((0x23, 0x23), (0x2A, 0x2A), (0x30, 0x39)))
_S_CANDIDATE = _cls(t.UNCONDITIONAL, t.JOINERS, t.BMP_VARIATION_SELECTORS)
# What the scan loop tests at every character. A class's supplementary-plane ranges are
# tested one by one after its BMP bitmap, and the candidates have a dozen of them (one per
# plane's noncharacters), which makes the scan several times slower. So the prefix takes the
# BMP candidates and two wide supplementary ranges that skip the emoji and the common
# plane-1 blocks; the first alternative below then narrows it to the candidates.
_S_PREFIX = _cls(
    tuple(
        r for r in t.merge(t.UNCONDITIONAL, t.JOINERS, t.BMP_VARIATION_SELECTORS) if r[1] < 0x10000
    ),
    ((0x1BCA0, 0x1D17A), (0x1FFFE, 0x10FFFF)),
)

# The tag just consumed is part of an RGI flag: one fixed-width test per flag and offset.
_S_INSIDE_RGI_FLAG = "|".join(
    f"(?<=\U0001f3f4{tags[: k + 1]})(?={tags[k + 1 :]})"
    for tags in _RGI_FLAG_TAGS
    for k in range(len(tags))
)

_SCREEN: re.Pattern[str] = re.compile(
    # The character is consumed first: a pattern that opens with a character class lets the
    # `re` engine skip all other characters in C. The lookbehinds then look at it.
    _S_PREFIX
    + "(?:"
    + f"(?<={_cls(t.UNCONDITIONAL)})(?!{_S_INSIDE_RGI_FLAG})"
    + "|(?<=\u200c)"
    + f"(?!(?:(?<={_S_LEFT}\u200c)|(?<={_S_LEFT}{_S_T}\u200c)|(?<={_S_LEFT}{_S_T}{_S_T}\u200c))"
    + f"{_S_T}{{0,2}}{_cls(t.RIGHT_JOINING)})"
    + f"(?!(?<={_S_VIRAMA}\u200c)(?![\u200c\u200d]))"
    + "|(?<=\u200d)"
    + f"(?!(?<={_S_VIRAMA}\u200d)(?![\u200c\u200d]))"
    + f"(?!(?<={_S_EMOJI_OR_MODIFIER}\u200d){_S_EMOJI})"
    + f"(?!(?<={_S_EMOJI}\ufe0f\u200d){_S_EMOJI})"
    + f"(?!(?<={_cls(t.INDIC_LETTER)}\u200d){_S_VIRAMA})"
    + f"|(?<=[\ufe00-\ufe0f])(?<!{_S_VS_BASE}[\ufe00-\ufe0f])"
    + ")"
)
_ASCII_CONTROL: re.Pattern[str] = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")

# Screen hits are decided one by one (a Python step each, about 1.5 us) while they are sparse,
# as in benign text with a flag or some harakat. Where they come denser than one per
# _DENSE_SPACING characters (hostile text), one _POLICY scan in C does the rest sooner.
_WINDOW = 32
_DENSE_SPACING = 16


def sanitize(text: str) -> str:
    """Return `text` with invisible, smuggling and control characters removed; never raises.

    Idempotent, and the result always encodes as UTF-8. Text that needs no change is
    returned as the same object.
    """
    if text.isascii():
        # Printable ASCII has nothing to remove; only C0 controls and DEL can appear here.
        if text.isprintable() or _ASCII_CONTROL.search(text) is None:
            return text
        return _ASCII_CONTROL.sub("", text)
    hit = _SCREEN.search(text)
    if hit is None:
        return text
    return _apply_policy(text, hit)


def _apply_policy(original: str, hit: re.Match[str]) -> str:
    text = original
    if _ONE_FOR_ONE.search(text, hit.start()) is not None:
        text = _TO_LF.sub("\n", _TO_FFFD.sub("\ufffd", text))
        # Replacement keeps every position, so the screen can go on from the same place.
        next_hit = _SCREEN.search(text, hit.start())
        if next_hit is None:
            return text
        hit = next_hit
    pieces: list[str] = []
    copied = 0  # text[:copied] is in pieces already
    window_start, window_hits = hit.start(), 0
    while True:
        start = hit.start()
        found = _POLICY.match(text, start)
        if found is None:  # the policy keeps this character
            resume = start + 1
        else:
            resume = found.end()
            if found.lastgroup is None:  # not a kept flag: drop the match
                pieces.append(text[copied:start])
                copied = resume
        next_hit = _SCREEN.search(text, resume)
        if next_hit is None:
            if copied == 0:
                return text
            pieces.append(text[copied:])
            return "".join(pieces)
        hit = next_hit
        window_hits += 1
        if window_hits == _WINDOW:
            if hit.start() - window_start < _WINDOW * _DENSE_SPACING:
                break
            window_start, window_hits = hit.start(), 0
    # `pos` leaves text[:pos] as it is in the result, and lookbehinds still see it.
    rest = _POLICY.sub(_KEEP, text, pos=hit.start())
    pieces.append(rest[copied:])
    result = "".join(pieces)
    return original if result == original else result


# --- Control-token detection -----------------------------------------------------------------

_DEFAULT_IGNORABLE: re.Pattern[str] = re.compile(_cls(t.DEFAULT_IGNORABLE) + "+")
_MARKS: _Pattern = regex.compile(r"\p{M}+")
_OPENER: re.Pattern[str] = re.compile(f"[{TOKEN_OPENERS}]")

# Canonical spellings of the bracketed (not <|...|>) tokens, keyed by their shadow form.
_BRACKET_TOKENS = {
    "[inst]": "[INST]",
    "[/inst]": "[/INST]",
    "<<sys>>": "<<SYS>>",
    "<</sys>>": "<</SYS>>",
    "<start_of_turn>": "<start_of_turn>",
    "<end_of_turn>": "<end_of_turn>",
    "[system_prompt]": "[SYSTEM_PROMPT]",
    "[/system_prompt]": "[/SYSTEM_PROMPT]",
    "[available_tools]": "[AVAILABLE_TOOLS]",
    "[/available_tools]": "[/AVAILABLE_TOOLS]",
    "[tool_calls]": "[TOOL_CALLS]",
    "[tool_results]": "[TOOL_RESULTS]",
    "[/tool_results]": "[/TOOL_RESULTS]",
}
_TOKEN: re.Pattern[str] = re.compile(
    # ChatML, Llama 3, Phi, gpt-oss harmony, DeepSeek (after folding) and any other <|word|>.
    r"<\|(?P<word>[a-z][a-z0-9_.-]{0,63})\|>"
    r"|" + "|".join(re.escape(k) for k in _BRACKET_TOKENS)
)


def _shadow(clean: str) -> str:
    """The NFKC-and-casefold-like skeleton used only for detection: ASCII-folded lookalikes."""
    if clean.isascii():
        return clean.lower()
    # Kept joiners, variation selectors and flag tags would split a token; the model's
    # tokenizer may drop them, so the detector does too.
    text = _DEFAULT_IGNORABLE.sub("", clean).translate(NEWER_COMPATIBILITY)
    # unicodedata is Unicode 14, which is fine for normalization: decompositions of assigned
    # characters never change (stability policy), and the few newer compatibility letters
    # that matter here are mapped by NEWER_COMPATIBILITY above. NFKD rather than NFKC
    # because combining marks are dropped next, which needs them decomposed.
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    text = _MARKS.sub("", text)
    return text.translate(CONFUSABLES)


def detect_control_tokens(text: str) -> tuple[str, ...]:
    """Canonical model control tokens spelled in `text`, in order of first appearance.

    Runs on a shadow copy of the sanitized text (so `<|im_<ZWSP>start|>` counts), with
    compatibility forms, case and common lookalikes folded (so `＜｜im_start｜＞` and Cyrillic
    `<|іm_start|>` count). Plain ASCII tokens count as well. Never raises.
    """
    clean = sanitize(text)
    if _OPENER.search(clean) is None:
        return ()
    found: dict[str, None] = {}
    for match in _TOKEN.finditer(_shadow(clean)):
        word = match.group("word")
        token = f"<|{word}|>" if word is not None else _BRACKET_TOKENS[match.group()]
        found.setdefault(token, None)
    return tuple(found)
