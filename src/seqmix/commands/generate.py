"""`seqmix generate`: continue a prompt through the recurrent state, with a trained checkpoint or a
transformers model directory (ours, or a Mamba / Mamba-2 / RWKV-4 one, converted on load)."""
from __future__ import annotations

import argparse
from pathlib import Path

from seqmix.data.tokenizer import ByteTokenizer
from seqmix.model.generate import generate
from seqmix.train import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def configure(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory or a run directory (newest checkpoint)")
    source.add_argument("--from-hf", metavar="DIR",
                        help="a transformers save_pretrained directory: a seqmix model (SeqMixForCausalLM) or a "
                             "Mamba, Mamba-2 or RWKV-4 one (needs the seqmix[hf] extra). Its tokenizer is used "
                             "when the directory has one, otherwise bytes (vocab_size 256)")
    p.add_argument("--prompt", default="ROMEO.\n")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")


def _from_hf(directory: str):
    """(model, tokenizer with encode/decode) from a transformers directory."""
    from seqmix.interop import load_pretrained

    model = load_pretrained(directory)
    if any((Path(directory) / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(directory)
    if model.config.vocab_size != ByteTokenizer.vocab_size:
        raise ValueError(f"{directory} has no tokenizer and vocab_size={model.config.vocab_size} is not a byte "
                         "vocabulary (256): save the model's tokenizer there (tokenizer.save_pretrained)")
    return model, ByteTokenizer()


def run(args: argparse.Namespace) -> int:
    if args.from_hf:
        model, tokenizer = _from_hf(args.from_hf)
        model = model.to(args.device)
    else:
        model, tokenizer = load_model(args.checkpoint, device=args.device)[0], None  # byte-level
    text = generate(model, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    seed=args.seed, tokenizer=tokenizer)
    print(args.prompt + text)
    return 0
