"""Server tools: tools the proxy itself runs for gpt-oss (harmony's ``browser``, ``python``, MCP
servers), run by one loop shared by every client API and backend (``toolloop/``, above this
package).

``base.py`` is the interface every tool implements, ``items.py`` the
per-dialect mapping of a tool step into each client API's own items, ``urls.py`` the URL
safety every fetch goes through. docs/server-tools.md says how to use them.
"""
