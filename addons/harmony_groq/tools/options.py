"""The server tools' settings: mitmproxy options (defaults from the environment), declared by
each tool's module (``declare``) and validated here; API keys from the environment only."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, exceptions

from ..settings import OptionSpec, add_options, check_choices
from .urls import UrlPolicy

_OPTIONS: list[OptionSpec] = []
_CHECKS: list[Callable[[ToolConfig], None]] = []


def declare(*specs: OptionSpec, check: Callable[[ToolConfig], None] | None = None) -> None:
    """A tool's options (and a check of their values, raising ``OptionsError``)."""
    known = {spec.name for spec in _OPTIONS}
    _OPTIONS.extend(spec for spec in specs if spec.name not in known)
    if check is not None:
        _CHECKS.append(check)


declare(
    OptionSpec("server_tool_max_steps", "SERVER_TOOL_MAX_STEPS", int, 8,
               "Server-tool calls (web search, python, MCP) one gpt-oss response may make; at "
               "the cap the model is told to answer without tools."),
    OptionSpec("allow_private_urls", "ALLOW_PRIVATE_URLS", str, "",
               "Comma-separated hosts, addresses or CIDRs that URLs from a model or a client "
               "may reach although private, loopback or link-local."),
    OptionSpec("fetch_max_bytes", "FETCH_MAX_BYTES", int, 5 * 1024 * 1024,
               "Largest page or answer a server tool fetches, in bytes."),
    OptionSpec("fetch_timeout", "FETCH_TIMEOUT", int, 15,
               "Seconds one server-tool fetch (redirects included) may take."),
)


@dataclass(frozen=True)
class ToolConfig:
    """The validated option values, and the environment the keys come from."""

    values: Mapping[str, Any]
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    policy: UrlPolicy = field(default_factory=UrlPolicy)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def secret(self, env: str) -> str:
        return self.environ.get(env, "").strip()


def build_tool_config(values: Mapping[str, Any], environ: Mapping[str, str]) -> ToolConfig:
    check_choices(_OPTIONS, values)
    try:
        policy = UrlPolicy.parse(values["allow_private_urls"],
                                 max_bytes=values["fetch_max_bytes"],
                                 timeout=float(values["fetch_timeout"]))
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    config = ToolConfig(dict(values), environ, policy)
    for check in _CHECKS:
        check(config)
    return config


class ToolOptions:
    """mitmproxy addon: declares the tools' options, keeps the validated ``config``."""

    def __init__(self) -> None:
        self.config: ToolConfig | None = None
        self.errors: list[str] = []

    def load(self, loader) -> None:  # noqa: ANN001 - mitmproxy's Loader
        add_options(loader, _OPTIONS, self.errors)

    def configure(self, updated: set[str]) -> None:
        if self.errors:
            raise exceptions.OptionsError(self.errors[0])
        values = {spec.name: getattr(ctx.options, spec.name) for spec in _OPTIONS}
        self.config = build_tool_config(values, os.environ)
