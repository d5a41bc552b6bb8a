"""Markdown parsing and per-platform rendering, checked with plain values."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from channels._shared.markdown import (
    Code,
    CodeBlock,
    Heading,
    Link,
    ListBlock,
    Paragraph,
    Quote,
    Styled,
    Text,
    parse,
    to_plain,
    to_slack_mrkdwn,
    to_telegram_html,
)


def test_inline_styles_parse_into_typed_spans() -> None:
    assert parse("a **b** *c* _d_ ~~e~~ `f`") == (
        Paragraph(
            (
                Text("a "),
                Styled("bold", (Text("b"),)),
                Text(" "),
                Styled("italic", (Text("c"),)),
                Text(" "),
                Styled("italic", (Text("d"),)),
                Text(" "),
                Styled("strike", (Text("e"),)),
                Text(" "),
                Code("f"),
            )
        ),
    )


def test_blocks_parse_into_headings_code_lists_and_quotes() -> None:
    md = "# Title\n\n```py\nx = 1\n```\n\n- a\n- b\n\n3. c\n\n> q"
    assert parse(md) == (
        Heading(1, (Text("Title"),)),
        CodeBlock("x = 1", "py"),
        ListBlock(False, 1, ((Paragraph((Text("a"),)),), (Paragraph((Text("b"),)),))),
        ListBlock(True, 3, ((Paragraph((Text("c"),)),),)),
        Quote((Paragraph((Text("q"),)),)),
    )


def test_a_nested_list_belongs_to_its_item() -> None:
    (block,) = parse("- a\n  - b")
    assert isinstance(block, ListBlock)
    assert block.items[0][1] == ListBlock(False, 1, ((Paragraph((Text("b"),)),),))


def test_a_link_keeps_parentheses_in_its_url() -> None:
    (para,) = parse("[w](https://en.wikipedia.org/wiki/A_(b))")
    assert para == Paragraph((Link("https://en.wikipedia.org/wiki/A_(b)", (Text("w"),)),))


def test_telegram_renders_each_construct() -> None:
    assert to_telegram_html("**b** *i* ~~s~~ `c`") == "<b>b</b> <i>i</i> <s>s</s> <code>c</code>"
    assert to_telegram_html("## Head") == "<b>Head</b>"
    assert to_telegram_html("> q") == "<blockquote>q</blockquote>"
    assert to_telegram_html("- a\n- b") == "• a\n• b"
    assert to_telegram_html("1. a\n2. b") == "1. a\n2. b"
    assert to_telegram_html("[x](https://e.com)") == '<a href="https://e.com">x</a>'


def test_telegram_code_blocks_carry_a_language_class_only_when_it_is_safe() -> None:
    assert to_telegram_html("```python\na<b\n```") == (
        '<pre><code class="language-python">a&lt;b</code></pre>'
    )
    assert to_telegram_html("```\nx\n```") == "<pre>x</pre>"
    assert to_telegram_html('```"><script>\nx\n```') == "<pre>x</pre>"


def test_telegram_escapes_text_and_hrefs() -> None:
    assert to_telegram_html("<script>alert(1)</script> & co") == (
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    )
    assert to_telegram_html('[x](https://e.com/?a=1&b="2")') == (
        '<a href="https://e.com/?a=1&amp;b=&quot;2&quot;">x</a>'
    )
    assert to_telegram_html("`<b>`") == "<code>&lt;b&gt;</code>"


def test_only_safe_schemes_become_telegram_links() -> None:
    assert to_telegram_html("[x](javascript:alert(1))") == "x (javascript:alert(1))"
    assert to_telegram_html("[x](JavaScript:alert(1))") == "x (JavaScript:alert(1))"
    assert to_telegram_html("[x](data:text/html,<b>)") == "x (data:text/html,&lt;b&gt;)"
    assert to_telegram_html("[x](/relative)") == "x (/relative)"
    assert to_telegram_html("[x](tg://user?id=1)") == '<a href="tg://user?id=1">x</a>'
    assert to_telegram_html("[x](mailto:a@b.c)") == '<a href="mailto:a@b.c">x</a>'


def test_telegram_flattens_nested_quotes() -> None:
    assert to_telegram_html("> a\n> > b") == "<blockquote>a\n\nb</blockquote>"


def test_slack_renders_each_construct() -> None:
    assert to_slack_mrkdwn("**b** *i* ~~s~~ `c`") == "*b* _i_ ~s~ `c`"
    assert to_slack_mrkdwn("# Head **x**") == "*Head x*"
    assert to_slack_mrkdwn("```js\nx\n```") == "```\nx\n```"
    assert to_slack_mrkdwn("> a\n>\n> b") == "> a\n>\n> b"
    assert to_slack_mrkdwn("[x](https://e.com)") == "<https://e.com|x>"
    assert to_slack_mrkdwn("<https://e.com>") == "<https://e.com>"


def test_slack_escapes_control_characters_and_refuses_unsafe_links() -> None:
    assert to_slack_mrkdwn("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    assert to_slack_mrkdwn("[a|b>](https://e.com/?x=1|2&y)") == (
        "<https://e.com/?x=1%7C2&amp;y|a|b&gt;>"
    )
    assert to_slack_mrkdwn("[x](javascript:alert(1))") == "x (javascript:alert(1))"


def test_plain_uses_whatsapp_markers_and_spells_out_links() -> None:
    assert to_plain("**b** *i* ~~s~~ `c`") == "*b* _i_ ~s~ `c`"
    assert to_plain("[docs](https://e.com)") == "docs (https://e.com)"
    assert to_plain("<https://e.com>") == "https://e.com"
    assert to_plain("# T\n\n- a\n\n```\nx\n```") == "*T*\n\n• a\n\n```\nx\n```"
    assert to_plain("<b> & more") == "<b> & more"


def test_unbalanced_markers_stay_literal() -> None:
    for md in ("**open", "`tick", "[label](", "~~x", "a * b * c", "_x", "[x]"):
        assert to_plain(md) == md
    assert to_telegram_html("**a <b>") == "**a &lt;b&gt;"


def test_underscores_inside_words_are_not_emphasis() -> None:
    assert to_plain("snake_case_name") == "snake_case_name"


def test_an_unclosed_fence_runs_to_the_end() -> None:
    assert to_telegram_html("```\na\n\nb") == "<pre>a\n\nb</pre>"


def test_backslash_escapes_markers() -> None:
    assert to_plain(r"\*not\* \_this\_") == "*not* _this_"
    assert to_telegram_html(r"\*x\*") == "*x*"


def test_deep_nesting_and_long_marker_runs_are_handled() -> None:
    assert to_plain("> " * 500 + "x").endswith("x")
    assert to_plain("*a " * 5000) == ("*a " * 5000).strip()
    assert "x" in to_telegram_html("**" * 300 + "x" + "**" * 300)


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ok = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.ok = self.ok and bool(self.stack) and self.stack.pop() == tag


def balanced(html: str) -> bool:
    parser = _Balance()
    parser.feed(html)
    parser.close()
    return parser.ok and not parser.stack


MARKDOWNISH = st.text(alphabet=st.sampled_from(list("ab <>&\"'*_~`[]()#>-1.\n\\:/|")), max_size=80)


@settings(max_examples=300, deadline=None)
@given(MARKDOWNISH | st.text(max_size=60))
def test_renderers_never_raise_and_telegram_stays_balanced(md: str) -> None:
    html = to_telegram_html(md)
    assert balanced(html)
    assert "<script" not in html
    to_slack_mrkdwn(md)
    to_plain(md)
