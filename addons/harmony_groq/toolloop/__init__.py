"""The server-tool loop: a gpt-oss reply that stops on a server tool's call is continued by the
proxy (the tool run, its message appended, the next step generated) until a final answer.
The tools themselves, and what each shows in every client API, live in ``tools/`` below it."""

from .loop import ToolLoop

__all__ = ["ToolLoop"]
