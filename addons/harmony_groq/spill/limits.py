"""What spill-over may spend at Groq: the organisation's rate limits as Groq's answers report
them, and the proxy's own token budget per hour or day.

``GroqLimits`` keeps ``retry-after`` and ``x-ratelimit-*`` of every Groq answer (spilled or
not: the limits are per organisation), read when a spill asks. ``SpillBudget`` reserves,
before a request spills, its prompt estimate plus the completion tokens it may use (sent to
Groq as ``max_completion_tokens``), and settles the reservation to the usage Groq reports;
the sum of settled usage and open reservations never passes the budget.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

WINDOW_SECONDS = {"hour": 3600, "day": 86400}
GROQ_MAX_COMPLETION = 65_536  # gpt-oss-20b and -120b on Groq (its /models, max_completion_tokens)
MIN_COMPLETION = 256  # a spill that could not write this much is not worth making
PROMPT_MARGIN = 1.10  # Groq renders the prompt itself: a little longer than ours, to be safe
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
UNREAD_ANSWERS = 64  # answers kept unread: Groq reports the limits on every one
LIMITS = ("requests", "tokens")  # x-ratelimit-remaining-<limit>, x-ratelimit-reset-<limit>


def go_duration(value: str | None) -> float | None:
    """Seconds in Groq's reset headers (Go durations: ``2m59.56s``, ``7.66s``, ``33ms``), or in
    ``retry-after`` (plain seconds); ``None`` if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def prompt_estimate(rendered_tokens: int) -> int:
    """What a prompt of ``rendered_tokens`` harmony tokens may cost at Groq."""
    return math.ceil(rendered_tokens * PROMPT_MARGIN) + 32


@dataclass
class GroqLimits:
    """Groq's last word on the organisation's limits; ``refusal`` says why not to spill now."""

    blocked_until: float = 0.0  # after a 429, until its retry-after
    requests_left: int | None = None  # x-ratelimit-remaining-requests (per day)
    requests_reset_at: float = 0.0
    tokens_left: int | None = None  # x-ratelimit-remaining-tokens (per minute)
    tokens_reset_at: float = 0.0

    # The latest answers' headers and when, newest last: read only when a spill asks.
    unread: deque[tuple[float, Mapping[str, str]]] = field(
        default_factory=lambda: deque(maxlen=UNREAD_ANSWERS))

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Every Groq answer passes here; its counts are read only when a spill asks
        (``refusal``): per limit, the last answer that reported it replaces the earlier ones'.
        A 429 is read at once: its wait holds whatever answers come after it."""
        now = time.monotonic()
        if status == 429:
            wait = go_duration(headers.get("retry-after"))
            self.blocked_until = max(self.blocked_until, now + (1.0 if wait is None else wait))
        self.unread.append((now, headers))

    def _read(self) -> None:
        """Per limit, the newest answer that reported it replaces what earlier ones said."""
        for name in LIMITS:
            header = f"x-ratelimit-remaining-{name}"
            newest = next(((now, headers) for now, headers in reversed(self.unread)
                           if header in headers), None)
            if newest is None:
                continue
            now, headers = newest
            left = headers[header]
            if not left.strip().isdigit():
                continue
            reset = go_duration(headers.get(f"x-ratelimit-reset-{name}"))
            setattr(self, f"{name}_left", int(left))
            setattr(self, f"{name}_reset_at", now + (60.0 if reset is None else reset))
        self.unread.clear()

    def refusal(self, tokens: int) -> str | None:
        """Why a spill of about ``tokens`` prompt tokens must not go to Groq now, or None."""
        self._read()
        now = time.monotonic()
        if now < self.blocked_until:
            return (f"Groq answered 429 (rate limited); retry after "
                    f"{math.ceil(self.blocked_until - now)} s")
        if (self.requests_left is not None and self.requests_left < 1
                and now < self.requests_reset_at):
            return (f"Groq's request limit is used up for {math.ceil(self.requests_reset_at - now)}"
                    " s (x-ratelimit-remaining-requests: 0)")
        if (self.tokens_left is not None and self.tokens_left < tokens
                and now < self.tokens_reset_at):
            return (f"Groq's token limit is nearly used up (x-ratelimit-remaining-tokens: "
                    f"{self.tokens_left}, this request ~{tokens}) for "
                    f"{math.ceil(self.tokens_reset_at - now)} s")
        return None


@dataclass
class SpillBudget:
    """Tokens spill-over may spend per clock hour or UTC day (``limit`` 0: unlimited)."""

    limit: int = 0
    window: str = "day"
    spent: int = 0  # settled usage in the current window
    reserved: dict[str, int] = field(default_factory=dict)  # flow id → open reservation
    window_start: float = 0.0

    def _roll(self) -> None:
        seconds = WINDOW_SECONDS[self.window]
        start = time.time() // seconds * seconds
        if start != self.window_start:
            self.window_start, self.spent = start, 0

    def left(self) -> int | None:
        if not self.limit:
            return None
        self._roll()
        return self.limit - self.spent - sum(self.reserved.values())

    def reserve(self, flow_id: str, prompt: int, max_tokens: int | None
                ) -> tuple[int | None, str | None]:
        """Reserve ``prompt`` plus the completion; return the ``max_completion_tokens`` to send
        (``None``: no cap needed) or why the budget cannot take the request."""
        left = self.left()
        if left is None:
            return None, None
        wanted = max_tokens or GROQ_MAX_COMPLETION
        allowance = min(wanted, left - prompt)
        if allowance < min(wanted, MIN_COMPLETION):
            return None, (f"the spill budget (SPILLOVER_BUDGET_TOKENS={self.limit} per "
                          f"{self.window}) has {max(left, 0)} tokens left, this request needs "
                          f"~{prompt + min(wanted, MIN_COMPLETION)}")
        self.reserved[flow_id] = prompt + allowance
        return allowance, None

    def settle(self, flow_id: str, used: int | None) -> int | None:
        """Replace the flow's reservation by what Groq reported (``None``: unknown, so the
        whole reservation counts); return what was counted."""
        reserved = self.reserved.pop(flow_id, None)
        if reserved is None:
            return None
        self._roll()
        counted = reserved if used is None else used
        self.spent += counted
        return counted

    def status(self) -> dict[str, int]:
        left = self.left()
        return {"limit": self.limit, "spent": self.spent,
                "reserved": sum(self.reserved.values()),
                "left": -1 if left is None else left}
