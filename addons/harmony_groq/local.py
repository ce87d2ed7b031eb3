"""What the proxy answers itself: ``/health`` and the model lists, from caches kept fresh in
the background so they stay fast under load."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
from mitmproxy import http

from .backends import make_backend
from .dialects.messages import anthropic_models
from .groq import GroqModels
from .routing import Route, choose_route
from .settings import Config, Settings

logger = logging.getLogger(__name__)
DEFAULT_CONTEXT_WINDOW = 131_072  # gpt-oss-20b and -120b
# Codex's base prompt for catalogued models (its own, for GPT-5, is ~17k characters): short, so
# gpt-oss's context goes to the work; Codex adds its sandbox and environment messages itself.
CODEX_INSTRUCTIONS = (
    "You are Codex, a coding agent running in the Codex CLI on the user's computer. Work in the "
    "current directory: run shell commands with exec_command, read files before you change "
    "them, and edit files with apply_patch. Keep going until the task is done, then answer "
    "with a short summary of what you did.")


class LocalEndpoints:
    """``/health`` and ``/v1/models``; also what the model server is (``server_info``)."""

    def __init__(self, settings: Settings, client: Callable[[], httpx.AsyncClient]) -> None:
        self.settings = settings
        self.client = client
        self.models = GroqModels()
        self.server_info: dict[str, Any] = {}
        self._health: tuple[float, dict[str, Any]] | None = None
        self._health_task: asyncio.Task | None = None
        self._models_task: asyncio.Task | None = None

    @property
    def config(self) -> Config:
        return cast(Config, self.settings.config)

    def configure(self, updated: set[str]) -> None:
        if "models_cache_seconds" in updated or "groq_base_url" in updated:
            self.models = GroqModels()
        if updated & {"backend", "transformers_url"}:
            self.server_info = {}
        self._health = None

    async def check_server(self) -> None:
        """Say at start-up what the model server is, or what is wrong with it."""
        await self.refresh_health()
        config, info = self.config, self.server_info
        if info.get("problem"):
            logger.warning("gpt-oss model server %s (BACKEND=%s): %s", config.transformers_url,
                           config.backend, info["problem"])
        else:
            logger.info("gpt-oss model server: %s %s, model %s, context %s", info.get("kind"),
                        info.get("version") or "(version not reported)", info.get("model"),
                        info.get("context_length"))

    async def health(self) -> dict[str, Any]:
        if self._health is None:
            await self.refresh_health()
        elif time.monotonic() - self._health[0] > 2 and (
                self._health_task is None or self._health_task.done()):
            self._health_task = asyncio.create_task(self.refresh_health())
        assert self._health is not None
        return self._health[1]

    async def refresh_health(self) -> None:
        config = self.config
        info = await make_backend(config.backend).describe(self.client(), config.transformers_url)
        self.server_info = info
        body = {
            "status": "ok",
            "transformers": {"url": config.transformers_url, "backend": config.backend, **info},
            "groq": {"base_url": config.groq_base_url,
                     "key_configured": bool(config.groq_api_key)},
        }
        self._health = (time.monotonic(), body)

    async def context_length(self) -> int | None:
        """The model server's context length (vLLM's ``max_model_len``, which its adapter needs
        for ``max_tokens``; llama.cpp's ``n_ctx``, for the prompt check); asked again while
        unknown, so a server that was down at start-up is measured once it is up."""
        if self.config.backend != "transformers" and not self.server_info.get("context_length"):
            await self.refresh_health()
        return self.server_info.get("context_length")

    def groq_limit(self, model: str) -> int | None:
        """Groq's ``max_completion_tokens`` for ``model``, from the model list as last fetched
        (at start-up, and for ``/v1/models``, which agents ask for when they start): never a
        fetch on a request's way."""
        return self.models.limits.get(model)

    def fetch_groq_models(self) -> None:
        """Fetch Groq's model list in the background (at start-up)."""
        config = self.config
        if config.groq_api_key:
            self._models_task = asyncio.get_running_loop().create_task(self.models.get(
                self.client(), config.groq_base_url, config.groq_api_key,
                config.models_cache_seconds))

    async def model_ids(self) -> list[dict[str, Any]]:
        """The gpt-oss ids, then Groq's live list (a Groq id that would route locally, such as
        ``openai/gpt-oss-20b``, is offered as ``groq/<id>``)."""
        config = self.config
        data: list[dict[str, Any]] = [
            {"id": mid, "object": "model", "created": 0, "owned_by": "gpt-oss-harmony-groq"}
            for mid in config.harmony_model_ids
        ]
        groq = await self.models.get(self.client(), config.groq_base_url, config.groq_api_key,
                                     config.models_cache_seconds)
        for model in groq:
            if choose_route(model["id"], config.harmony_models).route is Route.HARMONY:
                model = {**model, "id": f"groq/{model['id']}"}
            data.append(model)
        return data

    async def model_list(self, request: http.Request) -> dict[str, Any]:
        """OpenAI's list; Codex's catalog when it asks with ``client_version``; Anthropic's
        shape for a client that sends ``anthropic-version``."""
        dialect = model_list_dialect(request)
        if dialect == "responses":
            return {"models": [codex_model(mid, self.server_info.get("context_length"))
                               for mid in self.config.harmony_model_ids]}
        if dialect == "messages":
            return anthropic_models(await self.model_ids())
        return {"object": "list", "data": await self.model_ids()}


def model_list_dialect(request: http.Request) -> str:
    """Which client API asks for the model list: Codex (Responses) adds ``client_version``,
    Anthropic's clients send ``anthropic-version``; anyone else gets OpenAI's list."""
    if "client_version" in request.query:
        return "responses"
    if "anthropic-version" in request.headers:
        return "messages"
    return "chat"


def codex_model(slug: str, context_window: int | None) -> dict[str, Any]:
    """A Codex ``ModelInfo`` for a gpt-oss id: the real context window (Codex's fallback is
    272k, so it would compact too late), low/medium/high reasoning, and the freeform
    ``apply_patch`` tool that newer Codex versions only offer to catalogued models."""
    return {
        "slug": slug, "display_name": slug,
        "supported_reasoning_levels": [{"effort": effort, "description": f"{effort} reasoning"}
                                       for effort in ("low", "medium", "high")],
        "default_reasoning_level": "medium",
        "shell_type": "unified_exec", "visibility": "list", "supported_in_api": True,
        "priority": 1, "support_verbosity": False,
        "truncation_policy": {"mode": "bytes", "limit": 10_000},
        "experimental_supported_tools": [], "base_instructions": CODEX_INSTRUCTIONS,
        "apply_patch_tool_type": "freeform",
        "context_window": context_window or DEFAULT_CONTEXT_WINDOW,
    }
