"""The benchmark's requests and the fake model's canned replies, all deterministic.

The fake transformers server picks its reply by the request's ``seed`` (the proxy passes
``seed`` through unchanged), so one fake serves every gpt-oss workload; the Responses and
Messages APIs have no ``seed``, so a prompt holding ``STREAM_PROMPT`` gets the stream reply too.
"""

from __future__ import annotations

import json
from typing import Any

GROQ_MODEL = "llama-3.3-70b-versatile"
GPT_OSS = "gpt-oss-20b"
DATE = "2026-01-15"

SHORT_SEED, CODING_SEED, STREAM_SEED = 1, 2, 3
STREAM_PROMPT = "Plan the refactoring, step by step."

SHORT_REPLY = ("<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|><|start|>assistant"
               "<|channel|>final<|message|>2 + 2 = 4.")
CODING_REPLY = (
    "<|channel|>analysis<|message|>All fifty fixes are in; the user wants the whole suite run. "
    "I'll call run_tests on the tests folder.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.run_tests <|constrain|>json<|message|>{"path": "tests", "verbose": true}'
    "<|call|>"
)


def _stream_reply() -> str:
    """A short analysis, then a long final answer: max_tokens cuts it to the stream length."""
    steps = " ".join(
        f"Step {n}: open handler_{n % 13}.py, rename the variable `value_{n}` to `total_{n}`, "
        f"and keep the return type {('int', 'str', 'dict', 'list')[n % 4]} unchanged."
        for n in range(120)
    )
    return ("<|channel|>analysis<|message|>The user wants a long refactoring plan; list every "
            "step.<|end|><|start|>assistant<|channel|>final<|message|>" + steps)


STREAM_REPLY = _stream_reply()
REPLIES = {SHORT_SEED: SHORT_REPLY, CODING_SEED: CODING_REPLY, STREAM_SEED: STREAM_REPLY}


def groq_small_body() -> dict[str, Any]:
    return {"model": GROQ_MODEL, "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 16}


def short_chat_body() -> dict[str, Any]:
    return {"model": GPT_OSS, "seed": SHORT_SEED, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"}]}


def stream_body(max_tokens: int) -> dict[str, Any]:
    return {"model": GPT_OSS, "seed": STREAM_SEED, "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": STREAM_PROMPT}]}


def responses_stream_body(max_tokens: int) -> dict[str, Any]:
    """``stream_body`` in OpenAI's Responses API: the same harmony prompt."""
    return {"model": GPT_OSS, "stream": True, "store": False,
            "max_output_tokens": max_tokens, "input": STREAM_PROMPT}


