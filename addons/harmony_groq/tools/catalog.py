"""The server tools this proxy has: importing a tool's module registers it (its factory, its
options, its step kind's mappings). One line per tool."""
from .mcp import tool as _mcp  # noqa: F401
