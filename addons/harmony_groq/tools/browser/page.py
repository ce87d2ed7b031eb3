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

# Elements whose content is not text, dropped with their content before parsing (lexbor's own
# removal walks the tree once per tag name: 5x slower on a 1 MB page).
DROPPED = ("script", "style", "noscript", "template", "svg", "iframe", "canvas", "object",
           "select", "textarea", "button")
BLOCKS = ("p", "div", "br", "li", "ul", "ol", "tr", "table", "h[1-6]", "section", "article",
          "header", "footer", "nav", "aside", "main", "pre", "blockquote", "dd", "dt", "dl",
          "hr", "figure", "figcaption", "details", "summary", "address")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_MARKER_CHARS = re.compile(r"[【】†]")
_BLOCK_RUN = re.compile("\ue000[\\s\ue000]*")  # block boundaries: one line break
_EDGES = re.compile(r" ?\n ?")
_EMPTY_RUNS = re.compile(r"\n{3,}")
# Private-use sentinels (text never carries them meaningfully): a block's start, a link's
# start, number/text separator, end.
_BLOCK, _LINK_OPEN, _LINK_TEXT, _LINK_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_BLOCK_TAG = re.compile(r"</?(?:" + "|".join(BLOCKS) + r")\b", re.I)
_DROPPED = re.compile(r"<(" + "|".join(DROPPED) + r")\b.*?</\1\s*>", re.I | re.S)
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
    label = " ".join(text.split())
    return _MARKER_CHARS.sub("", label) if "【" in label or "】" in label or "†" in label \
        else label


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

    html = _DROPPED.sub("", html)
    marked = _BLOCK_TAG.sub(_BLOCK + r"\g<0>", _LINK_END.sub(_LINK_CLOSE + r"\g<0>",
                                                            _LINK_START.sub(link, html)))
    tree = LexborHTMLParser(marked)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().replace(_BLOCK, "").split()) if title_node else ""
    root = tree.body or tree.root
    if root is None:
        return Page(url, title or url, "")
    text = root.text(separator="").replace("\n", " ")
    links: dict[int, str] = {}
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    here = domain_of(url)

    def marker(match: re.Match[str]) -> str:
        label = _label(match.group(2))
        href = hrefs[int(match.group(1))].strip()
        if "&" in href:
            href = unescape(href)
        if not label or not href or href.startswith(("#", "javascript:", "mailto:")):
            return match.group(2)
        if href.startswith(("https://", "http://")):  # the common cases without urljoin
            target, domain = href, domain_of(href)
        elif href.startswith("/") and not href.startswith("//"):
            target, domain = origin + href, here
        else:
            target = urljoin(url, href)
            domain = domain_of(target)
        links[len(links)] = target
        return f"【{len(links) - 1}†{label}†{domain}】"

    text = _LINK.sub(marker, text)
    text = text.replace(_LINK_OPEN, "").replace(_LINK_TEXT, "").replace(_LINK_CLOSE, "")
    return Page(url, title or url, _tidy(_BLOCK_RUN.sub("\n", text)), links)


def text_to_page(text: str, url: str, title: str = "") -> Page:
    return Page(url, title or url, _tidy(text))


def _tidy(text: str) -> str:
    """Whitespace collapsed within lines, runs of empty lines cut to one."""
    return _EMPTY_RUNS.sub("\n\n", _EDGES.sub("\n", _SPACES.sub(" ", text))).strip()
