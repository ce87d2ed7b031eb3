"""Code execution on local gpt-oss through the real mitmdump, with the real bubblewrap sandbox:
harmony's ``python`` tool as each client API asks for it (Responses ``code_interpreter``,
Messages ``code_execution_20250522``, Chat's Groq-style ``code_interpreter``), whole and
streamed; state kept in a container and absent from another; escape attempts answered as the
code's own output while the proxy keeps serving; containers another proxy holds.

The fake model server's rule runs the code the user message names (``RUN: <code>``) and then
answers with what the ``python`` tool said, so every answer shows what the sandbox returned.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from debian import find_or_install_bwrap
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from harmony_rules import final, last_message, last_user_text, messages
from proxy_process import ProxyProcess

TIMEOUT_S = 4  # CODE_TIMEOUT_S in these tests
SECRET = "gsk_code_exec_secret_7f3a"


def python_call(code: str, thinking: str = "Let me run it.") -> str:
    """A completion that reasons, then calls harmony's built-in python with raw code."""
    return (f"<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant"
            f"<|channel|>analysis to=python code<|message|>{code}<|call|>")


def run_rule(prompt: str) -> str:
    """``RUN: code`` runs it; the tool's answer comes back as ``OUT[…]``."""
    last = last_message(prompt)
    if last.author == "python":
        return final(f"OUT[{last.content}]")
    return python_call(last_user_text(prompt).removeprefix("RUN: "))


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    return find_or_install_bwrap()


@pytest.fixture()
def code_proxy(start_proxy: Callable[..., ProxyProcess], fake_transformers: FakeTransformers
               ) -> Iterator[ProxyProcess]:
    fake_transformers.respond(run_rule)
    yield start_proxy({"code_timeout_s": str(TIMEOUT_S), "code_memory_mb": "512",
                       "code_max_containers": "4", "code_output_chars": "2000"},
                      env={"GROQ_API_KEY": SECRET})


def openai_client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0,
                         timeout=60)


def anthropic_client(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.base_url.removesuffix("/v1"), api_key="sk-client",
                               max_retries=0, timeout=60)


CODE_TOOL = {"type": "code_interpreter", "container": {"type": "auto"}}


def responses_run(proxy: ProxyProcess, code: str, **extra) -> openai.types.responses.Response:
    return openai_client(proxy).responses.create(
        model="gpt-oss-20b", input=f"RUN: {code}", tools=[extra.pop("tool", CODE_TOOL)],
        **extra)


def code_call(response: openai.types.responses.Response):  # noqa: ANN201
    [call] = [item for item in response.output if item.type == "code_interpreter_call"]
    return call


def answer_of(text: str) -> str:
    assert text.startswith("OUT[") and text.endswith("]"), text
    return text[4:-1]


# -- each API, whole and streamed ------------------------------------------------------------


