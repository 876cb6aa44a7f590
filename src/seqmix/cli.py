"""The `seqmix` command line. Each subcommand lives in its own module, imported only when used.

A subcommand module exposes ``configure(parser)`` (add its arguments) and ``run(args) -> int | None``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("seqmix.commands.train", "train a byte-level language model (default: a small model on Shakespeare)"),
    "prepare": ("seqmix.commands.prepare", "tokenize a corpus once into memory-mapped token shards"),
    "eval": ("seqmix.commands.eval", "bits per byte of a checkpoint on validation/test, and loss by position"),
    "generate": ("seqmix.commands.generate", "continue a prompt with a trained checkpoint"),
    "kan-vs-mlp": ("seqmix.bench.kan_vs_mlp", "KAN against an MLP on sklearn digits"),
    "arena": ("seqmix.arena.cli", "train, evaluate and race architectures on the same data; write a report"),
    "bench": ("seqmix.bench.cli", "time mixers: forward per token vs length, decode latency vs context"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqmix", description="Beyond-the-Transformer sequence mixers: train, evaluate, race.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the module that runs
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"seqmix {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
