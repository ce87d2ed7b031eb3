"""``python -m harmony_groq.keys keys …`` and ``… usage …`` (``./run.sh keys``, ``usage``)."""

import sys

from . import cli, usage

if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["keys"]
    sys.exit(usage.main(rest) if command == "usage" else cli.main(rest))
