"""Bubblewrap for the code-execution tests: Debian's ``bubblewrap`` installed with apt-get when
missing (a fresh CI machine runs as root), otherwise those tests are skipped with the command."""

from __future__ import annotations

from debian import find_or_install


def find_or_install_bwrap() -> str:
    return find_or_install("bwrap", ("bubblewrap",))
