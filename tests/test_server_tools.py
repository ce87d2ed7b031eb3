"""Units of the server-tool foundation (tools/): URL safety, the citation filter, the
browser's display, the decoder's server calls. Fetches talk to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import httpx
import pytest

from harmony_groq.encoding import harmony_encoding
from harmony_groq.parse import ContentDelta, HarmonyDecoder, ReasoningDelta
from harmony_groq.toolloop.session import CitationFilter
from harmony_groq.tools.base import Citation, CiteEvent
from harmony_groq.tools.browser.page import html_to_page
from harmony_groq.tools.urls import UnsafeUrl, UrlPolicy, fetch

from fakes_web import FakeWeb


@pytest.fixture(scope="module")
def web() -> Iterator[FakeWeb]:
    server = FakeWeb()
    yield server
    server.close()


def resolver(answers: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError("no such host")
        return answers[host]
    return resolve


def check(policy: UrlPolicy, url: str) -> tuple[str, ipaddress._BaseAddress]:
    return asyncio.run(policy.check(url))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://10.1.2.3/x", "http://192.168.0.1/", "http://169.254.169.254/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/",
    "http://[fe80::1]/"])
def test_private_addresses_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        check(UrlPolicy(), url)
    assert caught.value.code == "blocked_url"


def test_private_dns_answer_refused() -> None:
    """A public-looking name whose DNS answer is private (or one private among public ones:
    rebinding) is refused; the public one passes, pinned to the checked address."""
    policy = UrlPolicy(resolver=resolver({"evil.example": ["93.184.216.34", "10.0.0.5"],
                                          "inside.example": ["192.168.1.10"],
                                          "good.example": ["93.184.216.34"]}))
    for url in ("http://evil.example/", "https://inside.example/a"):
        with pytest.raises(UnsafeUrl) as caught:
            check(policy, url)
        assert caught.value.code == "blocked_url"
    host, address = check(policy, "https://good.example/")
    assert (host, str(address)) == ("good.example", "93.184.216.34")


def test_localhost_resolves_private() -> None:
    with pytest.raises(UnsafeUrl) as caught:
        check(UrlPolicy(), "http://localhost:9/")
    assert caught.value.code == "blocked_url"


def test_allow_list_hosts_and_cidrs() -> None:
    policy = UrlPolicy.parse("127.0.0.1, 10.0.0.0/8 ,intranet.test")
    assert str(check(policy, "http://127.0.0.1:8080/")[1]) == "127.0.0.1"
    assert str(check(policy, "http://10.9.8.7/")[1]) == "10.9.8.7"
    with pytest.raises(UnsafeUrl):
        check(policy, "http://192.168.0.1/")
    with pytest.raises(ValueError, match="not a CIDR"):
        UrlPolicy.parse("10.0.0.0/99")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "http:///nohost",
                                 "gopher://127.0.0.1/"])
def test_invalid_urls(url: str) -> None:
    with pytest.raises(UnsafeUrl) as caught:
        check(UrlPolicy(), url)
    assert caught.value.code == "invalid_url"


async def _fetch(url: str, policy: UrlPolicy) -> tuple[int, bytes, str]:
    async with httpx.AsyncClient(trust_env=False) as client:
        fetched = await fetch(client, url, policy)
    return fetched.status, fetched.body, fetched.url


def test_fetch_allowed_page_and_refusals(web: FakeWeb) -> None:
    allowed = UrlPolicy.parse("127.0.0.1")
    status, body, _ = asyncio.run(_fetch(f"{web.url}/harmony", allowed))
    assert status == 200 and b"harmony" in body
    with pytest.raises(UnsafeUrl) as caught:
        asyncio.run(_fetch(f"{web.url}/harmony", UrlPolicy()))
    assert caught.value.code == "blocked_url"


def test_redirect_to_private_refused(web: FakeWeb) -> None:
    """The first hop is allowed (by name), the redirect's target is not: each hop is checked."""
    policy = UrlPolicy.parse("localhost")
    target = f"http://localhost:{web.port}/redirect?to={web.url}/harmony"
    with pytest.raises(UnsafeUrl) as caught:
        asyncio.run(_fetch(target, policy))
    assert caught.value.code == "blocked_url" and "127.0.0.1" in caught.value.message
    status, _, final_url = asyncio.run(_fetch(
        f"http://localhost:{web.port}/redirect?to=http://localhost:{web.port}/tools", policy))
    assert status == 200 and final_url.endswith("/tools")


