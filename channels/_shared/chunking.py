"""Splitting a long reply into parts that each fit a platform's message limit.

Limits differ in unit as well as size: Telegram counts UTF-16 code units (4096), Discord
characters (2000), Twilio 1600 characters. `measure` says how a part is counted and must
add up over concatenation (len, `utf16_len` and UTF-8 byte counts all do).

Cuts fall, by preference, between paragraphs, then lines, then sentences, then words,
and only then between two user-perceived characters: a base character is never parted
from its combining marks, variation selectors, skin-tone modifiers, tag characters or a
ZWJ-joined successor, nor a regional-indicator pair (a flag) or a CRLF. The whitespace at
a cut is dropped; indentation after a line break is kept, since code depends on it.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from channels._shared.markdown import fence_closes, fence_opening

Measure = Callable[[str], int]

TELEGRAM_LIMIT: Final = 4096
DISCORD_LIMIT: Final = 2000
TWILIO_LIMIT: Final = 1600

ZWJ: Final = "\u200d"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _extends(ch: str) -> bool:
    """Whether `ch` belongs to the character before it."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= cp <= 0x1F3FF  # skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
        or cp == 0x200C
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def cluster_bounds(text: str) -> list[int]:
    """Indices where `text` may be cut without breaking a user-perceived character.

    An approximation of UAX #29 extended grapheme clusters that needs no tables beyond
    `unicodedata`; it errs towards keeping characters together.
    """
    bounds = [0]
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        c = text[i]
        pairs = j < n and (
            (c == "\r" and text[j] == "\n")
            or (_regional(c) and _regional(text[j]))
            or ("\ud800" <= c <= "\udbff" and "\udc00" <= text[j] <= "\udfff")
        )
        if pairs:
            j += 1
        while j < n:
            if text[j] == ZWJ:
                j += 1
                if j < n and not text[j].isspace():
                    j += 1
            elif _extends(text[j]):
                j += 1
            else:
                break
        bounds.append(j)
        i = j
    return bounds


# Separators by preference; a cut falls where the match starts.
_SEPARATORS: Final = (
    re.compile(r"\n[ \t]*\n"),
    re.compile(r"\n"),
    re.compile(r"(?<=[.!?…:;])[ \t]+|(?<=[。！？])"),
    re.compile(r"[ \t]+"),
)


def _resume(text: str, cut: int) -> int:
    """Where the next part starts: past the whitespace at the cut, keeping indentation."""
    end = cut
    while end < len(text) and text[end].isspace():
        end += 1
    newline = text.rfind("\n", cut, end)
    return newline + 1 if newline >= 0 else end


def _best_cut(text: str, start: int, end: int, avoid: Callable[[int], bool]) -> int:
    """The preferred cut in text[start:end]; `end` itself if no separator helps."""
    for pattern in _SEPARATORS:
        best = -1
        for match in pattern.finditer(text, start, min(end + 1, len(text))):
            cut = match.start()
            if start < cut <= end and text[start:cut].strip() and not avoid(cut):
                best = cut
        if best > 0:
            return best
    return end


_LANGUAGE: Final = re.compile(r"[A-Za-z0-9_+.#-]{1,32}")


@dataclass(frozen=True, slots=True)
class _Fences:
    """Which fenced code block, if any, is open at each line of a text."""

    starts: list[int]
    ends: list[int]
    before: list[tuple[str, str] | None]
    after: list[tuple[str, str] | None]

    @classmethod
    def scan(cls, text: str) -> _Fences:
        starts, ends, before, after = [], [], [], []
        state: tuple[str, str] | None = None
        pos = 0
        for line in text.split("\n"):
            starts.append(pos)
            ends.append(pos + len(line))
            before.append(state)
            if state is None:
                opening = fence_opening(line)
                if opening is not None:
                    fence, info = opening
                    # Reopened with its language only when that is a plain name: any
                    # other info string would be repeated as text in the next part.
                    language = info if _LANGUAGE.fullmatch(info) else ""
                    state = (fence, fence + language)
            elif fence_closes(line, state[0]):
                state = None
            after.append(state)
            pos += len(line) + 1
        return cls(starts, ends, before, after)

    def entering(self, pos: int) -> tuple[str, str] | None:
        return self.before[bisect_right(self.starts, pos) - 1]

    def awkward(self, cut: int) -> bool:
        """Whether a cut here leaves an empty code block: after an opening fence line,
        or before the line that closes the block."""
        line = bisect_right(self.starts, cut) - 1
        if cut != self.ends[line] or self.after[line] is None:
            return False
        return self.before[line] is None or (
            line + 1 < len(self.after) and self.after[line + 1] is None
        )

    def leaving(self, pos: int) -> tuple[str, str] | None:
        line = bisect_right(self.starts, pos) - 1
        return self.after[line] if pos == self.ends[line] else self.before[line]


