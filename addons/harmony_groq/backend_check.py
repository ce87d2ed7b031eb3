"""Is ``transformers serve`` new enough? The answer for ``/health`` and the start-up warning.

``transformers serve`` does not report its version (no header, no endpoint), so the proxy
asks for what it needs instead: ``POST /v1/completions``, which exists from transformers 5.6.
A ``GET`` on it is side-effect free: FastAPI answers 405 (wrong method) where the route exists
and 404 where it does not, as on 4.57–5.5 (and ≤ 4.56, which has no ``/health`` either).
"""

from __future__ import annotations

MIN_TRANSFORMERS = "5.6"
UPGRADE = f"pip install -U 'transformers[serving]>={MIN_TRANSFORMERS}'"
COMPLETIONS_PATH = "/v1/completions"


def completions_problem(status: int | str) -> str | None:
    """The problem, with its fix, that ``GET /v1/completions`` answering ``status`` reveals:
    404 means a server older than 5.6. Anything else (405, or no answer) is no evidence."""
    if status != 404:
        return None
    return (f"no {COMPLETIONS_PATH}: this is `transformers serve` older than {MIN_TRANSFORMERS} "
            "(or not transformers), so every gpt-oss request will fail. Fix: "
            f"`{UPGRADE}` in the server's environment, then restart it.")
