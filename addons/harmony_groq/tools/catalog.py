"""The server tools this proxy has: importing a tool's module registers it (its factory, its
options, its step kind's mappings). One line per tool."""

from . import code_items  # noqa: F401 - python: code execution (its factory: code_addon.py)
from .browser import browser as _browser  # noqa: F401
from .browser import items as _browser_items  # noqa: F401
from .mcp import tool as _mcp  # noqa: F401
