"""The Markdown report shows error and model text as text: no live links, no raw HTML.

A run with a provider whose errors carry link payloads; report.md is parsed
(markdown-it, CommonMark plus tables) and must hold no link or image to a
``javascript:``/``data:`` target, no autolink and no HTML.
"""

from __future__ import annotations

from markdown_it import MarkdownIt

import storyloom
from storyloom import ErrorKind, ProviderError
from storyloom.plugins.reports import one_line
from storyloom.provider import BaseProvider

PAYLOADS = [
    "[click me](javascript:alert(document.cookie))",
    "![pic](javascript:alert(1))",
    "see <javascript:alert(1)> now",
    "<a href=\"javascript:alert(1)\">x</a>",
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[ref][r]\n\n[r]: javascript:alert(1)",
    "[x](&#106;avascript:alert(1))",
    "<img src=x onerror=alert(1)>",
    "`code` **bold** \\[escaped\\](javascript:alert(1))",
    "[x](<javascript:alert(1)>)",
]


class LinkyProvider(BaseProvider):
    async def complete(self, request):
        index = int(request.metadata["item_id"].rsplit("-", 1)[1])
        raise ProviderError(ErrorKind.INVALID_INPUT, PAYLOADS[index])


class Linky:
    @storyloom.hookimpl
    def loom_register_providers(self, register):
        register("linky", LinkyProvider)


SETTINGS = """
models:
  "evil[m](javascript:alert(1))": {provider: linky}
default_models: ["evil[m](javascript:alert(1))"]
"""


def unsafe_tokens(markdown: str) -> list[str]:
    """Every link, image, autolink or HTML the Markdown renders, as "kind target"."""
    parser = MarkdownIt("commonmark").enable("table")
    parser.validateLink = lambda url: True  # markdown-it drops javascript: links itself; other viewers do not
    found = []
    for block in parser.parse(markdown):
        if block.type.startswith("html"):
            found.append(f"{block.type} {block.content!r}")
        for token in block.children or ():
            if token.type in ("link_open", "image") or token.type.startswith("html"):
                found.append(f"{token.type} {token.attrs.get('href') or token.attrs.get('src') or token.content!r}")
    return found


def test_the_check_itself_sees_live_links():
    assert unsafe_tokens("- x: [a](javascript:alert(1)) <b>hi</b> <javascript:y>") == [
        "link_open 'javascript:alert(1)'", "html_inline '<b>'", "html_inline '</b>'", "link_open 'javascript:y'"]


def test_no_payload_in_error_or_model_text_survives_as_a_link_or_html(loom):
    loom.write("storyloom.yaml", SETTINGS)
    items = "".join(f"  - {{item_id: it-{i}}}\n" for i in range(len(PAYLOADS)))
    result = loom.run(f"job_id: linky\njob_type: qc_processing\nconfig: {{max_retries: 0}}\nitems:\n{items}",
                      plugins=(Linky(),))
    result.assert_outcomes(failed=len(PAYLOADS))
    markdown = (loom.out_dir / "linky" / "report.md").read_text(encoding="utf-8")
    assert "](javascript:" not in markdown and "<javascript:" not in markdown and "<a href" not in markdown
    assert unsafe_tokens(markdown) == []
    assert "click me" in markdown and "alert" in markdown  # shown, as text


def test_one_line_escapes_every_markdown_metacharacter():
    assert unsafe_tokens("- " + one_line("\n".join(PAYLOADS))) == []
    for text in PAYLOADS:
        assert unsafe_tokens("- " + one_line(text)) == [], text
