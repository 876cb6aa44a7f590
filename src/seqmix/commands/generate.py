"""`seqmix generate`: continue a prompt through the recurrent state, with a trained checkpoint or a
transformers model directory (ours, or one of a class ``from_transformers`` converts, converted on load)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seqmix.data.tokenizer import ByteTokenizer
from seqmix.layers.low_precision import low_precision_weights
from seqmix.model.generate import generate
from seqmix.train import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def configure(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory or a run directory (newest checkpoint)")
    source.add_argument("--from-hf", metavar="DIR",
                        help="a transformers save_pretrained directory: a seqmix model (SeqMixForCausalLM) or one "
                             "of a class from_transformers converts (Mamba, Qwen3-Next, Kimi Linear, ...; needs the "
                             "seqmix[hf] extra). Its tokenizer is used "
                             "when the directory has one, otherwise bytes (vocab_size 256)")
    p.add_argument("--prompt", action="append",
                   help='the text to continue (default "ROMEO.\\n"); give it several times to decode several '
                        "prompts together (one batch per prompt length in tokens)")
    p.add_argument("--batch", type=int, default=1, help="decode each prompt this many times, in one batch")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), default="float32",
                   help="the linear layers' weights: float32, bfloat16, or int8 with a scale per output row "
                        "(weight-only; activations, recurrent states and decays stay float32)")
    p.add_argument("--compile", action="store_true",
                   help="decode through torch.compile (C++ kernels; takes seconds to a minute to build, pays off "
                        "over long generations; falls back with a warning where no compiler is found); on CUDA a "
                        "recurrent model's step is captured once as a CUDA graph instead")
    p.add_argument("--no-stream", action="store_true",
                   help="print the text at the end instead of as it is produced (several prompts never stream)")


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
    if args.batch < 1:
        raise ValueError(f"--batch={args.batch}: must be a positive integer")
    if args.from_hf:
        model, tokenizer = _from_hf(args.from_hf)
        model = model.to(args.device)
    else:
        model, ckpt = load_model(args.checkpoint, device=args.device)
        tokenizer = ckpt.tokenizer()
    if args.dtype != "float32":
        model = low_precision_weights(model, args.dtype)
    prompts = [p for p in (args.prompt or ["ROMEO.\n"]) for _ in range(args.batch)]
    streaming = len(prompts) == 1 and not args.no_stream
    if streaming:
        print(prompts[0], end="", flush=True)
    timings: dict = {}
    texts = generate(model, prompts if len(prompts) > 1 else prompts[0], args.max_new_tokens,
                     temperature=args.temperature, top_k=args.top_k, seed=args.seed, tokenizer=tokenizer,
                     stream=(lambda piece: print(piece, end="", flush=True)) if streaming else None,
                     compile=args.compile, timings=timings)
    if streaming:
        print()
    else:
        for i, (prompt, text) in enumerate(zip(prompts, [texts] if isinstance(texts, str) else texts)):
            print(("" if i == 0 else "\n" + "-" * 40 + "\n") + prompt + text)
    new_tokens = len(prompts) * args.max_new_tokens
    decode = timings.get("decode_seconds", 0.0)
    rate = f"{new_tokens / decode:,.1f} tokens/s" if decode > 0 else "n/a tokens/s"
    print(f"generate: {len(prompts)} × {args.max_new_tokens} new tokens, decode {decode:.2f} s ({rate}), "
          f"prefill {timings.get('prefill_seconds', 0.0):.2f} s"
          + (f", compile {timings['compile_seconds']:.1f} s" if "compile_seconds" in timings else ""), file=sys.stderr)
    return 0