def messages_stream_body(max_tokens: int) -> dict[str, Any]:
    """``stream_body`` in Anthropic's Messages API: the same harmony prompt."""
    return {"model": GPT_OSS, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": STREAM_PROMPT}]}


# -- the 100k-token coding-assistant conversation -----------------------------------------

_TOOLS = (
    ("read_file", "Read a file of the workspace.", {"path": "string", "start_line": "integer"}),
    ("write_file", "Create or overwrite a file.", {"path": "string", "content": "string"}),
    ("apply_patch", "Apply a unified diff to one file.", {"path": "string", "patch": "string"}),
    ("run_shell", "Run a shell command in the workspace.", {"command": "string",
                                                           "timeout_s": "integer"}),
    ("run_tests", "Run pytest on a path.", {"path": "string", "verbose": "boolean"}),
    ("grep", "Search files for a regular expression.", {"pattern": "string", "glob": "string"}),
    ("glob", "List files matching a glob.", {"pattern": "string"}),
    ("list_dir", "List a directory.", {"path": "string", "recursive": "boolean"}),
    ("git_status", "Show the working tree status.", {}),
    ("git_diff", "Show the diff of a path.", {"path": "string", "staged": "boolean"}),
    ("git_log", "Show recent commits.", {"count": "integer"}),
    ("create_dir", "Create a directory.", {"path": "string"}),
    ("delete_file", "Delete a file.", {"path": "string"}),
    ("move_file", "Move or rename a file.", {"source": "string", "target": "string"}),
    ("python_eval", "Evaluate a Python expression.", {"expression": "string"}),
    ("lint", "Run the linter on a path.", {"path": "string", "fix": "boolean"}),
    ("format_code", "Format a file.", {"path": "string"}),
    ("open_url", "Fetch a documentation page.", {"url": "string"}),
    ("ask_user", "Ask the user a question.", {"question": "string"}),
    ("todo", "Update the task list.", {"items": "array"}),
)


def coding_tools() -> list[dict[str, Any]]:
    tools = []
    for name, description, params in _TOOLS:
        properties: dict[str, Any] = {
            key: ({"type": kind, "items": {"type": "string"}} if kind == "array" else
                  {"type": kind}) | {"description": f"The {key.replace('_', ' ')} to use."}
            for key, kind in params.items()}
        tools.append({"type": "function", "function": {
            "name": name, "description": description,
            "parameters": {"type": "object", "properties": properties,
                           "required": list(params)[:1]}}})
    return tools


def _system_prompt(rules: int) -> str:
    lines = ["You are a careful coding assistant working in a Python repository.", ""]
    for n in range(rules):
        lines.append(f"{n + 1}. When you touch module_{n % 17}.py, keep its public functions "
                     f"typed, run `pytest tests/test_module_{n % 17}.py` afterwards, and explain "
                     f"change {n} in one sentence.")
    return "\n".join(lines)


def _source_file(turn: int, functions: int) -> str:
    lines = [f'"""Module {turn}: helpers for feature {turn}."""', "", "import json", ""]
    for n in range(functions):
        factor = n % 7 + 2
        lines += [
            f'def helper_{turn}_{n}(value: int, name: str = "item{n}") -> dict:',
            f'    """Return the record for name, value scaled by {factor}."""',
            f"    result = {{'name': name, 'value': value * {factor}, 'index': {n}}}",
            f"    return json.loads(json.dumps(result))  # round trip {turn}.{n}",
            "",
        ]
    return "\n".join(lines)


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def coding_conversation_body(turns: int = 50, functions: int = 23, rules: int = 60
                             ) -> dict[str, Any]:
    """Long system prompt, 20 tools, ``turns`` turns each reading a file and patching it."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": _system_prompt(rules)}]
    for turn in range(turns):
        path = f"src/module_{turn}.py"
        read, patch = f"call_read_{turn}", f"call_patch_{turn}"
        messages += [
            {"role": "user", "content": f"Turn {turn}: test_feature_{turn} fails; look at "
                                        f"{path} and fix it."},
            {"role": "assistant", "content": None,
             "tool_calls": [_call(read, "read_file", {"path": path})]},
            {"role": "tool", "tool_call_id": read, "content": _source_file(turn, functions)},
            {"role": "assistant", "content": None, "tool_calls": [_call(patch, "apply_patch", {
                "path": path,
                "patch": f"--- a/{path}\n+++ b/{path}\n@@ -8 +8 @@\n-    result = {{'v': 0}}\n"
                         f"+    result = {{'name': name, 'value': value * 2}}\n"})]},
            {"role": "tool", "tool_call_id": patch, "content": "Patch applied."},
            {"role": "assistant", "content": f"Fixed test_feature_{turn}: helper_{turn}_0 now "
                                             "returns the scaled record."},
        ]
    messages.append({"role": "user", "content": "Now run the whole test suite."})
    return {"model": GPT_OSS, "seed": CODING_SEED, "messages": messages,
            "tools": coding_tools()}


# -- a five-step tool chain (prefix reuse) ---------------------------------------------------

def _chain_call(name: str, arguments: dict[str, Any]) -> str:
    """A tool call's header as gpt-oss writes it (harmony-mapping.md §1), then its arguments."""
    return (f"<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json"
            f"<|message|>{json.dumps(arguments)}<|call|>")


_CHAIN = (
    ("The test of feature 3 fails. I should find where helper_3_0 is defined before reading "
     "anything; grep for its definition.",
     "grep", {"pattern": "def helper_3_0", "glob": "src/**/*.py"},
     "src/module_3.py:5:def helper_3_0(value: int, name: str = \"item0\") -> dict:"),
    ("It is in src/module_3.py, line 5. Read the file to see what the helper returns and "
     "why the test would disagree.",
     "read_file", {"path": "src/module_3.py"}, _source_file(3, 12)),
    ("helper_3_0 scales by 2, as the test expects, but the round trip turns the index into a "
     "float on some paths? No: the failing assertion is the name. Patch the default name.",
     "apply_patch", {"path": "src/module_3.py", "patch": "--- a/src/module_3.py\n+++ "
                     "b/src/module_3.py\n@@ -5 +5 @@\n-def helper_3_0(value: int, name: str = "
                     "\"item0\") -> dict:\n+def helper_3_0(value: int, name: str = \"item\") "
                     "-> dict:\n"},
     "Patch applied."),
    ("Patched. Run the feature's tests to check the fix before anything else.",
     "run_tests", {"path": "tests/test_feature_3.py", "verbose": True},
     "\n".join([f"tests/test_feature_3.py::test_case_{n} PASSED" for n in range(24)]
               + ["", "24 passed in 0.41s"])),
    ("All 24 pass. Show the diff so the answer can quote the change exactly.",
     "git_diff", {"path": "src/module_3.py", "staged": False},
     "diff --git a/src/module_3.py b/src/module_3.py\n@@ -5 +5 @@\n-def helper_3_0(value: int, "
     "name: str = \"item0\") -> dict:\n+def helper_3_0(value: int, name: str = \"item\") -> "
     "dict:"),
)
CHAIN_ANSWER = ("<|channel|>analysis<|message|>Diff is one line; answer.<|end|><|start|>assistant"
                "<|channel|>final<|message|>Fixed: helper_3_0's default name is now \"item\"; "
                "tests/test_feature_3.py passes (24 tests).<|return|>")


def tool_chain() -> tuple[dict[str, Any], list[str], list[str]]:
    """A coding agent's five-step chain: the request that starts it, the model's six replies
    (analysis then one call each, then the answer) and the five tool results."""
    body = {"model": GPT_OSS, "tools": coding_tools(), "messages": [
        {"role": "system", "content": _system_prompt(60)},
        {"role": "user", "content": "test_feature_3 fails; find the cause and fix it."}]}
    replies = [f"<|channel|>analysis<|message|>{thought}<|end|>" + _chain_call(name, args)
               for thought, name, args, _ in _CHAIN]
    return body, replies + [CHAIN_ANSWER], [result for *_, result in _CHAIN]
