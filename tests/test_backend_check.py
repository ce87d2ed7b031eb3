"""The transformers-version judgement behind /health (the real server: test_realserver_e2e.py)."""

from __future__ import annotations

import pytest

from harmony_groq.backend_check import MIN_TRANSFORMERS, completions_problem


def test_a_missing_route_means_an_old_server_and_says_the_fix() -> None:
    problem = completions_problem(404)
    assert problem is not None
    assert problem.startswith("no /v1/completions")
    assert f"older than {MIN_TRANSFORMERS}" in problem
    assert f"pip install -U 'transformers[serving]>={MIN_TRANSFORMERS}'" in problem


@pytest.mark.parametrize("status", [405, 200, 401, 500, "ConnectError", "ReadTimeout"])
def test_anything_else_is_no_evidence(status: int | str) -> None:
    assert completions_problem(status) is None
