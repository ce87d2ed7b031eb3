"""Settings: mitmproxy options whose defaults come from environment variables, and the
``Settings`` addon that declares and validates them.

Every setting is a ``--set name=value`` option so it can be changed live in mitmweb; secrets
(``GROQ_API_KEY``, ``PROXY_API_KEY``) are read from the environment only, because option values
are shown on mitmweb's options page. ``STATE_STORE``'s password is the same: the option shows
the URL with the password masked, and the password is taken from the environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

from .encoding import EncodingUnavailable, harmony_encoding
from .replica_spec import ROUTING_POLICIES, ModelServers, SpecError, model_servers, replica_urls
from .store_url import is_store_url, passwords_of, public_url, secret_url

logger = logging.getLogger(__name__)

REASONING_FIELDS = ("both", "reasoning", "reasoning_content", "none")
BACKENDS = ("transformers", "vllm", "llamacpp")
SPILLOVER_MODES = ("off", "down", "saturated")
BUDGET_WINDOWS = ("hour", "day")


@dataclass(frozen=True)
class OptionSpec:
    name: str
    env: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: int = 1  # integers only
    masked: bool = False  # a URL whose password the option must not show


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("transformers_url", "TRANSFORMERS_URL", str, "http://localhost:8000",
               "Base URL of the gpt-oss model server (transformers serve); a comma-separated "
               "list for several replicas of it."),
    OptionSpec("transformers_model", "TRANSFORMERS_MODEL", str, "",
               "Model id sent to the model server; empty sends no model field."),
    OptionSpec("backend", "BACKEND", str, "transformers",
               "Wire format of the gpt-oss model server.", BACKENDS),
    OptionSpec("model_servers", "MODEL_SERVERS", str, "",
               "Replicas per served gpt-oss model: MODEL=KIND:URL|KIND:URL;MODEL=…; models it "
               "does not name go to TRANSFORMERS_URL."),
    OptionSpec("routing", "ROUTING", str, "cache_aware",
               "How a request picks a replica: cache_aware, least_loaded or round_robin.",
               ROUTING_POLICIES),
    OptionSpec("replica_attempts", "REPLICA_ATTEMPTS", int, 3,
               "Replicas one request may try: failover before the first token and resuming "
               "a broken stream count together."),
    OptionSpec("groq_base_url", "GROQ_BASE_URL", str, "https://api.groq.com/openai/v1",
               "Base URL of Groq's OpenAI-compatible API."),
    OptionSpec("harmony_models", "HARMONY_MODELS", str, "gpt-oss,harmony",
               "Comma-separated substrings: a model containing one goes the harmony way."),
    OptionSpec("harmony_model_ids", "HARMONY_MODEL_IDS", str, "gpt-oss-20b,gpt-oss-120b",
               "Comma-separated gpt-oss model ids listed by /v1/models."),
    OptionSpec("harmony_date", "HARMONY_DATE", str, "",
               "Pin the date in the harmony system message (YYYY-MM-DD); empty = today UTC."),
    OptionSpec("reasoning_field", "REASONING_FIELD", str, "both",
               "Where gpt-oss reasoning goes: both, reasoning, reasoning_content or none.",
               REASONING_FIELDS),
    OptionSpec("log_file", "LOG_FILE", str, "gpt-oss-harmony-groq.log",
               "JSON-lines flow log; empty disables it."),
    OptionSpec("log_max_bytes", "LOG_MAX_BYTES", int, 50 * 1024 * 1024,
               "Rotate the flow log at this size."),
    OptionSpec("log_backups", "LOG_BACKUPS", int, 5, "Rotated flow logs to keep."),
    OptionSpec("max_body_size", "MAX_BODY_SIZE", int, 32 * 1024 * 1024,
               "Largest accepted request body in bytes (larger: 413)."),
    OptionSpec("upstream_timeout", "UPSTREAM_TIMEOUT", int, 600,
               "Seconds to wait for the model server's answer (a stream's first token) and "
               "Groq's response head (504 past it)."),
    OptionSpec("strict_retries", "STRICT_RETRIES", int, 2,
               "transformers serve (no constrained decoding): a strict tool call or "
               "json_schema answer that breaks its schema is generated again up to this many "
               "times, then the client gets an error.", minimum=0),
    OptionSpec("keepalive_seconds", "KEEPALIVE_SECONDS", int, 10,
               "Seconds without an SSE event (a long prefill, hidden reasoning) before a "
               "keep-alive (Anthropic's ping) is sent."),
    OptionSpec("models_cache_seconds", "MODELS_CACHE_SECONDS", int, 60,
               "How long Groq's model list is cached."),
    OptionSpec("responses_store_bytes", "RESPONSES_STORE_BYTES", int, 64 * 1024 * 1024,
               "Memory for stored Responses (previous_response_id), least recently used out."),
    OptionSpec("reasoning_memory_bytes", "REASONING_MEMORY_BYTES", int, 16 * 1024 * 1024,
               "Memory for the analysis before issued tool calls, restored when a client "
               "sends the call back without it; 0 disables.", minimum=0),
    OptionSpec("responses_store_ttl", "RESPONSES_STORE_TTL", int, 7 * 86400,
               "Seconds a stored Response is kept (previous_response_id)."),
    OptionSpec("reasoning_memory_ttl", "REASONING_MEMORY_TTL", int, 86400,
               "Seconds the analysis before an issued tool call is kept."),
    OptionSpec("state_store", "STATE_STORE", str, "memory",
               "Where stored Responses, reasoning memory and spill-over stickiness live: "
               "memory (this process) or redis[s]://[user:password@]host:port/db, shared by "
               "proxies; a password in STATE_STORE is taken from the environment, never shown.",
               masked=True),
    OptionSpec("state_store_timeout_ms", "STATE_STORE_TIMEOUT_MS", int, 25,
               "Milliseconds a request waits for the state store before going on without it: "
               "for its reads, and at its reply's end for the writes the next turn reads."),
    OptionSpec("claude_model_map", "CLAUDE_MODEL_MAP", str, "",
               "Comma-separated PATTERN=MODEL: Claude model names (Claude Code's aliases) "
               "matching a glob PATTERN are served by MODEL; first match wins."),
    OptionSpec("spillover", "SPILLOVER", str, "off",
               "Send gpt-oss requests to Groq's hosted twin: off, down (no local server can "
               "serve) or saturated (also when every local server is full).", SPILLOVER_MODES),
    OptionSpec("spillover_models", "SPILLOVER_MODELS", str,
               "gpt-oss-20b=openai/gpt-oss-20b,gpt-oss-120b=openai/gpt-oss-120b",
               "Comma-separated LOCAL=GROQ: each gpt-oss model's twin on Groq."),
    OptionSpec("spillover_max_inflight", "SPILLOVER_MAX_INFLIGHT", int, 8,
               "Requests in flight to one local server beyond which it counts as full."),
    OptionSpec("fair_share_queue", "FAIR_SHARE_QUEUE", int, 256,
               "Requests per pool that may wait for their key's fair share of full local "
               "servers (docs/scaling.md); 0 turns fair share off.", minimum=0),
    OptionSpec("spillover_budget_tokens", "SPILLOVER_BUDGET_TOKENS", int, 0,
               "Groq tokens (prompt + completion) spill-over may spend per window; 0: no "
               "budget.", minimum=0),
    OptionSpec("spillover_budget_window", "SPILLOVER_BUDGET_WINDOW", str, "day",
               "The budget's window: hour or day (UTC clock hours or days).", BUDGET_WINDOWS),
    OptionSpec("spillover_sticky_seconds", "SPILLOVER_STICKY_SECONDS", int, 1800,
               "How long after its last turn a spilled conversation stays on Groq."),
)

OPTION_DEFAULTS = {spec.name: spec.default for spec in OPTIONS}


@dataclass(frozen=True)
class Config:
    """A validated snapshot of the options plus the secrets from the environment."""

    transformers_url: str  # the first replica of TRANSFORMERS_URL
    transformers_model: str
    backend: str
    model_servers: tuple[ModelServers, ...]  # MODEL_SERVERS' groups, then TRANSFORMERS_URL's
    routing: str
    replica_attempts: int
    groq_base_url: str
    harmony_models: tuple[str, ...]
    harmony_model_ids: tuple[str, ...]
    harmony_date: str
    reasoning_field: str
    log_file: str
    log_max_bytes: int
    log_backups: int
    max_body_size: int
    upstream_timeout: int
    strict_retries: int
    keepalive_seconds: int
    models_cache_seconds: int
    responses_store_bytes: int
    reasoning_memory_bytes: int
    responses_store_ttl: int
    reasoning_memory_ttl: int
    state_store: str  # "memory" or the URL, password included
    state_store_timeout_ms: int
    claude_model_map: tuple[tuple[str, str], ...]
    spillover: str
    spillover_models: tuple[tuple[str, str], ...]
    spillover_max_inflight: int
    fair_share_queue: int
    spillover_budget_tokens: int
    spillover_budget_window: str
    spillover_sticky_seconds: int
    groq_api_key: str
    proxy_api_key: str

    @property
    def secrets(self) -> tuple[str, ...]:
        """What no log may show: the keys and the state store's password."""
        keys = tuple(s for s in (self.groq_api_key, self.proxy_api_key) if s)
        return keys + passwords_of(self.state_store) + secrets_from_environment()


