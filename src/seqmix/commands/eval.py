"""`seqmix eval`: bits per byte of a checkpoint on the validation and test splits, and loss by position.

By default each split is measured on an evenly spread subset of ``DEFAULT_FINAL_EVAL_BYTES``; the whole
split only with ``--eval-bytes all``."""
from __future__ import annotations

import argparse
import json

from seqmix.commands.options import byte_budget
from seqmix.data.prepare import tokenize_for
from seqmix.data.tokenizer import bpe_size, check_same, load_tokenizer_file
from seqmix.eval import evaluate
from seqmix.layers.low_precision import low_precision_weights
from seqmix.train import load_model
from seqmix.train.config import DEFAULT_FINAL_EVAL_BYTES


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory or a run directory (newest checkpoint)")
    p.add_argument("--split", choices=("validation", "test", "both"), default="both")
    p.add_argument("--corpus", help="default: the corpus the checkpoint was trained on")
    p.add_argument("--tokenizer", help="refuse to evaluate unless the checkpoint was trained with this tokenizer "
                                       "(default: the checkpoint's own, saved with it)")
    p.add_argument("--seq-len", type=int, help="window length (default: the training sequence length)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-bytes", "--max-bytes", type=byte_budget, default=DEFAULT_FINAL_EVAL_BYTES,
                   help="evaluate an evenly spread subset of about this many bytes of each split, or 'all' for the "
                        f"whole split (default {DEFAULT_FINAL_EVAL_BYTES})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), default="float32",
                   help="the linear layers' weights (weight-only; activations and states stay float32): what "
                        "reduced precision costs in bits per byte")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")


def run(args: argparse.Namespace) -> int:
    model, ckpt = load_model(args.checkpoint, device=args.device)
    if args.dtype != "float32":
        model = low_precision_weights(model, args.dtype)
    trained = ckpt.config["train"]
    tokenizer = ckpt.tokenizer()
    if args.tokenizer is not None:
        if args.tokenizer != tokenizer.name:
            raise ValueError(f"tokenizer mismatch: checkpoint {ckpt.directory} was trained with tokenizer "
                             f"{tokenizer.name!r}, not {args.tokenizer!r}")
        if args.tokenizer != "bytes" and bpe_size(args.tokenizer) is None:  # a file: it must not have changed
            check_same(tokenizer.name, tokenizer.sha256, load_tokenizer_file(args.tokenizer),
                       f"checkpoint {ckpt.directory}")
    # the run's own shards of its corpus (prepared from a plain --corpus), unless another corpus is asked for
    run_dir = ckpt.directory.parent.parent if ckpt.directory.parent.name == "checkpoints" else None
    corpus = tokenize_for(args.corpus if args.corpus is not None else trained["corpus"], tokenizer,
                          run_dir if args.corpus is None else None)
    seq_len = args.seq_len or trained["seq_len"]
    splits = ("validation", "test") if args.split == "both" else (args.split,)
    results = {s: evaluate(model, corpus[s], seq_len, batch_size=args.batch_size, max_bytes=args.eval_bytes)
               for s in splits}
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt.directory), "step": ckpt.meta["step"], "dtype": args.dtype, **results},
                         indent=2))
        return 0
    print(f"{ckpt.directory} (step {ckpt.meta['step']}), corpus {corpus.name}, windows of {seq_len} tokens, tokenizer "
          f"{tokenizer.name}, {args.dtype} weights")
    for s, r in results.items():
        print(f"{s:>10}: {r['bpb']:.4f} bits per byte over {r['bytes']:,} bytes")
    for s, r in results.items():
        if r["loss_by_position_buckets"]:
            print(f"\n{s} bits per byte by position (0-based, averaged over each range):")
            for b in r["loss_by_position_buckets"]:
                print(f"  [{b['start']:>6}, {b['end']:>6})  {b['bpb']:.4f}")
    return 0
