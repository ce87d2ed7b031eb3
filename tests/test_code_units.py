"""The pure parts of code execution: which container a request names or finds by its key,
history items back to chat turns, and Groq's executed_tools as code steps."""

from __future__ import annotations

import json

import pytest

from harmony_groq.errors import ProxyError
from harmony_groq.tools.base import ServerCall, StepEvent
from harmony_groq.tools.code_history import (
    chat_executed,
    responses_code_turn,
    server_code_result,
)
from harmony_groq.tools.code_request import code_choice, conversation_key
from harmony_groq.tools.groq_code import executed_step_events, with_groq_code_tool
from harmony_groq.tools.python import code_of, python_config

MESSAGES_TOOL = {"type": "code_execution_20250522", "name": "code_execution"}


def messages_body(*turns: dict, **extra) -> dict:
    return {"model": "gpt-oss-20b", "system": "be brief", "tools": [MESSAGES_TOOL],
            "messages": list(turns), **extra}


def test_a_conversation_keeps_its_key_across_turns_and_clients_never_share_one() -> None:
    opening = {"role": "user", "content": "compute"}
    first = conversation_key("messages", messages_body(opening), {"x-api-key": "a"})
    later = conversation_key("messages", messages_body(
        opening, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}),
        {"X-Api-Key": "a"})
    assert first == later
    assert first != conversation_key("messages", messages_body(opening), {"x-api-key": "b"})
    assert first != conversation_key("messages", messages_body(
        opening, metadata={"user_id": "session-2"}), {"x-api-key": "a"})
    assert first != conversation_key("messages", messages_body(
        {"role": "user", "content": "other"}), {"x-api-key": "a"})


def test_the_container_a_request_names_or_its_history_used() -> None:
    assert code_choice("messages", {"tools": [{"type": "function"}]}, {}) is None
    named = code_choice("messages", messages_body({"role": "user", "content": "x"},
                                                  container="cntr_1"), {})
    assert (named.container_id, named.earlier_id) == ("cntr_1", "")
    body = {"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            "input": [{"role": "user", "content": "x"},
                      {"type": "code_interpreter_call", "code": "1", "container_id": "cntr_2"}]}
    chosen = code_choice("responses", body, {})
    assert (chosen.container_id, chosen.earlier_id) == ("", "cntr_2")
    with pytest.raises(ProxyError) as bad:
        code_choice("responses", {"tools": [{"type": "code_interpreter", "container": 3}]}, {})
    assert bad.value.status == 400 and "tools[0].container" in bad.value.message


def test_history_items_become_the_call_and_the_tool_message() -> None:
    call, output = responses_code_turn({"type": "code_interpreter_call", "id": "ci_1",
                                        "code": "print(1)",
                                        "outputs": [{"type": "logs", "logs": "1"}]}, "input[1]")
    assert call == {"id": "ci_1", "type": "server",
                    "function": {"name": "python", "arguments": "print(1)"}}
    assert output["server"] is True and output["content"] == "1"
    result = server_code_result({"type": "code_execution_tool_result", "tool_use_id": "s",
                                 "content": {"type": "code_execution_result", "stdout": "a\n",
                                             "stderr": "b\n", "return_code": 1}}, "m")
    assert result["content"] == "a\nb"
    turns = chat_executed({"role": "assistant", "content": "done", "reasoning": "think",
                           "executed_tools": [{"index": 0, "type": "python",
                                               "arguments": json.dumps({"code": "x = 1"}),
                                               "output": ""}]}, "messages[1]")
    assert [t["role"] for t in turns] == ["assistant", "tool", "assistant"]
    assert turns[0]["reasoning"] == "think" and turns[2] == {"role": "assistant",
                                                             "content": "done"}
    assert turns[1]["content"].startswith("[WARN] No output available")


def test_groq_executed_tools_are_shown_once_their_output_arrived() -> None:
    done: set[int] = set()
    entry = {"index": 0, "type": "python", "arguments": json.dumps({"code": "print(2)"})}
    assert executed_step_events([entry], done) == []
    events = executed_step_events([{**entry, "output": "2\n"}], done)
    assert [e.phase for e in events] == ["started", "finished"]
    assert isinstance(events[0], StepEvent) and events[0].step.code == "print(2)"
    assert executed_step_events([{**entry, "output": "2\n"}], done) == []  # once
    body = {"tools": [MESSAGES_TOOL]}
    sent = with_groq_code_tool({"tools": []}, body, "messages", "openai/gpt-oss-20b")
    assert sent["tools"] == [{"type": "code_interpreter"}]
    with pytest.raises(ProxyError) as refused:
        with_groq_code_tool({}, body, "messages", "llama-3.3-70b-versatile")
    assert refused.value.code == "code_execution_unavailable"


def test_the_declaration_tells_the_real_timeout_and_no_internet() -> None:
    description = python_config(7).description
    assert "time out after 7.0 seconds" in description and "120.0" not in description
    assert "Internet access for this session is disabled." in description
    assert code_of(ServerCall("python", '{"code": "print(1)"}')) == "print(1)"
    assert code_of(ServerCall("python", "{1: 2}")) == "{1: 2}"