SECRET_ENVS: list[str] = []  # other API keys read from the environment (the search backends')


def secrets_from_environment() -> tuple[str, ...]:
    """The values of ``SECRET_ENVS`` (a module that reads a key adds its variable's name)."""
    return tuple(key for env in SECRET_ENVS if (key := os.environ.get(env, "").strip()))


def env_default(spec: OptionSpec, environ: Mapping[str, str]) -> Any:
    raw = environ.get(spec.env)
    if raw is None or raw == "":
        return spec.default
    if spec.type is int:
        try:
            return int(raw)
        except ValueError:
            raise exceptions.OptionsError(f"{spec.env}={raw!r} is not an integer") from None
    return public_url(raw) if spec.masked else raw


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _check_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise exceptions.OptionsError(f"{name}={value!r} is not an http(s) URL")
    return value.rstrip("/")


def _pairs(name: str, value: str, example: str) -> tuple[tuple[str, str], ...]:
    """``A=B,C=D`` as pairs, left sides lowercased; one clear line on a malformed entry."""
    pairs = []
    for entry in _split(value):
        left, _, right = (part.strip() for part in entry.partition("="))
        if not left or not right:
            raise exceptions.OptionsError(f"{name} entry {entry!r} is not {example}")
        pairs.append((left.lower(), right))
    return tuple(pairs)


