"""``harmony-groq-prepare`` on small synthetic model folders (the real tokenizer: e2e tests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harmony_groq.prepare import (
    HARMONY_TOKENS,
    MARKER,
    PrepareError,
    harmony_problems,
    is_harmony_ready,
    main,
    prepare,
)

from proxy_process import tool

OTHER_SPECIAL = {"<|endoftext|>": 199999, "<|reserved_200013|>": 200013}


def token_entry(content: str, token_id: int) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def write_model(folder: Path, model_type: str = "gpt_oss",
                tokens: dict[str, int] | None = None) -> Path:
    """A gpt-oss-shaped folder as downloaded: all added tokens special in both files."""
    tokens = {**HARMONY_TOKENS, **OTHER_SPECIAL} if tokens is None else tokens
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "added_tokens": [token_entry(t, i) for t, i in tokens.items()],
        "model": {"type": "BPE"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|return|>",
        "added_tokens_decoder": {str(i): {k: v for k, v in token_entry(t, i).items() if k != "id"}
                                 for t, i in tokens.items()}}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "original").mkdir()
    (folder / "original" / "config.json").write_text("{}")
    (folder / ".cache").mkdir()
    return folder


def special_flags(folder: Path) -> tuple[dict[str, bool], dict[str, bool]]:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return ({e["content"]: e["special"] for e in tokenizer["added_tokens"]},
            {e["content"]: e["special"] for e in config["added_tokens_decoder"].values()})


def test_copy_keeps_control_tokens_and_links_everything_else(tmp_path: Path) -> None:
    source = write_model(tmp_path / "gpt-oss-x")
    out = prepare(source, tmp_path / "out")
    for flags in special_flags(out):
        assert {t for t, special in flags.items() if not special} == set(HARMONY_TOKENS)
        assert all(flags[t] for t in OTHER_SPECIAL)
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|return|>"
    for name in ("config.json", "model.safetensors", "original"):
        assert (out / name).is_symlink() and (out / name).resolve() == source / name
    assert not (out / ".cache").exists()
    assert json.loads((out / MARKER).read_text())["source"] == str(source)
    assert is_harmony_ready(out)
    assert len(harmony_problems(source)) == 2 * len(HARMONY_TOKENS)  # the source is untouched


def test_running_again_replaces_its_own_output(tmp_path: Path) -> None:
    source = write_model(tmp_path / "m")
    out = prepare(source, tmp_path / "out")
    (out / "stale").write_text("x")
    assert prepare(source, out) == out
    assert not (out / "stale").exists() and is_harmony_ready(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing", "not a folder"),
    (lambda p: write_model(p / "m", model_type="llama"), "not a gpt-oss model"),
    (lambda p: write_model(p / "m", tokens={"<|return|>": 200002}), "lacks the harmony tokens"),
    (lambda p: write_model(p / "m", tokens={**HARMONY_TOKENS, "<|call|>": 5}),
     "unexpected ids"),
])
def test_refuses_what_is_not_a_gpt_oss_model(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(PrepareError, match=message):
        prepare(make(tmp_path), tmp_path / "out")


def test_refuses_to_overwrite_a_foreign_folder_or_write_inside_the_source(tmp_path: Path) -> None:
    source = write_model(tmp_path / "m")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not a harmony-groq-prepare output"):
        prepare(source, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    with pytest.raises(PrepareError, match="outside the source"):
        prepare(source, source / "harmony")


def test_cli_defaults_to_a_sibling_folder_and_prints_it_last(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_model(tmp_path / "gpt-oss-x")
    assert main([str(source)]) == 0
    expected = tmp_path / "gpt-oss-x-harmony"
    assert capsys.readouterr().out.splitlines()[-1] == str(expected)
    assert is_harmony_ready(expected)
    assert main([str(expected)]) == 0  # already ready: the folder itself, nothing written
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == str(expected) and "already" in captured.err


def test_cli_resolves_a_downloaded_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "hub" / "models--openai--gpt-oss-tiny"
    write_model(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["openai/gpt-oss-tiny"]) == 0
    out = Path(capsys.readouterr().out.splitlines()[-1])
    assert out == tmp_path / "xdg" / "gpt-oss-harmony-groq" / "models" / \
        "openai--gpt-oss-tiny-harmony"
    assert is_harmony_ready(out)

    assert main(["openai/gpt-oss-absent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmony-groq-prepare: error:") and "hf download" in err


def test_console_script_refuses_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([tool("harmony-groq-prepare"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"harmony-groq-prepare: error: no such model folder: {tmp_path / 'nope'}"]
