"""Spill-over to Groq's hosted twin of a gpt-oss model, when the local model servers are down
or full: the decision and the ``Spillover`` addon (``addon``), the local side's capacity as
spill-over asks it (``capacity``; the replica pool answers), Groq's rate limits and the proxy's
spill budget (``limits``), sticky conversations (``sticky``), and the request for Groq with the
reply in the local model's shape (``request``).

The gateway and the entry use ``Spillover`` only.
"""

from __future__ import annotations

from .addon import Spillover

__all__ = ["Spillover"]
