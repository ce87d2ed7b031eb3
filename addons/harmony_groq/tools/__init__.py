"""Server tools: tools the proxy itself runs for gpt-oss (harmony's ``browser``, ``python``, MCP
servers), in one loop shared by every client API and backend.

``base.py`` is the interface every tool implements, ``loop.py`` the loop, ``items.py`` the
per-dialect mapping of a tool step into each client API's own items, ``urls.py`` the URL
safety every fetch goes through. docs/server-tools.md says how to use them.
"""
