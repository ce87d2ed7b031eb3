"""``harmony-groq-prepare``: a harmony-ready copy of a gpt-oss model for ``transformers serve``.

``transformers serve`` (5.5+) decodes with ``skip_special_tokens=True``, which strips the harmony
control tokens and leaves unparseable text (``analysisThink.assistantfinalHi``). The fix is a model
copy whose tokenizer marks the 7 control tokens ``"special": false`` in **both**
``tokenizer.json`` (``added_tokens``) and ``tokenizer_config.json`` (``added_tokens_decoder``).
``<|return|>`` stays the eos token and is therefore still stripped; the proxy ends the message
itself. Every other file (weights included) is symlinked, not copied.

Usage: ``harmony-groq-prepare SOURCE [--output DIR]``, SOURCE a model folder or an already
downloaded hub id (``openai/gpt-oss-20b``, looked up in the HF hub cache). Idempotent. The output
path is printed on the last line of stdout; refusals exit 2 with a one-line message. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HARMONY_TOKENS: dict[str, int] = {
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
EOS_TOKEN = "<|return|>"
REWRITTEN = ("tokenizer.json", "tokenizer_config.json")
MARKER = "harmony-groq.json"
OUTPUT_SUFFIX = "-harmony"


class PrepareError(Exception):
    """A refusal: reported as one line, exit status 2."""


def _load_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PrepareError(f"{path.name} is missing in {path.parent}") from None
    except (OSError, ValueError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PrepareError(f"{path} is not a JSON object")
    return data


def _write_json(path: Path, data: dict) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")


def _harmony_entries(tokenizer: dict) -> dict[str, dict]:
    """The ``added_tokens`` entries of ``tokenizer.json`` that are harmony control tokens."""
    entries = tokenizer.get("added_tokens")
    if not isinstance(entries, list):
        return {}
    return {
        e["content"]: e
        for e in entries
        if isinstance(e, dict) and e.get("content") in HARMONY_TOKENS
    }


def _decoder_entries(tokenizer_config: dict) -> dict[str, dict]:
    """The ``added_tokens_decoder`` entries of ``tokenizer_config.json`` for control tokens."""
    decoder = tokenizer_config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        return {}
    return {
        e["content"]: e
        for e in decoder.values()
        if isinstance(e, dict) and e.get("content") in HARMONY_TOKENS
    }


def _read_model(model_dir: str | os.PathLike[str]) -> tuple[dict, dict]:
    """Parsed (tokenizer.json, tokenizer_config.json or {}) of a gpt-oss model, or PrepareError."""
    path = Path(model_dir)
    if not path.is_dir():
        raise PrepareError(f"not a folder: {path}")
    model_type = _load_json(path / "config.json").get("model_type")
    if model_type != "gpt_oss":
        raise PrepareError(f"not a gpt-oss model: config.json model_type is {model_type!r}")
    tokenizer = _load_json(path / "tokenizer.json")
    entries = _harmony_entries(tokenizer)
    missing = [t for t in HARMONY_TOKENS if t not in entries]
    if missing:
        raise PrepareError(f"tokenizer.json lacks the harmony tokens {' '.join(missing)}")
    wrong = [t for t, i in HARMONY_TOKENS.items() if entries[t].get("id") != i]
    if wrong:
        raise PrepareError(f"tokenizer.json has unexpected ids for {' '.join(wrong)}")
    config_path = path / "tokenizer_config.json"
    return tokenizer, (_load_json(config_path) if config_path.exists() else {})


def _problems(tokenizer: dict, tokenizer_config: dict) -> list[str]:
    problems = [
        f"tokenizer.json marks {t} special"
        for t, e in _harmony_entries(tokenizer).items()
        if e.get("special") is not False
    ]
    return problems + [
        f"tokenizer_config.json marks {t} special"
        for t, e in _decoder_entries(tokenizer_config).items()
        if e.get("special") is not False
    ]


def check_gpt_oss(model_dir: str | os.PathLike[str]) -> None:
    """Raise PrepareError unless ``model_dir`` holds a gpt-oss model with the harmony tokenizer."""
    _read_model(model_dir)


def harmony_problems(model_dir: str | os.PathLike[str]) -> list[str]:
    """Why ``transformers serve`` would strip the control tokens of ``model_dir`` ([] = ready)."""
    try:
        return _problems(*_read_model(model_dir))
    except PrepareError as exc:
        return [str(exc)]


def is_harmony_ready(model_dir: str | os.PathLike[str]) -> bool:
    """True if ``model_dir`` is a gpt-oss model whose control tokens survive decoding."""
    return not harmony_problems(model_dir)


def patch_tokenizer(tokenizer: dict) -> dict:
    """Mark the control tokens ``special: false`` in a parsed ``tokenizer.json`` (in place)."""
    for entry in _harmony_entries(tokenizer).values():
        entry["special"] = False
    return tokenizer


def patch_tokenizer_config(config: dict) -> dict:
    """Same for a parsed ``tokenizer_config.json``; ``eos_token`` stays ``<|return|>``."""
    for entry in _decoder_entries(config).values():
        entry["special"] = False
    return config


def hub_cache_dir() -> Path:
    """The HF hub cache, resolved as huggingface_hub does (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def resolve_hub_id(repo_id: str) -> Path:
    """The snapshot folder of an already downloaded hub model (``refs/main``)."""
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = repo / "snapshots"
    if ref.is_file():
        snapshot = snapshots / ref.read_text(encoding="utf-8").strip()
    else:
        found = sorted(p for p in snapshots.glob("*") if p.is_dir()) if snapshots.is_dir() else []
        if len(found) != 1:
            raise PrepareError(
                f"{repo_id} is neither a folder nor downloaded in the HF hub cache {repo.parent} "
                f"(download it first, e.g. `hf download {repo_id}`)"
            )
        snapshot = found[0]
    if not snapshot.is_dir():
        raise PrepareError(f"{repo_id}: refs/main points to a missing snapshot {snapshot}")
    return snapshot


def resolve_source(source: str) -> tuple[Path, str | None]:
    """(model folder, hub id or None) for a folder path or a downloaded hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), None
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") != 1
    if looks_like_path or path.exists():
        raise PrepareError(f"no such model folder: {source}")
    return resolve_hub_id(source), source


def default_output(model_dir: Path, hub_id: str | None) -> Path:
    """``<folder>-harmony`` next to a folder; the user cache for hub models."""
    if hub_id is None and model_dir.parent.name == "snapshots":
        repo_dir = model_dir.parent.parent.name  # models--org--name
        if repo_dir.startswith("models--"):
            hub_id = repo_dir.removeprefix("models--").replace("--", "/", 1)
    if hub_id is None:
        return model_dir.with_name(model_dir.name + OUTPUT_SUFFIX)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    name = hub_id.replace("/", "--") + OUTPUT_SUFFIX
    return Path(base).expanduser() / "gpt-oss-harmony-groq" / "models" / name


def _is_ours(path: Path) -> bool:
    return (path / MARKER).is_file()


def prepare(source: Path, output: Path) -> Path:
    """Write a harmony-ready copy of ``source`` to ``output`` (replacing an earlier one)."""
    tokenizer, tokenizer_config = _read_model(source)
    patch_tokenizer(tokenizer)
    patch_tokenizer_config(tokenizer_config)
    problems = _problems(tokenizer, tokenizer_config)
    if problems:
        raise PrepareError("cannot patch the tokenizer: " + "; ".join(problems))
    source, output = source.resolve(), output.expanduser().absolute()
    if output.resolve() == source or source in output.resolve().parents:
        raise PrepareError(f"the output folder must be outside the source folder {source}")
    if output.exists() and not (
        output.is_dir() and (_is_ours(output) or not any(output.iterdir()))
    ):
        raise PrepareError(
            f"{output} exists and is not a harmony-groq-prepare output; pick another"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for entry in sorted(source.iterdir()):
            if entry.name in REWRITTEN or entry.name == MARKER or entry.name.startswith("."):
                continue
            (tmp / entry.name).symlink_to(entry.resolve())
        _write_json(tmp / "tokenizer.json", tokenizer)
        if (source / "tokenizer_config.json").exists():
            _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        marker = {"source": str(source), "not_special": list(HARMONY_TOKENS), "eos": EOS_TOKEN}
        _write_json(tmp / MARKER, marker)
        if output.exists():
            shutil.rmtree(output)  # our own earlier output: symlinks and small JSON files
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="harmony-groq-prepare",
        description="Make a harmony-ready copy of a gpt-oss model for `transformers serve`: "
        "control tokens kept in the output text, weights symlinked.",
    )
    parser.add_argument("source", help="gpt-oss model folder, or a downloaded hub id")
    parser.add_argument(
        "--output", "-o", help="output folder (default: <folder>-harmony, or the user cache)"
    )
    args = parser.parse_args(argv)
    try:
        model_dir, hub_id = resolve_source(args.source)
        if args.output is None and not _problems(*_read_model(model_dir)):
            print(f"already harmony-ready: {model_dir}", file=sys.stderr)
            print(model_dir)
            return 0
        output = Path(args.output) if args.output else default_output(model_dir, hub_id)
        output = prepare(model_dir, output)
    except PrepareError as exc:
        print(f"harmony-groq-prepare: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"harmony-groq-prepare: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"harmony-ready copy of {model_dir}; serve it with: transformers serve {output}",
        file=sys.stderr,
    )
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
