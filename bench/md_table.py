"""Markdown pieces of the report: a table, and a goal's verdict (report.py and each part's own
section, such as pool_bench.py's, use them)."""

from __future__ import annotations


def row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows), ""]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"