def test_fetch_pinned_to_checked_address(web: FakeWeb) -> None:
    """The name is resolved once per hop and the connection goes to that address, with the
    name in the Host header: a second, different DNS answer cannot redirect the fetch."""
    calls: list[str] = []
    policy = UrlPolicy(allow_hosts=frozenset({"pinned.test"}),
                       resolver=resolver({"pinned.test": ["127.0.0.1"]}, calls))
    web.requests.clear()
    status, body, _ = asyncio.run(_fetch(f"http://pinned.test:{web.port}/tools", policy))
    assert status == 200 and b"Built-in tools" in body
    assert calls == ["pinned.test"]
    headers = {k.lower(): v for k, v in web.requests[-1]["headers"].items()}
    assert headers["host"] == f"pinned.test:{web.port}"


def test_fetch_limits(web: FakeWeb) -> None:
    small = UrlPolicy.parse("127.0.0.1", max_bytes=1000)
    with pytest.raises(UnsafeUrl) as caught:
        asyncio.run(_fetch(f"{web.url}/big", small))
    assert caught.value.code == "too_large"


def test_citation_filter_streams_markers_out() -> None:
    cites = {"1†L2-L3": Citation("https://a.example/x", "A page", "cited")}
    citations = CitationFilter(cites.get)
    out = []
    for piece in ["Harmony is", " used 【", "1†L2", "-L3】 here.", " Odd 【9†L1】 stays【"]:
        out += citations([ContentDelta(piece), ReasoningDelta("r")])
    out += citations.flush()
    text = "".join(e.text for e in out if isinstance(e, ContentDelta))
    assert text == "Harmony is used  here. Odd 【9†L1】 stays【"
    [cite] = [e.citation for e in out if isinstance(e, CiteEvent)]
    assert (cite.url, cite.start_index, cite.end_index) == ("https://a.example/x", 0, 16)
    assert sum(isinstance(e, ReasoningDelta) for e in out) == 5


def test_html_to_page() -> None:
    page = html_to_page("<html><head><title> T </title><script>x()</script></head><body>"
                        "<p>One <a href='/a?x=1&amp;y=2'>link</a> two</p><div>Three</div>"
                        "<style>p{}</style><a href='#top'>top</a></body></html>",
                        "https://example.com/dir/page")
    assert page.title == "T"
    assert page.text == "One 【0†link†example.com】 two\nThree\ntop"
    assert page.links == {0: "https://example.com/a?x=1&y=2"}


def test_decoder_server_calls() -> None:
    """browser calls (analysis or commentary, code/json/none, functions. prefix) stop the
    generation as server calls; a client function named like one stays the client's."""
    encoding = harmony_encoding()
    for header in ("<|channel|>analysis to=browser.search code",
                   "<|channel|>commentary to=browser.search <|constrain|>json",
                   " to=functions.browser.search<|channel|>analysis"):
        decoder = HarmonyDecoder(encoding, server_tools=frozenset({"browser"}))
        events = decoder.feed_text(f"<|channel|>analysis<|message|>Hmm.<|end|><|start|>"
                                   f"assistant{header}<|message|>{{\"query\": \"q\"}}")
        assert {type(e) for e in events} == {ReasoningDelta}
        assert decoder.end_server_call(False)
        call = decoder.take_server_call()
        assert (call.recipient, call.arguments) == ("browser.search", '{"query": "q"}')
    decoder = HarmonyDecoder(encoding, server_tools=frozenset({"browser"}),
                             declared_tools=frozenset({"browser.search"}))
    decoder.feed_text("<|channel|>commentary to=functions.browser.search<|message|>{}<|call|>")
    assert decoder.server_call is None


def test_harmony_view_lists_tool_steps() -> None:
    from harmony_groq.views import render_response

    shown = render_response(b"{}", {"status": 200, "upstream_response": {
        "text": "<|channel|>final<|message|>Hi", "finish_reason": "stop"},
        "tool_steps": [{"kind": "web_search", "action": "search", "query": "harmony",
                        "status": "completed", "backend": "searxng", "duration_ms": 12.5,
                        "bytes": 900, "results": 2}]})
    assert "SERVER TOOL STEPS (1, run by the proxy)" in shown
    assert ("1. web_search.search 'harmony' via searxng: completed, 2 results, 12.5 ms, "
            "900 bytes") in shown