def test_responses_whole(code_proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    response = responses_run(code_proxy, "print(6 * 7)")
    assert [item.type for item in response.output] == [
        "reasoning", "code_interpreter_call", "reasoning", "message"]
    call = response.output[1]
    assert call.status == "completed"
    assert call.code == "print(6 * 7)" and call.container_id.startswith("cntr_")
    assert [(o.type, o.logs) for o in call.outputs] == [("logs", "42")]
    assert answer_of(response.output_text) == "42"
    first, second = fake_transformers.prompts[-2:]
    system = messages(first)[0].content
    assert "## python" in system and "stateful Jupyter notebook" in system
    assert f"time out after {float(TIMEOUT_S)} seconds" in system
    assert "Internet access for this session is disabled." in system
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>" in second


def test_responses_streamed(code_proxy: ProxyProcess) -> None:
    with openai_client(code_proxy).responses.stream(
            model="gpt-oss-20b", input="RUN: print('streamed')", tools=[CODE_TOOL]) as stream:
        events = list(stream)
        response = stream.get_final_response()
    kinds = [event.type for event in events]
    at = kinds.index("response.code_interpreter_call.in_progress")
    assert kinds[at - 1] == "response.output_item.added"
    assert kinds[at:at + 5] == [
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed"]
    assert kinds[at + 5] == "response.output_item.done"
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    done = events[at + 5].item
    assert done.type == "code_interpreter_call" and done.outputs[0].logs == "streamed"
    assert events[at + 2].code == "print('streamed')"
    assert answer_of(response.output_text) == "streamed"
    indexes = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert indexes == list(range(len(indexes)))


def test_messages_whole_and_streamed(code_proxy: ProxyProcess) -> None:
    client = anthropic_client(code_proxy)
    tools = [{"type": "code_execution_20250522", "name": "code_execution"}]
    whole = client.messages.create(
        model="gpt-oss-20b", max_tokens=500, tools=tools,
        messages=[{"role": "user", "content": "RUN: import sys; print('out'); "
                                              "print('err', file=sys.stderr)"}])
    kinds = [block.type for block in whole.content]
    assert kinds == ["thinking", "server_tool_use", "code_execution_tool_result", "thinking",
                     "text"]
    use, result = whole.content[1], whole.content[2]
    assert use.name == "code_execution" and use.input == {
        "code": "import sys; print('out'); print('err', file=sys.stderr)"}
    assert result.tool_use_id == use.id and result.content.type == "code_execution_result"
    assert (result.content.stdout, result.content.stderr, result.content.return_code) == (
        "out\n", "err\n", 0)
    assert answer_of(whole.content[4].text) == "out\nerr"
    assert whole.container.id.startswith("cntr_") and whole.container.expires_at

    with client.messages.stream(model="gpt-oss-20b", max_tokens=500, tools=tools,
                                messages=[{"role": "user", "content": "RUN: 1/0"}]) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == [
        "thinking", "server_tool_use", "code_execution_tool_result", "thinking", "text"]
    assert streamed.content[1].input == {"code": "1/0"}
    failed = streamed.content[2].content
    assert failed.return_code == 1 and "ZeroDivisionError" in failed.stderr
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.container.id.startswith("cntr_")
    starts = [e.index for e in events if e.type == "content_block_start"]
    assert starts == [0, 1, 2, 3, 4]


def test_chat_whole_and_streamed(code_proxy: ProxyProcess) -> None:
    client = openai_client(code_proxy)
    tools = [{"type": "code_interpreter"}]
    whole = client.chat.completions.create(
        model="gpt-oss-20b", tools=tools,
        messages=[{"role": "user", "content": "RUN: print(2 ** 10)"}])
    message = whole.choices[0].message
    assert answer_of(message.content) == "1024"
    assert not message.tool_calls
    executed = message.model_extra["executed_tools"]
    assert executed == [{"index": 0, "type": "python",
                         "arguments": json.dumps({"code": "print(2 ** 10)"}),
                         "output": "1024"}]
    chunks = list(client.chat.completions.create(
        model="gpt-oss-20b", tools=tools, stream=True,
        messages=[{"role": "user", "content": "RUN: print('chunk')"}]))
    streamed = [c.choices[0].delta.model_extra.get("executed_tools") for c in chunks
                if c.choices and c.choices[0].delta.model_extra.get("executed_tools")]
    assert streamed == [[{"index": 0, "type": "python",
                          "arguments": json.dumps({"code": "print('chunk')"}),
                          "output": "chunk"}]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer_of(text) == "chunk"


# -- containers --------------------------------------------------------------------------------


def test_state_is_kept_in_one_container_and_absent_from_another(
        code_proxy: ProxyProcess) -> None:
    first = responses_run(code_proxy, "secret_value = 7; open('/mnt/data/f.txt', 'w').write('x')")
    container = code_call(first).container_id
    named = {"type": "code_interpreter", "container": container}
    kept = responses_run(code_proxy, "print(secret_value * 6, open('f.txt').read())",
                         tool=named)
    assert code_call(kept).container_id == container
    assert answer_of(kept.output_text) == "42 x"
    fresh = responses_run(code_proxy, "print(secret_value)")
    assert code_call(fresh).container_id != container
    assert "NameError" in answer_of(fresh.output_text)


def test_messages_finds_its_conversation_container_again(code_proxy: ProxyProcess) -> None:
    client = anthropic_client(code_proxy)
    tools = [{"type": "code_execution_20250522", "name": "code_execution"}]
    opening = {"role": "user", "content": "RUN: counter = 41"}
    first = client.messages.create(model="gpt-oss-20b", max_tokens=500, tools=tools,
                                   messages=[opening])
    history = [opening, {"role": "assistant", "content": [
        block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": "RUN: print(counter + 1)"}]
    second = client.messages.create(model="gpt-oss-20b", max_tokens=500, tools=tools,
                                    messages=history)
    assert answer_of(second.content[-1].text) == "42"
    named = client.messages.create(model="gpt-oss-20b", max_tokens=500, tools=tools,
                                   container=first.container.id,
                                   messages=[{"role": "user", "content": "RUN: print(counter)"}])
    assert answer_of(named.content[-1].text) == "41" and named.container.id == first.container.id
    other = client.messages.create(model="gpt-oss-20b", max_tokens=500, tools=tools,
                                   messages=[{"role": "user", "content": "RUN: print(counter)"}])
    assert "NameError" in answer_of(other.content[-1].text)


def test_items_come_back_in_history_and_find_their_container(
        code_proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    """Codex-style (``store: false``, the whole history resent, ids dropped) and Chat with
    Groq's ``executed_tools``: the call and its output rendered back, the state still there."""
    client = openai_client(code_proxy)
    first = client.responses.create(model="gpt-oss-20b", input="RUN: kept = 'state'",
                                    tools=[CODE_TOOL], store=False)
    history = [{"role": "user", "content": "RUN: kept = 'state'"}]
    history += [{k: v for k, v in item.model_dump(exclude_none=True).items() if k != "id"}
                for item in first.output]
    history.append({"role": "user", "content": "RUN: print(kept)"})
    second = client.responses.create(model="gpt-oss-20b", input=history, tools=[CODE_TOOL],
                                     store=False)
    assert code_call(second).container_id == code_call(first).container_id
    assert answer_of(second.output_text) == "state"
    replayed = [(m.author, m.content) for m in messages(fake_transformers.prompts[-2])]
    assert ("assistant", "kept = 'state'") in replayed  # the call, then the tool's answer
    assert replayed[replayed.index(("assistant", "kept = 'state'")) + 1][0] == "python"

    chat = client.chat.completions.create(
        model="gpt-oss-20b", tools=[{"type": "code_interpreter"}],
        messages=[{"role": "user", "content": "RUN: total = 40"}])
    turn = chat.choices[0].message.model_dump(exclude_none=True)
    again = client.chat.completions.create(
        model="gpt-oss-20b", tools=[{"type": "code_interpreter"}],
        messages=[{"role": "user", "content": "RUN: total = 40"}, turn,
                  {"role": "user", "content": "RUN: print(total + 2)"}])
    assert answer_of(again.choices[0].message.content) == "42"
    replayed = [(m.author, m.content) for m in messages(fake_transformers.prompts[-2])]
    assert ("assistant", "total = 40") in replayed and ("python", "[WARN] No output available. "
                                                       "Use print() to output anything to "
                                                       "stdout to receive the output") in replayed


def test_a_container_of_another_proxy_is_not_found(code_proxy: ProxyProcess) -> None:
    foreign = {"type": "code_interpreter", "container": "cntr_" + secrets.token_hex(12)}
    with pytest.raises(openai.NotFoundError) as raised:
        responses_run(code_proxy, "print(1)", tool=foreign)
    assert raised.value.body["code"] == "container_not_found"
    assert "containers live in the proxy that started them" in raised.value.body["message"]
    with pytest.raises(anthropic.NotFoundError) as refused:
        anthropic_client(code_proxy).messages.create(
            model="gpt-oss-20b", max_tokens=100, container=foreign["container"],
            tools=[{"type": "code_execution_20250522", "name": "code_execution"}],
            messages=[{"role": "user", "content": "RUN: print(1)"}])
    assert refused.value.body["error"]["type"] == "not_found_error"


# -- escapes and limits, reported as the code's output -----------------------------------------


def test_escape_attempts_fail_as_tool_output_and_the_proxy_keeps_serving(
        code_proxy: ProxyProcess) -> None:
    attempts = {
        "environment": ("import os; print(sorted(os.environ), "
                        "open('/proc/1/environ').read())"),
        "flow_log": f"print(open({str(code_proxy.log_path)!r}).read()[:200])",
        "write_outside": "open('/evil', 'w')",
        "loopback": ("import socket; socket.create_connection(('127.0.0.1', "
                     f"{code_proxy.port}), timeout=2)"),
        "fork_bomb": ("import os\nn = 0\ntry:\n    while n < 5000:\n        if os.fork() == 0:\n"
                      "            import time; time.sleep(2); os._exit(0)\n        n += 1\n"
                      "except OSError as e:\n    print('fork stopped', e.errno)"),
        "memory": "x = bytearray(3 * 1024 ** 3)",
        "flood": "print('y' * (100 * 2 ** 20))",
        "endless": "while True:\n    pass",
    }
    results: dict[str, str] = {}
    health: list[int] = []

    def probe() -> None:  # the proxy answers others while the sandbox is busy
        with httpx.Client(timeout=5) as client:
            while len(results) < len(attempts):
                health.append(client.get(f"{code_proxy.base_url.removesuffix('/v1')}/health"
                                         ).status_code)
                time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for name, code in attempts.items():
            response = responses_run(code_proxy, code)
            assert response.status == "completed", name
            results[name] = answer_of(response.output_text)
    finally:
        results.update({name: "" for name in attempts if name not in results})
        prober.join(timeout=10)
    assert all(SECRET not in text for text in results.values())
    assert "GROQ_API_KEY" not in results["environment"]
    assert "FileNotFoundError" in results["flow_log"]
    assert "Read-only file system" in results["write_outside"]
    assert "ConnectionRefusedError" in results["loopback"] or "OSError" in results["loopback"]
    assert results["fork_bomb"].startswith("fork stopped 11")
    assert "MemoryError" in results["memory"]
    assert "[stdout truncated:" in results["flood"] and len(results["flood"]) < 2300
    assert f"timed out after {TIMEOUT_S} s" in results["endless"]
    assert health and set(health) == {200}
    body = httpx.get(f"{code_proxy.base_url.removesuffix('/v1')}/health", timeout=5).json()
    assert body["code_execution"]["status"] == "ok"
    assert SECRET not in code_proxy.log_path.read_text()


def test_without_a_sandbox_the_model_never_sees_python(
        start_proxy: Callable[..., ProxyProcess], fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(lambda prompt: final("no tools"))
    proxy = start_proxy({"code_sandbox": "off"})
    response = responses_run(proxy, "print(1)")
    assert response.output_text == "no tools"
    assert "## python" not in fake_transformers.prompts[-1]
    body = httpx.get(f"{proxy.base_url.removesuffix('/v1')}/health", timeout=5).json()
    assert body["code_execution"] == {"status": "unavailable", "reason": "CODE_SANDBOX=off"}


# -- the Groq route: Groq's gpt-oss runs the code, each API shows it in its own shapes ---------
# gpt-oss models are served locally; Groq's twin serves them when the local server is down.


@pytest.fixture()
def spilling_proxy(start_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    with socket.socket() as sock:  # a port nothing listens on: the local server is down
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return start_proxy({"transformers_url": dead, "spillover": "down"},
                       env={"GROQ_API_KEY": GROQ_KEY})


def groq_sent(fake_groq: FakeGroq) -> dict:
    return json.loads(next(r["raw"] for r in reversed(fake_groq.requests)
                           if r["path"] == "/openai/v1/chat/completions"))


def test_groq_twin_runs_code_for_responses_whole_and_streamed(
        spilling_proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    client = openai_client(spilling_proxy)
    whole = client.responses.create(model="gpt-oss-20b", input="RUN: print(3)",
                                    tools=[CODE_TOOL])
    sent = groq_sent(fake_groq)
    assert sent["model"] == "openai/gpt-oss-20b" and {"type": "code_interpreter"} in sent["tools"]
    call = code_call(whole)
    assert (call.code, call.container_id, call.outputs[0].logs) == (
        "print(3)", "groq", "groq ran print(3)\n")
    assert whole.output_text.startswith("groq says:")
    with client.responses.stream(model="gpt-oss-20b", input="RUN: print(4)",
                                 tools=[CODE_TOOL]) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    at = kinds.index("response.code_interpreter_call.in_progress")
    assert kinds[at - 1] == "response.output_item.added"
    assert "response.code_interpreter_call.completed" in kinds
    assert code_call(streamed).outputs[0].logs == "groq ran print(4)\n"


def test_groq_twin_runs_code_for_messages_and_chat(spilling_proxy: ProxyProcess,
                                                   fake_groq: FakeGroq) -> None:
    tools = [{"type": "code_execution_20250522", "name": "code_execution"}]
    client = anthropic_client(spilling_proxy)
    reply = client.messages.create(model="gpt-oss-20b", max_tokens=200, tools=tools,
                                   messages=[{"role": "user", "content": "RUN: print(5)"}])
    kinds = [block.type for block in reply.content]
    assert kinds[-3:] == ["server_tool_use", "code_execution_tool_result", "text"]
    assert reply.content[-3].input == {"code": "print(5)"}
    assert reply.content[-2].content.stdout == "groq ran print(5)\n"
    # The blocks go back in the history; Groq gets the conversation without them.
    follow = client.messages.create(model="gpt-oss-20b", max_tokens=200, tools=tools,
                                    messages=[
        {"role": "user", "content": "RUN: print(5)"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                          for b in reply.content]},
        {"role": "user", "content": "thanks"}])
    assert follow.content[-1].text.startswith("groq says:")
    sent = groq_sent(fake_groq)["messages"]
    assert all(m.get("role") != "tool" and not m.get("tool_calls") for m in sent)

    chunks = list(openai_client(spilling_proxy).chat.completions.create(
        model="gpt-oss-20b", tools=[{"type": "code_interpreter"}], stream=True,
        messages=[{"role": "user", "content": "RUN: print(6)"}]))
    executed = [entry for c in chunks if c.choices
                for entry in c.choices[0].delta.model_extra.get("executed_tools") or []]
    assert executed == [{"index": 0, "type": "python",
                         "arguments": json.dumps({"code": "print(6)"}),
                         "output": "groq ran print(6)\n"}]


def test_groq_models_without_code_execution_are_refused_clearly(proxy: ProxyProcess) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        anthropic_client(proxy).messages.create(
            model="llama-3.3-70b-versatile", max_tokens=100,
            tools=[{"type": "code_execution_20250522", "name": "code_execution"}],
            messages=[{"role": "user", "content": "RUN: print(7)"}])
    assert "gpt-oss models only" in refused.value.body["error"]["message"]
