"""Which model servers serve which gpt-oss model: ``TRANSFORMERS_URL`` (one URL or a
comma-separated list of replicas, all of ``BACKEND``'s kind) and ``MODEL_SERVERS``
(``MODEL=KIND:URL|KIND:URL;MODEL=…``, replicas per served model id), parsed and validated.

Pure, and below both ``settings`` (``build_config`` calls ``model_servers`` and turns a
``SpecError`` into its one start-up line) and ``pool/`` (which routes over the groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

ROUTING_POLICIES = ("cache_aware", "least_loaded", "round_robin")


class SpecError(ValueError):
    """A replica setting that cannot be used; the message is the start-up line."""


@dataclass(frozen=True)
class ModelServers:
    """The replicas of one served model; ``model`` None is the default group (every gpt-oss
    model ``MODEL_SERVERS`` does not name). One kind per group: the prompt is rendered for it."""

    model: str | None
    kind: str
    urls: tuple[str, ...]


def replica_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"{name}={value!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SpecError(f"{name}={value!r} has a bad port") from None
    return value.rstrip("/")


def replica_urls(name: str, value: str) -> tuple[str, ...]:
    """A comma-separated list of distinct replica URLs (one URL is a list of one)."""
    urls = tuple(replica_url(name, part.strip()) for part in value.split(",") if part.strip())
    if not urls:
        raise SpecError(f"{name} names no URL")
    if len(set(urls)) != len(urls):
        raise SpecError(f"{name}={value!r} names a replica twice")
    return urls


def model_servers(value: str, kinds: tuple[str, ...]) -> tuple[ModelServers, ...]:
    """``gpt-oss-120b=vllm:http://a:8000|vllm:http://b:8000;gpt-oss-20b=llamacpp:http://c:8080``."""
    groups: list[ModelServers] = []
    for entry in (part.strip() for part in value.split(";")):
        if not entry:
            continue
        model, _, servers = (part.strip() for part in entry.partition("="))
        if not model or not servers:
            raise SpecError(f"model_servers entry {entry!r} is not MODEL=KIND:URL|KIND:URL "
                            "(e.g. gpt-oss-120b=vllm:http://10.0.0.2:8000)")
        if any(group.model == model for group in groups):
            raise SpecError(f"model_servers names {model!r} twice")
        found_kinds, urls = set(), []
        for server in (part.strip() for part in servers.split("|") if part.strip()):
            kind, sep, url = server.partition(":")
            if not sep or kind not in kinds:
                raise SpecError(f"model_servers replica {server!r} of {model}: start it with "
                                f"one of {', '.join(kinds)} and a colon (vllm:http://…)")
            found_kinds.add(kind)
            urls.append(url)
        if len(found_kinds) != 1:
            raise SpecError(f"model_servers: the replicas of {model} mix kinds "
                            f"({', '.join(sorted(found_kinds))}); one kind per model")
        groups.append(ModelServers(model, found_kinds.pop(),
                                   replica_urls(f"model_servers ({model})", ",".join(urls))))
    return tuple(groups)


def group_for(groups: tuple[ModelServers, ...], model: str) -> ModelServers:
    """The group serving ``model``: its exact id, else the longest id it contains (so
    ``openai/gpt-oss-120b`` finds ``gpt-oss-120b``), else the default group (last)."""
    lowered = model.lower()
    named = [g for g in groups if g.model is not None]
    exact = next((g for g in named if g.model.lower() == lowered), None)  # type: ignore[union-attr]
    if exact is not None:
        return exact
    contained = [g for g in named if g.model.lower() in lowered]  # type: ignore[union-attr]
    if contained:
        return max(contained, key=lambda g: len(g.model or ""))
    return groups[-1]