def chunk(text: str, limit: int, *, measure: Measure = len) -> list[str]:
    """Split `text` into non-empty parts with measure(part) <= limit.

    A part that ends inside a fenced code block is closed with its fence and the next
    part reopens it (with the same info string), so each part renders on its own.
    Raises ValueError only when `limit` cannot hold a single character.
    """
    if not text.strip():
        return []
    if measure(text) <= limit:
        return [text]
    bounds = cluster_bounds(text)
    totals = [0]
    for a, b in itertools.pairwise(bounds):
        totals.append(totals[-1] + measure(text[a:b]))
    fences = _Fences.scan(text)
    parts: list[str] = []
    n = len(text)
    start = _resume(text, 0)
    while start < n:
        entering = fences.entering(start)
        prefix = f"{entering[1]}\n" if entering else ""
        fenced, reserve = True, 0
        while True:
            budget = limit - measure(prefix) - reserve
            first = bisect_right(bounds, start)  # index in `bounds` of the first cut after start
            last = bisect_right(totals, totals[first - 1] + budget) - 1
            if last < first:
                if fenced and (prefix or reserve):
                    fenced, prefix, reserve = False, "", 0  # no room for fences: plain text
                    continue
                raise ValueError(f"limit {limit} cannot hold {text[start : bounds[first]]!r}")
            end = bounds[last]
            cut = end if end == n else _best_cut(text, start, end, fences.awkward)
            leaving = fences.leaving(cut) if fenced else None
            suffix = f"\n{leaving[0]}" if leaving else ""
            body = text[start:cut].rstrip()
            part = prefix + body + suffix
            if measure(part) <= limit:
                break
            if measure(suffix) > reserve:
                reserve = measure(suffix)
            elif fenced:
                fenced, prefix, reserve = False, "", 0
            else:
                raise ValueError(f"measure is not additive: {measure(part)} > {limit}")
        if body:
            parts.append(part)
            start = _resume(text, cut)
        else:  # only indentation fitted: drop it
            start = cut
            while start < n and text[start].isspace():
                start += 1
    return parts


_HTML_TOKEN: Final = re.compile(
    r"<(?P<close>/)?(?P<name>[A-Za-z][A-Za-z0-9-]*)\b[^<>]*>|&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{0,31});"
)
_SENTENCE_END: Final = frozenset(".!?…:;")


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    kind: str  # "open", "close", "entity" or "text" (one cluster)
    name: str = ""

    @property
    def blank(self) -> bool:
        return self.kind == "text" and self.text.isspace()

    @property
    def visible(self) -> bool:
        return self.kind == "entity" or (self.kind == "text" and not self.text.isspace())


def _html_tokens(html: str) -> list[_Token]:
    tokens: list[_Token] = []

    def text(segment: str) -> None:
        bounds = cluster_bounds(segment)
        tokens.extend(_Token(segment[a:b], "text") for a, b in itertools.pairwise(bounds))

    pos = 0
    for match in _HTML_TOKEN.finditer(html):
        text(html[pos : match.start()])
        if match["name"] is None:
            tokens.append(_Token(match[0], "entity"))
        else:
            kind = "close" if match["close"] else "open"
            tokens.append(_Token(match[0], kind, match["name"].lower()))
        pos = match.end()
    text(html[pos:])
    return tokens


def _apply(stack: tuple[_Token, ...], token: _Token) -> tuple[_Token, ...]:
    if token.kind == "open":
        return (*stack, token)
    if token.kind == "close":
        for depth in range(len(stack) - 1, -1, -1):
            if stack[depth].name == token.name:
                return stack[:depth]
    return stack


def _closing(stack: tuple[_Token, ...]) -> str:
    return "".join(f"</{tag.name}>" for tag in reversed(stack))


def chunk_telegram_html(
    html: str, limit: int = TELEGRAM_LIMIT, *, measure: Measure = utf16_len
) -> list[str]:
    """Split Telegram HTML into parts that are each valid HTML within `limit`.

    Cuts never fall inside a tag or an entity; tags open at a cut are closed at the end
    of the part and reopened, attributes and all, at the start of the next. The limit
    is applied to the raw HTML, which is never shorter than the text Telegram counts
    after parsing, so a part that fits here fits there. Raises ValueError only when
    `limit` cannot hold the open tags plus one character.
    """
    if not html.strip():
        return []
    if measure(html) <= limit:
        return [html]
    tokens = _html_tokens(html)
    parts: list[str] = []
    stack: tuple[_Token, ...] = ()
    i, n = 0, len(tokens)
    while i < n and tokens[i].blank:
        i += 1
    while i < n:
        reopen = "".join(tag.text for tag in stack)
        used = measure(reopen)
        stacks = [stack]  # stacks[k]: open tags after tokens[i : i + k]
        best: dict[int, int] = {}  # preference -> cut (token index)
        last_fit = -1
        seen_visible = False
        j = i
        while j < n:
            token = tokens[j]
            if seen_visible and token.blank and not tokens[j - 1].blank:
                best[_preference(tokens, j)] = j
            after = _apply(stacks[-1], token)
            if used + measure(token.text) + measure(_closing(after)) > limit:
                break
            used += measure(token.text)
            stacks.append(after)
            j += 1
            seen_visible = seen_visible or token.visible
            if seen_visible:
                last_fit = j
        if j == n:
            cut = n
        elif best:
            cut = best[max(best)]
        elif last_fit > i:
            cut = last_fit
            while cut - 1 > i and tokens[cut - 1].kind == "open":
                cut -= 1  # an opening tag goes with its content into the next part
        else:
            raise ValueError(f"limit {limit} cannot hold the open tags and one character")
        end_stack = stacks[cut - i]
        body = "".join(token.text for token in tokens[i:cut])
        if any(token.visible for token in tokens[i:cut]):
            parts.append(reopen + body + _closing(end_stack))
        stack = end_stack
        i = cut
        newline = -1
        while i < n and tokens[i].blank:
            if "\n" in tokens[i].text:
                newline = i
            i += 1
        if newline >= 0:
            i = newline + 1
    return parts


def _preference(tokens: list[_Token], j: int) -> int:
    """How good a cut before the whitespace starting at tokens[j] is (higher is better)."""
    run = []
    k = j
    while k < len(tokens) and tokens[k].blank:
        run.append(tokens[k].text)
        k += 1
    space = "".join(run)
    if space.count("\n") >= 2:
        return 3
    if "\n" in space:
        return 2
    before = tokens[j - 1].text
    return 1 if before and before[-1] in _SENTENCE_END else 0
