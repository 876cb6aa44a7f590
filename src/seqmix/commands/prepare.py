"""`seqmix prepare`: tokenize a corpus once into memory-mapped token shards (see seqmix.data.shards)."""
from __future__ import annotations

import argparse

from seqmix.data.shards import prepare


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True,
                   help="a file, directory or glob: UTF-8 text files, .jsonl (one JSON object per line) and "
                        ".parquet files (needs pyarrow)")
    p.add_argument("--out", required=True, help="the shard directory to write (or to finish, if interrupted)")
    p.add_argument("--tokenizer", default="bytes",
                   help="bytes (default), bpe:N (a byte-level BPE of N ids trained on the training split), or the "
                        "path of a byte-level tokenizer.json or transformers tokenizer directory")
    p.add_argument("--text-field", default="text", help="the text field of JSONL records / column of Parquet files")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers={args.workers}: must be a positive number of processes")
    m = prepare(args.corpus, args.tokenizer, args.out, text_field=args.text_field, workers=args.workers,
                quiet=args.quiet)
    if m["already"]:
        print(f"{args.out} already holds {args.corpus} prepared with tokenizer {m['tokenizer']['name']}; nothing to do")
    else:
        trained = f", of which {m['tokenizer_seconds']:.1f} s training the BPE" if m["tokenizer_seconds"] > 0.5 else ""
        print(f"prepared {m['source']['bytes'] / 1e6:,.1f} MB in {m['prepare_seconds']:.1f} s "
              f"({m['mb_per_s']:.1f} MB/s, {m['workers']} processes, {m['units']} units{trained}; tokenizing "
              f"{m['tokenize_seconds']:.1f} s)")
    for split, s in m["splits"].items():
        print(f"{split:>10}: {s['tokens']:>13,} tokens {s['documents']:>9,} documents {s['bytes']:>13,} bytes "
              f"({s['bytes'] / max(s['tokens'], 1):.2f} bytes/token)")
    print(f"tokenizer {m['tokenizer']['name']} ({m['tokenizer']['vocab_size']} ids, {m['dtype']}), source sha256 "
          f"{m['source']['sha256'][:16]}…; train with --corpus {args.out}")
    return 0
