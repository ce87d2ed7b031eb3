"""mitmproxy entry script: ``mitmdump -s addons/harmony.py``.

Thin on purpose: the logic lives in the ``harmony_groq`` package next to this file.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harmony_groq.addon import FlowLog, Gateway, Settings  # noqa: E402

_settings = Settings()
addons = [_settings, Gateway(_settings), FlowLog(_settings)]
