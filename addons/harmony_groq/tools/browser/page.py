"""A fetched page as the browser shows it: text lines, links as ``【id†text†domain】``.

HTML is read with selectolax (lexbor): scripts, styles and other non-text parts dropped, each
block element on a line of its own, each link replaced by its numbered marker (the reference
browser's ``page_contents.py`` format, so ``open`` can follow a link by id)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

DROPPED = ["script", "style", "noscript", "template", "svg", "iframe", "canvas", "head",
           "object", "embed", "form", "button", "select", "input", "textarea"]
BLOCKS = ("p, div, br, li, ul, ol, tr, table, h1, h2, h3, h4, h5, h6, section, article, "
          "header, footer, nav, aside, main, pre, blockquote, dd, dt, dl, hr, figure, "
          "figcaption, details, summary, address")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_MARKER_CHARS = re.compile(r"[【】†]")
_BLOCK_RUN = re.compile("\ue000[\\s\ue000]*")  # block boundaries: one line break
_EDGES = re.compile(r" ?\n ?")
_EMPTY_RUNS = re.compile(r"\n{3,}")
# Private-use sentinels (text never carries them meaningfully): a block's start, a link's
# start, number/text separator, end.
_BLOCK, _LINK_OPEN, _LINK_TEXT, _LINK_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_BLOCK_TAG = re.compile(r"</?(?:" + "|".join(t.strip() for t in BLOCKS.split(",")) + r")\b", re.I)
_LINK_START = re.compile(
    r"""<a\s[^>]*?\bhref\s*=\s*("([^"]*)"|'([^']*)'|([^\s>"']+))[^>]*>""", re.I)
_LINK_END = re.compile(r"</a\s*>", re.I)
_LINK = re.compile(_LINK_OPEN + r"(\d+)" + _LINK_TEXT + r"([^\ue001\ue003]*)" + _LINK_CLOSE)


@dataclass
class Page:
    """What the browser keeps of a page: its text (links as markers) and the link targets."""

    url: str
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)
    snippets: dict[int, str] = field(default_factory=dict)  # search results' snippets

    @property
    def domain(self) -> str:
        return urlsplit(self.url).hostname or ""


def domain_of(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.removeprefix("www.")


def _label(text: str) -> str:
    return _MARKER_CHARS.sub("", " ".join(text.split()))


def html_to_page(html: str | bytes, url: str) -> Page:
    """HTML → the browser's page text and links.

    DOM edits in Python cost ~50 µs a node (0.5 s for a 1 MB page), so the markup is marked up
    before parsing instead: a sentinel before each block tag (a line break once the text is
    out) and around each link (its number, then its text), and lexbor's own ``text()`` does
    the rest."""
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    hrefs: list[str] = []

    def link(match: re.Match[str]) -> str:
        hrefs.append(next(g for g in match.group(2, 3, 4) if g is not None))
        return f"{_LINK_OPEN}{len(hrefs) - 1}{_LINK_TEXT}{match.group(0)}"

    marked = _BLOCK_TAG.sub(_BLOCK + r"\g<0>", _LINK_END.sub(_LINK_CLOSE + r"\g<0>",
                                                            _LINK_START.sub(link, html)))
    tree = LexborHTMLParser(marked)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().replace(_BLOCK, "").split()) if title_node else ""
    root = tree.body or tree.root
    if root is None:
        return Page(url, title or url, "")
    root.strip_tags(DROPPED)
    text = root.text(separator="").replace("\n", " ")
    links: dict[int, str] = {}

    def marker(match: re.Match[str]) -> str:
        label = _label(match.group(2))
        href = unescape(hrefs[int(match.group(1))]).strip()
        if not label or not href or href.startswith(("#", "javascript:", "mailto:")):
            return match.group(2)
        target = urljoin(url, href)
        links[len(links)] = target
        return f"【{len(links) - 1}†{label}†{domain_of(target)}】"

    text = _LINK.sub(marker, text)
    text = text.replace(_LINK_OPEN, "").replace(_LINK_TEXT, "").replace(_LINK_CLOSE, "")
    return Page(url, title or url, _tidy(_BLOCK_RUN.sub("\n", text)), links)


def text_to_page(text: str, url: str, title: str = "") -> Page:
    return Page(url, title or url, _tidy(text))


def _tidy(text: str) -> str:
    """Whitespace collapsed within lines, runs of empty lines cut to one."""
    text = _SPACES.sub(" ", text)
    text = _EDGES.sub("\n", text)
    return _EMPTY_RUNS.sub("\n\n", text).strip()
