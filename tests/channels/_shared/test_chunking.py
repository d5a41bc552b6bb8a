"""Splitting replies to fit platform limits: plain values, then properties."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels._shared.chunking import (
    chunk,
    chunk_telegram_html,
    cluster_bounds,
    utf16_len,
)
from channels._shared.markdown import to_telegram_html
from tests.channels._shared.test_markdown import balanced

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 11 UTF-16 units
THUMB = "\U0001f44d\U0001f3fd"
FLAG = "\U0001f1eb\U0001f1f7"
ACCENTED = "e\u0301\u0323"


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("a") == 1
    assert utf16_len("\U0001f600") == 2
    assert utf16_len(FAMILY) == 11


def test_clusters_keep_emoji_sequences_and_combining_marks_whole() -> None:
    text = f"a{FAMILY}{THUMB}{FLAG}{ACCENTED}\r\n"
    bounds = cluster_bounds(text)
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert pieces == ["a", FAMILY, THUMB, FLAG, ACCENTED, "\r\n"]


def test_short_text_is_one_part_and_blank_text_none() -> None:
    assert chunk("hello", 10) == ["hello"]
    assert chunk("", 10) == []
    assert chunk(" \n ", 10) == []


def test_paragraphs_are_preferred_over_lines_and_words() -> None:
    text = "one two\nthree\n\nfour five six"
    assert chunk(text, 16) == ["one two\nthree", "four five six"]


def test_lines_then_sentences_then_words() -> None:
    assert chunk("aaa bbb\nccc ddd", 10) == ["aaa bbb", "ccc ddd"]
    assert chunk("One two. Three four five", 16) == ["One two.", "Three four five"]
    assert chunk("alpha beta gamma", 11) == ["alpha beta", "gamma"]


def test_a_word_longer_than_the_limit_is_cut_between_characters() -> None:
    assert chunk("abcdefgh", 3) == ["abc", "def", "gh"]


def test_telegram_limit_is_counted_in_utf16_units() -> None:
    parts = chunk(FAMILY * 3, 12, measure=utf16_len)
    assert parts == [FAMILY] * 3


def test_a_code_block_is_closed_and_reopened_across_parts() -> None:
    code = "\n".join(f"line {i}" for i in range(6))
    text = f"Intro.\n\n```python\n{code}\n```\n\nOutro."
    parts = chunk(text, 30)
    assert all(len(part) <= 30 for part in parts)
    inside = [part for part in parts if "line" in part]
    assert len(inside) > 1
    for part in inside:
        assert part.startswith("```python\n") and part.endswith("\n```")
    assert parts[0] == "Intro." and parts[-1] == "Outro."


def test_indentation_after_a_cut_is_kept() -> None:
    text = "```\ndef f():\n    return 1\n```"
    parts = chunk(text, 22)
    assert any("\n    return 1" in part for part in parts)


def test_a_limit_below_one_character_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        chunk("\U0001f600\U0001f600", 1, measure=utf16_len)


def test_telegram_html_tags_are_closed_and_reopened() -> None:
    html = "<b>" + "word " * 10 + "</b>"
    parts = chunk_telegram_html(html, 30)
    assert len(parts) > 1
    for part in parts:
        assert part.startswith("<b>") and part.endswith("</b>") and len(part) <= 30


def test_telegram_html_never_cuts_an_entity_or_a_tag() -> None:
    html = '<a href="https://e.com/?a=1&amp;b=2">' + "&amp;" * 20 + "</a>"
    for part in chunk_telegram_html(html, 60):
        assert balanced(part)
        assert part.count("&") == part.count("&amp;")
        assert part.startswith('<a href="https://e.com/?a=1&amp;b=2">')


def test_telegram_html_reopens_a_code_block_with_its_language() -> None:
    md = "```py\n" + "\n".join(f"x{i} = {i}" for i in range(30)) + "\n```"
    parts = chunk_telegram_html(to_telegram_html(md), 120)
    assert len(parts) > 1
    for part in parts:
        assert part.startswith('<pre><code class="language-py">')
        assert part.endswith("</code></pre>")


# Properties ----------------------------------------------------------------

ATOMS = [FAMILY, THUMB, FLAG, ACCENTED, "\U0001f600", "é", "word", "a", " ", " ", "\n", "\n\n"]
ATOMS += [".", "```", "```py\n", "\n```\n", "<", "&", "*", "_", "x" * 30]
TEXTS = st.lists(st.sampled_from(ATOMS), max_size=80).map("".join)
MEASURES = st.sampled_from([len, utf16_len])


def _cuts_a_cluster(part: str) -> bool:
    """Whether `part` starts with a character that extends the one before it, or ends
    with a joiner that expects one after it."""
    return part[0] in "\u200d\u0301\u0323\U0001f3fd\U0001f1f7" or part[-1] == "\u200d"


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.integers(min_value=16, max_value=80), MEASURES)
def test_parts_fit_are_nonempty_and_keep_clusters(
    text: str, limit: int, measure: Callable[[str], int]
) -> None:
    parts = chunk(text, limit, measure=measure)
    for part in parts:
        assert part.strip()
        assert measure(part) <= limit
        assert not _cuts_a_cluster(part)
        assert not re.search("[\ud800-\udfff]", part)
    # Every family emoji in the text survives whole in some part.
    assert sum(part.count(FAMILY) for part in parts) == text.count(FAMILY)


@settings(max_examples=200, deadline=None)
@given(TEXTS, st.integers(min_value=16, max_value=80))
def test_parts_without_fences_join_back_to_the_text(text: str, limit: int) -> None:
    text = text.replace("`", "")
    joined = "".join(chunk(text, limit))
    assert re.sub(r"\s+", "", joined) == re.sub(r"\s+", "", text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([*ATOMS, "**b**", "`c`", "[l](https://e.com)", "> q\n"]), max_size=60
    ).map("".join),
    st.integers(min_value=90, max_value=200),
)
def test_telegram_html_parts_are_balanced_and_fit(md: str, limit: int) -> None:
    html = to_telegram_html(md)
    parts = chunk_telegram_html(html, limit)
    for part in parts:
        assert utf16_len(part) <= limit
        assert balanced(part)
        assert re.sub(r"<[^>]*>", "", part).strip()
        assert not re.search(r"&(?!amp;|lt;|gt;|quot;|#x27;)", part)


def test_a_fence_whose_info_is_not_a_language_is_reopened_bare() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    text = f"{family}{family}\n```{family}\n\n{family}"
    parts = chunk(text, 29)
    assert sum(part.count(family) for part in parts) == text.count(family)
