"""Remote MCP servers as server tools for gpt-oss: the client's ``mcp`` tools (Responses) and
``mcp_servers`` (Messages), run by the proxy as an MCP client (docs/server-tools.md)."""