def _state_store(value: str, environ: Mapping[str, str]) -> str:
    if value == "memory":
        return value
    if not is_store_url(value):
        raise exceptions.OptionsError(f"state_store={public_url(value)!r} is not memory or a "
                                      "redis://host:port/db or rediss:// URL")
    return secret_url(value, environ.get("STATE_STORE", "").strip())


def _model_map(value: str) -> tuple[tuple[str, str], ...]:
    return _pairs("claude_model_map", value, "PATTERN=MODEL (e.g. claude-*haiku*=gpt-oss-20b)")


def add_options(loader: Any, specs: tuple[OptionSpec, ...] | list[OptionSpec],
                errors: list[str]) -> None:
    """Declare ``specs`` as mitmproxy options, defaults from the environment (a bad one goes
    to ``errors`` and its default is used)."""
    for spec in specs:
        try:
            default = env_default(spec, os.environ)
        except exceptions.OptionsError as exc:
            errors.append(str(exc))
            default = spec.default
        loader.add_option(spec.name, spec.type, default, spec.help, spec.choices)


def check_choices(specs: tuple[OptionSpec, ...] | list[OptionSpec],
                  values: Mapping[str, Any]) -> None:
    """Choices and integer minimums; ``OptionsError`` with one clear line on a bad value."""
    for spec in specs:
        if spec.choices and values[spec.name] not in spec.choices:
            raise exceptions.OptionsError(
                f"{spec.name}={values[spec.name]!r}: choose one of {', '.join(spec.choices)}"
            )
        if spec.type is int and values[spec.name] < spec.minimum:
            raise exceptions.OptionsError(f"{spec.name} must be a positive integer" if
                                          spec.minimum == 1 else
                                          f"{spec.name} must be at least {spec.minimum}")


