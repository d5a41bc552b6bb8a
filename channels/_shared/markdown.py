"""Markdown as an LLM writes it, parsed once into typed blocks and rendered per platform.

`parse` turns text into a tuple of frozen blocks (paragraphs, headings, fenced code,
lists, quotes, rules) whose inline content is a tuple of spans (text, code, bold /
italic / strike, links). The renderers are pure and never raise: a marker without its
partner (`**open`, `` `tick ``, `[label](`) stays literal text.

Scope, chosen for chat replies rather than full CommonMark: no indented code blocks, no
setext headings, no HTML passthrough (it is text, and escaped). Pipe tables become code
blocks so their columns stay aligned in monospace. Nesting deeper than `MAX_DEPTH`
(quotes, lists, inline styles) is kept as literal text, which bounds recursion.

`to_plain` writes WhatsApp's own markers (*bold*, _italic_, ~strike~, `code`, ```mono```,
"> " quotes), since WhatsApp renders them and on SMS they read as ordinary punctuation;
links become "label (url)" because neither can hide a URL behind a label.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

MAX_DEPTH: Final = 8

Style: TypeAlias = Literal["bold", "italic", "strike"]


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Code:
    text: str


@dataclass(frozen=True, slots=True)
class Styled:
    style: Style
    children: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Link:
    url: str
    children: tuple[Span, ...]


Span: TypeAlias = Text | Code | Styled | Link


@dataclass(frozen=True, slots=True)
class Paragraph:
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Heading:
    level: int
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class CodeBlock:
    code: str
    language: str = ""


@dataclass(frozen=True, slots=True)
class ListBlock:
    ordered: bool
    start: int
    items: tuple[tuple[Block, ...], ...]


@dataclass(frozen=True, slots=True)
class Quote:
    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    pass


Block: TypeAlias = Paragraph | Heading | CodeBlock | ListBlock | Quote | Rule

# --------------------------------------------------------------------------- blocks

FENCE_OPEN: Final = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_FENCE_CLOSE: Final = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*$")
_HEADING: Final = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_HEADING_TAIL: Final = re.compile(r"(?:^|[ \t]+)#+$")
_QUOTE: Final = re.compile(r"^ {0,3}>[ \t]?(.*)$")
_RULE: Final = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_ITEM: Final = re.compile(
    r"^(?P<indent>[ \t]*)(?P<marker>[-*+]|(?P<num>\d{1,9})[.)])(?P<gap>[ \t]+)"
)
_TABLE_ROW: Final = re.compile(r"^ {0,3}\|")
_TABLE_SEP: Final = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_LANGUAGE: Final = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")


def fence_opening(line: str) -> tuple[str, str] | None:
    """The fence characters and info string when `line` opens a fenced code block."""
    match = FENCE_OPEN.match(line)
    if match is None:
        return None
    fence, info = match["fence"], match["info"].strip()
    if fence[0] == "`" and "`" in info:
        return None
    return fence, info


def fence_closes(line: str, fence: str) -> bool:
    """Whether `line` closes a block opened by `fence` (same character, at least as long)."""
    match = _FENCE_CLOSE.match(line)
    return match is not None and match["fence"][0] == fence[0] and len(match["fence"]) >= len(fence)


def parse(md: str) -> tuple[Block, ...]:
    """Parse Markdown into blocks; never raises."""
    lines = md.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return _blocks(lines, 0)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _item(line: str) -> re.Match[str] | None:
    match = _ITEM.match(line)
    if match is None or _indent(line) > 3 or _RULE.match(line):
        return None
    return match


def _starts_block(line: str) -> bool:
    return bool(
        fence_opening(line)
        or _HEADING.match(line)
        or _QUOTE.match(line)
        or _RULE.match(line)
        or _item(line)
    )


def _blocks(lines: Sequence[str], depth: int) -> tuple[Block, ...]:
    out: list[Block] = []
    i, n = 0, len(lines)
    nested = depth < MAX_DEPTH
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        opening = fence_opening(line)
        if opening is not None:
            fence, info = opening
            body: list[str] = []
            i += 1
            while i < n and not fence_closes(lines[i], fence):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence; an unclosed block runs to the end, as in CommonMark
            out.append(CodeBlock("\n".join(body), info.split()[0] if info else ""))
            continue
        heading = _HEADING.match(line)
        if heading is not None:
            title = _HEADING_TAIL.sub("", heading[2] or "")
            out.append(Heading(len(heading[1]), _inline(title, depth)))
            i += 1
            continue
        if _RULE.match(line):
            out.append(Rule())
            i += 1
            continue
        if nested and _QUOTE.match(line):
            quoted: list[str] = []
            while i < n and (match := _QUOTE.match(lines[i])) is not None:
                quoted.append(match[1])
                i += 1
            out.append(Quote(_blocks(quoted, depth + 1)))
            continue
        if nested and _item(line) is not None:
            block, i = _list(lines, i, depth)
            out.append(block)
            continue
        if _TABLE_ROW.match(line) and i + 1 < n and _TABLE_SEP.match(lines[i + 1]):
            rows: list[str] = []
            while i < n and _TABLE_ROW.match(lines[i]):
                rows.append(lines[i].strip())
                i += 1
            out.append(CodeBlock("\n".join(rows)))
            continue
        para = [line.strip()]
        i += 1
        while i < n and lines[i].strip() and not (nested and _starts_block(lines[i])):
            para.append(lines[i].strip())
            i += 1
        out.append(Paragraph(_inline("\n".join(para), depth)))
    return tuple(out)


def _list(lines: Sequence[str], i: int, depth: int) -> tuple[ListBlock, int]:
    first = _item(lines[i])
    assert first is not None
    ordered = first["num"] is not None
    start = int(first["num"]) if ordered else 1
    items: list[tuple[Block, ...]] = []
    n = len(lines)
    while i < n:
        match = _item(lines[i])
        if match is None or (match["num"] is not None) != ordered:
            break
        marker_indent = _indent(lines[i])
        content_indent = match.end()
        body = [lines[i][match.end() :]]
        i += 1
        while i < n:
            line = lines[i]
            if line.strip():
                if _indent(line) <= marker_indent:
                    break
                body.append(line[min(_indent(line), content_indent) :])
                i += 1
                continue
            # A blank line continues the item only when indented content follows it.
            j = i
            while j < n and not lines[j].strip():
                j += 1
            if j < n and _indent(lines[j]) > marker_indent:
                body.extend("" for _ in range(i, j))
                i = j
                continue
            break
        items.append(_blocks(body, depth + 1))
        # Blank lines between items of one list keep the list going.
        j = i
        while j < n and not lines[j].strip():
            j += 1
        nxt = _item(lines[j]) if i < j < n else None
        if nxt is not None and (nxt["num"] is not None) == ordered:
            i = j
    return ListBlock(ordered, start, tuple(items)), i


# --------------------------------------------------------------------------- inline

_ESCAPABLE: Final = frozenset("\\`*_{}[]()#+-.!~|<>\"'")
_AUTOLINK: Final = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]+)>")
_URL_CONTROL: Final = re.compile(r"[\x00-\x20\x7f]")
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def _run(s: str, i: int, ch: str) -> int:
    j = i
    while j < len(s) and s[j] == ch:
        j += 1
    return j - i


def _code_end(s: str, i: int, run: int) -> int | None:
    """The index just after the backtick run closing a code span opened at `i`."""
    j = i + run
    while True:
        k = s.find("`" * run, j)
        if k < 0:
            return None
        close = _run(s, k, "`")
        if close == run:
            return k + run
        j = k + close


class _Inline:
    """One pass over one string; caches delimiters found to have no closer."""

    def __init__(self, s: str, depth: int, in_link: bool) -> None:
        self.s = s
        self.depth = depth
        self.in_link = in_link
        self.hopeless: set[tuple[str, int]] = set()

    def closer(self, start: int, ch: str, size: int) -> int | None:
        if (ch, size) in self.hopeless:
            return None
        s, j, n = self.s, start, len(self.s)
        while j < n:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == "`":
                run = _run(s, j, "`")
                j = _code_end(s, j, run) or j + run
                continue
            if c == ch:
                run = _run(s, j, ch)
                if (run == 1) == (size == 1):
                    k = j + run - size
                    after = j + run
                    if (
                        k > start
                        and not s[k - 1].isspace()
                        and not (ch == "_" and after < n and s[after].isalnum())
                    ):
                        return k
                j += run
                continue
            j += 1
        self.hopeless.add((ch, size))
        return None

    def link(self, i: int) -> tuple[Link, int] | None:
        """A `[label](url)` starting at `i` (the bracket), and the index after it."""
        s, n = self.s, len(self.s)
        level, j = 0, i
        while j < n:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == "[":
                level += 1
            elif c == "]":
                level -= 1
                if level == 0:
                    break
            j += 1
        if j >= n - 1 or s[j + 1] != "(":
            return None
        close, level = j + 2, 1
        while close < n:
            if s[close] == "(":
                level += 1
            elif s[close] == ")":
                level -= 1
                if level == 0:
                    break
            close += 1
        if close >= n:
            return None
        target = s[j + 2 : close].strip()
        if target.startswith("<") and target.endswith(">"):
            target = target[1:-1]
        url = target.split(maxsplit=1)[0] if target else ""
        if not url or _URL_CONTROL.search(url):
            return None
        label = _Inline(s[i + 1 : j], self.depth + 1, True).spans() or (Text(url),)
        return Link(url, label), close + 1

    def spans(self) -> tuple[Span, ...]:
        s, n = self.s, len(self.s)
        out: list[Span] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                out.append(Text("".join(buf)))
                buf.clear()

        deeper = self.depth < MAX_DEPTH
        i = 0
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n and s[i + 1] in _ESCAPABLE:
                buf.append(s[i + 1])
                i += 2
                continue
            if c == "`":
                run = _run(s, i, "`")
                end = _code_end(s, i, run)
                if end is None:
                    buf.append("`" * run)
                    i += run
                    continue
                code = s[i + run : end - run].replace("\n", " ")
                if len(code) > 2 and code[0] == " " and code[-1] == " " and code.strip():
                    code = code[1:-1]
                flush()
                out.append(Code(code))
                i = end
                continue
            if deeper and c in "*_~":
                found = self.styled(i)
                if found is not None:
                    flush()
                    out.append(found[0])
                    i = found[1]
                    continue
                run = _run(s, i, c)
                buf.append(c * run)
                i += run
                continue
            if (
                deeper
                and not self.in_link
                and (c == "[" or (c == "!" and i + 1 < n and s[i + 1] == "["))
            ):
                found_link = self.link(i + (c == "!"))
                if found_link is not None:
                    flush()
                    out.append(found_link[0])
                    i = found_link[1]
                    continue
            if c == "<" and not self.in_link:
                auto = _AUTOLINK.match(s, i)
                if auto is not None:
                    flush()
                    out.append(Link(auto[1], (Text(auto[1]),)))
                    i = auto.end()
                    continue
            buf.append(c)
            i += 1
        flush()
        return tuple(out)

    def styled(self, i: int) -> tuple[Styled, int] | None:
        s, n = self.s, len(self.s)
        c = s[i]
        run = _run(s, i, c)
        style: Style
        if c == "~":
            if run != 2:
                return None
            size, style = 2, "strike"
        else:
            size = 2 if run >= 2 else 1
            style = "bold" if size == 2 else "italic"
        start = i + size
        if start >= n or s[start].isspace():
            return None
        if c == "_" and i > 0 and s[i - 1].isalnum():
            return None
        close = self.closer(start, c, size)
        if close is None:
            return None
        inner = _Inline(s[start:close], self.depth + 1, self.in_link).spans()
        return Styled(style, inner), close + size


def _inline(s: str, depth: int) -> tuple[Span, ...]:
    return _Inline(s, depth, False).spans()


# --------------------------------------------------------------------------- rendering


def _scheme(url: str) -> str:
    match = _SCHEME.match(url)
    return match[1].lower() if match else ""


def plain_text(spans: Sequence[Span]) -> str:
    """The visible text of spans, with all formatting dropped."""
    parts: list[str] = []
    for span in spans:
        if isinstance(span, Text | Code):
            parts.append(span.text)
        else:
            parts.append(plain_text(span.children))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class _Dialect:
    """How one platform writes each construct; `text` escapes raw text."""

    text: Callable[[str], str]
    code: Callable[[str], str]
    style: Callable[[Style, str], str]
    link: Callable[[Link, str], str]
    heading: Callable[[str], str]
    code_block: Callable[[CodeBlock], str]
    quote: Callable[[str, int], str]
    rule: str = "──────────"


def _spans(d: _Dialect, spans: Sequence[Span], active: frozenset[Style]) -> str:
    out: list[str] = []
    for span in spans:
        if isinstance(span, Text):
            out.append(d.text(span.text))
        elif isinstance(span, Code):
            out.append(d.code(span.text))
        elif isinstance(span, Styled):
            inner = _spans(d, span.children, active | {span.style})
            # Repeating a style inside itself (bold in a bold heading) breaks Slack and
            # WhatsApp markers, and adds nothing anywhere.
            out.append(inner if span.style in active else d.style(span.style, inner))
        else:
            out.append(d.link(span, _spans(d, span.children, active)))
    return "".join(out)


def _indent_after_first(text: str, marker: str) -> str:
    pad = " " * len(marker)
    lines = text.split("\n")
    return "\n".join([marker + lines[0], *(pad + line if line else line for line in lines[1:])])


def _render(d: _Dialect, blocks: Sequence[Block], quote_depth: int = 0, sep: str = "\n\n") -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Paragraph):
            out.append(_spans(d, block.spans, frozenset()))
        elif isinstance(block, Heading):
            title = _spans(d, block.spans, frozenset({"bold"}))
            out.append(d.heading(title) if title.strip() else "")
        elif isinstance(block, CodeBlock):
            # An empty block would be an empty entity, which Telegram refuses.
            out.append(d.code_block(block) if block.code.strip() else "")
        elif isinstance(block, ListBlock):
            items = []
            for number, item in enumerate(block.items, start=block.start):
                marker = f"{number}. " if block.ordered else "• "
                rendered = _render(d, item, quote_depth, "\n")
                items.append(_indent_after_first(rendered, marker))
            out.append("\n".join(items))
        elif isinstance(block, Quote):
            out.append(d.quote(_render(d, block.blocks, quote_depth + 1), quote_depth))
        else:
            out.append(d.rule)
    return sep.join(part for part in out if part)


# Telegram -------------------------------------------------------------------

TELEGRAM_SCHEMES: Final = frozenset({"http", "https", "tg", "mailto"})


def _tg_text(s: str) -> str:
    return html.escape(s, quote=False)


def _tg_link(link: Link, label: str) -> str:
    if _scheme(link.url) in TELEGRAM_SCHEMES:
        return f'<a href="{html.escape(link.url, quote=True)}">{label}</a>'
    return f"{label} ({_tg_text(link.url)})"


def _tg_code_block(block: CodeBlock) -> str:
    code = _tg_text(block.code)
    if _LANGUAGE.fullmatch(block.language):
        return f'<pre><code class="language-{block.language}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


_TG_TAGS: Final[dict[Style, str]] = {"bold": "b", "italic": "i", "strike": "s"}

_TELEGRAM: Final = _Dialect(
    text=_tg_text,
    code=lambda s: f"<code>{_tg_text(s)}</code>",
    style=lambda style, inner: f"<{_TG_TAGS[style]}>{inner}</{_TG_TAGS[style]}>",
    link=_tg_link,
    heading=lambda inner: f"<b>{inner}</b>",
    code_block=_tg_code_block,
    # Telegram does not nest blockquotes; an inner quote joins the outer one.
    quote=lambda inner, depth: f"<blockquote>{inner}</blockquote>" if depth == 0 else inner,
)


def to_telegram_html(md: str) -> str:
    """Telegram `parse_mode=HTML`: text escaped, only http/https/tg/mailto links active."""
    return _render(_TELEGRAM, parse(md))


# Slack ----------------------------------------------------------------------

SLACK_SCHEMES: Final = frozenset({"http", "https", "mailto"})
_SLACK_MARKS: Final[dict[Style, str]] = {"bold": "*", "italic": "_", "strike": "~"}


def _slack_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(link: Link, label: str) -> str:
    if _scheme(link.url) not in SLACK_SCHEMES:
        return f"{label} ({_slack_text(link.url)})"
    url = _slack_text(link.url).replace("|", "%7C")
    text = _slack_text(plain_text(link.children))
    return f"<{url}>" if text == link.url else f"<{url}|{text}>"


def _quote_lines(inner: str, depth: int) -> str:
    if depth:
        return inner
    return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))


_SLACK: Final = _Dialect(
    text=_slack_text,
    code=lambda s: f"`{_slack_text(s)}`",
    style=lambda style, inner: f"{_SLACK_MARKS[style]}{inner}{_SLACK_MARKS[style]}",
    link=_slack_link,
    heading=lambda inner: f"*{inner}*",
    code_block=lambda block: f"```\n{_slack_text(block.code)}\n```",
    quote=_quote_lines,
)


def to_slack_mrkdwn(md: str) -> str:
    """Slack mrkdwn: &, <, > escaped; links as <url|text>, only http/https/mailto."""
    return _render(_SLACK, parse(md))


# Plain text / WhatsApp -------------------------------------------------------


def _plain_link(link: Link, label: str) -> str:
    return link.url if plain_text(link.children) == link.url else f"{label} ({link.url})"


_PLAIN: Final = _Dialect(
    text=lambda s: s,
    code=lambda s: f"`{s}`",
    style=lambda style, inner: f"{_SLACK_MARKS[style]}{inner}{_SLACK_MARKS[style]}",
    link=_plain_link,
    heading=lambda inner: f"*{inner}*",
    code_block=lambda block: f"```\n{block.code}\n```",
    quote=_quote_lines,
)


def to_plain(md: str) -> str:
    """Plain text with WhatsApp's markers; links spelled out as "label (url)"."""
    return _render(_PLAIN, parse(md))
