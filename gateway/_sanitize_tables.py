"""Character classes for the sanitizer, derived from the `regex` library's Unicode database.

The interpreter's own `unicodedata` is Unicode 14 on Python 3.11: it calls every emoji added
since then unassigned and knows nothing newer. `regex` carries its own, newer tables, so the
policy is written against `regex` properties (`\\p{DI}`, `\\p{jt=D}`, `\\p{ExtPict}` ...).

The stdlib `re` engine scans a plain character class three to five times faster than `regex`
scans a property class, so the sanitizer's screen (a superset of what the policy may change)
is an `re` class whose ranges are enumerated here, once, from the same `regex` properties.
Enumeration covers planes 0, 1 and 14, where Unicode keeps every property used here; the
stability-guaranteed sets outside them (private use, noncharacters, surrogates) are constants.
tests/gateway/test_sanitize.py checks both claims against the full code space.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable

import regex

# Planes 0 and 1 plus the tag/variation-selector block of plane 14.
_UNIVERSE_SPANS = ((0x0000, 0x20000), (0xE0000, 0xE1000))

# Fixed forever by the Unicode stability policy, so spelled out rather than enumerated.
PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
SURROGATES = ((0xD800, 0xDFFF),)
NONCHARACTERS = (
    (0xFDD0, 0xFDEF),
    *((plane | 0xFFFE, plane | 0xFFFF) for plane in range(0, 0x110000, 0x10000)),
)

JOINERS = ((0x200C, 0x200D),)
BMP_VARIATION_SELECTORS = ((0xFE00, 0xFE0F),)
# C0 and C1 controls other than tab, line feed and carriage return.
CONTROLS = ((0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x9F))
LINE_SEPARATORS = ((0x2028, 0x2029),)
# Interlinear annotation anchors: Cf but not Default_Ignorable, and Unicode says they are
# for internal use only. Renderers may hide the annotation text between them.
ANNOTATION = ((0xFFF9, 0xFFFB),)

Ranges = tuple[tuple[int, int], ...]


def _universe() -> str:
    codes = array("I")
    for start, stop in _UNIVERSE_SPANS:
        codes.extend(range(start, stop))
    # surrogatepass: the universe includes the surrogate code points, which are not UTF-32.
    encoding = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    return codes.tobytes().decode(encoding, "surrogatepass")


def ranges_matching(pattern: str, universe: str) -> Ranges:
    """Inclusive code point ranges of `universe` whose characters match `pattern` (`regex`)."""
    found: list[tuple[int, int]] = []
    for match in regex.finditer(pattern + "+", universe, flags=regex.V1):
        first = ord(match.group()[0])
        last = ord(match.group()[-1])
        if found and found[-1][1] + 1 == first:
            found[-1] = (found[-1][0], last)
        else:
            found.append((first, last))
    return tuple(found)


def merge(*groups: Iterable[tuple[int, int]]) -> Ranges:
    """Union of inclusive ranges, sorted and coalesced."""
    spans = sorted(span for group in groups for span in group)
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return tuple(merged)


def subtract(ranges: Ranges, removed: Ranges) -> Ranges:
    """The code points of `ranges` that are not in `removed`."""
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        start = first
        for r_first, r_last in removed:
            if r_last < start or r_first > last:
                continue
            if r_first > start:
                out.append((start, r_first - 1))
            start = max(start, r_last + 1)
        if start <= last:
            out.append((start, last))
    return tuple(out)


def class_body(ranges: Ranges) -> str:
    """The inside of a `re` character class matching exactly `ranges`."""
    return "".join(
        f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
        for first, last in ranges
    )


def regex_unicode_version() -> str:
    """The newest Unicode version whose new scripts the installed `regex` knows."""
    # One script or block introduced by each version; regex rejects unknown property values.
    probes = (
        ("17.0", r"\p{Script=Sidetic}"),
        ("16.0", r"\p{Script=Garay}"),
        ("15.1", r"\p{Block=CJK_Unified_Ideographs_Extension_I}"),
        ("15.0", r"\p{Script=Kawi}"),
        ("14.0", r"\p{Script=Vithkuqi}"),
        ("13.0", r"\p{Script=Yezidi}"),
    )
    for version, probe in probes:
        try:
            regex.compile(probe)
        except regex.error:
            continue
        return version
    return "older than 13.0"


_U = _universe()

DEFAULT_IGNORABLE = ranges_matching(r"\p{DI}", _U)
VIRAMA = ranges_matching(r"\p{ccc=9}", _U)
LEFT_JOINING = ranges_matching(r"[\p{jt=L}\p{jt=D}]", _U)
RIGHT_JOINING = ranges_matching(r"[\p{jt=R}\p{jt=D}]", _U)
TRANSPARENT = ranges_matching(r"\p{jt=T}", _U)
EXTENDED_PICTOGRAPHIC = ranges_matching(r"\p{ExtPict}", _U)
EMOJI_MODIFIER = ranges_matching(r"\p{EMod}", _U)
# Letters of the Indic blocks (Devanagari to Sinhala): the screen's cheap stand-in for the
# policy's "any letter" before a ZWJ that precedes a virama (Bengali ra + ZWJ + virama).
INDIC_LETTER = ranges_matching(r"[\p{L}&&[\u0900-\u0DFF]]", _U)

# Everything the policy removes or replaces regardless of its neighbours.
UNCONDITIONAL = merge(
    subtract(DEFAULT_IGNORABLE, merge(JOINERS, BMP_VARIATION_SELECTORS)),
    CONTROLS,
    LINE_SEPARATORS,
    ANNOTATION,
    PRIVATE_USE,
    SURROGATES,
    NONCHARACTERS,
)

del _U
