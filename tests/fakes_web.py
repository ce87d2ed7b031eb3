"""A SearXNG-shaped search server and a small web of real HTML pages, on 127.0.0.1.

``FakeSearxng`` answers ``GET /search?q=…&format=json`` as SearXNG's JSON API does
(``{"query", "number_of_results", "results": [{"url", "title", "content", "engine",
"publishedDate"…}], "answers", "suggestions", "unresponsive_engines"}``), 403 without
``format=json`` enabled as a stock instance does for an unknown format; it can be slowed down
or made to fail. ``FakeWeb`` serves HTML pages, a redirect, a large page.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fakes import FakeServer, _Handler

PAGES = {
    "/harmony": ("The harmony response format", """<!doctype html><html><head>
<title>The harmony response format</title><style>body{font:1em serif}</style>
<script>document.write('<p>tracking</p>')</script></head><body>
<nav><a href="/">Home</a></nav>
<h1>Harmony</h1>
<p>gpt-oss models were trained on the <b>harmony</b> response format.</p>
<p>Messages carry a role, a channel and a recipient.</p>
<p>Built-in tools are declared in the system message.</p>
<p>See <a href="/tools">the tools page</a> for the browser.</p>
</body></html>"""),
    "/tools": ("Built-in tools", """<html><head><title>Built-in tools</title></head><body>
<h1>Tools</h1><ul><li>browser: search, open, find</li><li>python: stateless code</li></ul>
</body></html>"""),
}


class _SearxngHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802
        fake: FakeSearxng = self.fake
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        fake.queries.append(query.get("q", [""])[0])
        if parts.path != "/search":
            self.send_json(404, {"error": "not found"})
            return
        if query.get("format") != ["json"]:
            self.send_json(403, {"error": "format not allowed"})
            return
        if fake.delay:
            time.sleep(fake.delay)
        if fake.status != 200:
            self.send_json(fake.status, {"error": "scripted failure"})
            return
        self.send_json(200, {
            "query": query.get("q", [""])[0], "number_of_results": len(fake.results),
            "results": [{"engine": "fake", "score": 1.0, "category": "general", **r}
                        for r in fake.results],
            "answers": [], "corrections": [], "infoboxes": [], "suggestions": [],
            "unresponsive_engines": []})


class FakeSearxng(FakeServer):
    handler = _SearxngHandler

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.results: list[dict[str, Any]] = []
        self.delay = 0.0
        self.status = 200
        super().__init__()

    def reset_state(self) -> None:
        self.queries.clear()
        self.results = []
        self.delay = 0.0
        self.status = 200
        self.requests.clear()


class _WebHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802
        fake: FakeWeb = self.fake
        path = urlsplit(self.path).path
        fake.paths.append(path)
        fake.requests.append({"path": self.path, "headers": dict(self.headers.items())})
        if path in PAGES:
            body = PAGES[path][1].encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
        elif path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("location", parse_qs(urlsplit(self.path).query)["to"][0])
            body = b""
        elif path == "/big":
            body = b"<html><body>" + b"<p>filler text</p>" * 400_000 + b"</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
        else:
            body = b"<html><body>not found</body></html>"
            self.send_response(404)
            self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeWeb(FakeServer):
    handler = _WebHandler

    def __init__(self) -> None:
        self.paths: list[str] = []
        super().__init__()

    def results(self) -> list[dict[str, Any]]:
        """SearXNG results pointing at this web's pages."""
        return [{"url": f"{self.url}{path}", "title": title,
                 "content": f"About {title.lower()}.", "publishedDate": None}
                for path, (title, _) in PAGES.items()]