def build_config(values: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Validate option values; raise ``OptionsError`` with one clear line on a bad one."""
    check_choices(OPTIONS, values)
    date = values["harmony_date"]
    if date:
        try:
            datetime.date.fromisoformat(date)
        except ValueError:
            raise exceptions.OptionsError(f"harmony_date={date!r} is not YYYY-MM-DD") from None
    harmony_models = _split(values["harmony_models"])
    if not harmony_models:
        raise exceptions.OptionsError("harmony_models must name at least one substring")
    try:
        urls = replica_urls("transformers_url", values["transformers_url"])
        servers = (*model_servers(values["model_servers"], BACKENDS),
                   ModelServers(None, values["backend"], urls))
    except SpecError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    return Config(
        transformers_url=urls[0],
        transformers_model=values["transformers_model"],
        backend=values["backend"],
        model_servers=servers,
        routing=values["routing"],
        replica_attempts=values["replica_attempts"],
        groq_base_url=_check_url("groq_base_url", values["groq_base_url"]),
        harmony_models=tuple(m.lower() for m in harmony_models),
        harmony_model_ids=_split(values["harmony_model_ids"]),
        harmony_date=date,
        reasoning_field=values["reasoning_field"],
        log_file=values["log_file"],
        log_max_bytes=values["log_max_bytes"],
        log_backups=values["log_backups"],
        max_body_size=values["max_body_size"],
        upstream_timeout=values["upstream_timeout"],
        strict_retries=values["strict_retries"],
        keepalive_seconds=values["keepalive_seconds"],
        models_cache_seconds=values["models_cache_seconds"],
        responses_store_bytes=values["responses_store_bytes"],
        reasoning_memory_bytes=values["reasoning_memory_bytes"],
        responses_store_ttl=values["responses_store_ttl"],
        reasoning_memory_ttl=values["reasoning_memory_ttl"],
        state_store=_state_store(values["state_store"].strip(), environ),
        state_store_timeout_ms=values["state_store_timeout_ms"],
        claude_model_map=_model_map(values["claude_model_map"]),
        spillover=values["spillover"],
        spillover_models=_pairs("spillover_models", values["spillover_models"],
                                "LOCAL=GROQ (e.g. gpt-oss-20b=openai/gpt-oss-20b)"),
        spillover_max_inflight=values["spillover_max_inflight"],
        fair_share_queue=values["fair_share_queue"],
        spillover_budget_tokens=values["spillover_budget_tokens"],
        spillover_budget_window=values["spillover_budget_window"],
        spillover_sticky_seconds=values["spillover_sticky_seconds"],
        groq_api_key=environ.get("GROQ_API_KEY", "").strip(),
        proxy_api_key=environ.get("PROXY_API_KEY", "").strip(),
    )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings:
    """Declares the options (defaults from the environment) and validates them."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.env_errors: list[str] = []

    def load(self, loader) -> None:  # noqa: ANN001 - mitmproxy's Loader
        add_options(loader, OPTIONS, self.env_errors)

    def configure(self, updated: set[str]) -> None:
        try:
            self.config = self._validated()
        except exceptions.OptionsError as exc:
            if self.config is not None:
                raise  # a live change (mitmweb): mitmproxy reports it and keeps the old value
            # At start-up one clear line, not a traceback; any error aborts mitmdump's start.
            logger.error("gpt-oss-harmony-groq cannot start: %s", exc)

    def _validated(self) -> Config:
        if self.env_errors:
            raise exceptions.OptionsError(self.env_errors[0])
        values = {spec.name: getattr(ctx.options, spec.name) for spec in OPTIONS}
        config = build_config(values, os.environ)
        self._check_exposure(config)
        try:
            harmony_encoding()
        except EncodingUnavailable as exc:
            raise exceptions.OptionsError(str(exc)) from None
        return config

    @staticmethod
    def _check_exposure(config: Config) -> None:
        """A key-injecting proxy on a non-loopback address must require a key of its own."""
        for spec in ctx.options.mode:
            try:
                mode = ProxyMode.parse(spec)
            except ValueError:
                continue
            host = mode.listen_host(ctx.options.listen_host)
            if _is_loopback(host):
                continue
            where = host or "all interfaces"
            if isinstance(mode, ReverseMode) and not config.proxy_api_key:
                raise exceptions.OptionsError(
                    f"refusing to listen on {where} without PROXY_API_KEY: anyone who can reach "
                    "it could use your Groq key. Set PROXY_API_KEY=<a long random string> (clients "
                    "send it as their API key) or listen on 127.0.0.1."
                )
            if not isinstance(mode, ReverseMode) and not ctx.options.proxyauth:
                raise exceptions.OptionsError(
                    f"refusing to run an open {mode.type_name} proxy on {where}: set mitmproxy's "
                    "proxy authentication (--set proxyauth=user:pass) or listen on 127.0.0.1."
                )
