"""`seqmix generate`: continue a prompt with a trained checkpoint, one byte at a time through the state."""
from __future__ import annotations

import argparse

from seqmix.model.generate import generate
from seqmix.train import load_model


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory or a run directory (newest checkpoint)")
    p.add_argument("--prompt", default="ROMEO.\n")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.checkpoint, device=args.device)
    text = generate(model, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    seed=args.seed)
    print(args.prompt + text)
    return 0
