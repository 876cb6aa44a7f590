"""`seqmix train`: train a byte-level language model (defaults: a small attention model on Shakespeare).

On several processes: ``seqmix train --nproc N ...`` on this machine, or ``torchrun --nproc-per-node N
[--nnodes M ...] -m seqmix train ...`` (see README); every process runs ``run`` below and rank 0 reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from seqmix.commands.options import byte_budget, tokenizer_vocab_size
from seqmix.data.shards import MANIFEST, is_prepared
from seqmix.train import NonFiniteError, OutOfMemory, TrainConfig, train
from seqmix.train.config import DEFAULT_EVAL_BYTES, DEFAULT_FINAL_EVAL_BYTES

# without --steps or --tokens the run is also capped in time: the default run must finish well inside
# 10 minutes on 2 CPU cores, however fast the machine is
DEFAULT_TIME_BUDGET = 420.0


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"window\": 128}'")
    return value


def _pattern(text: str):
    """A preset name, a comma-separated list of mixer names, or a JSON list."""
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [p.strip() for p in text.split(",")] if "," in text else text


def configure(p: argparse.ArgumentParser) -> None:
    d = TrainConfig().model
    m = p.add_argument_group(f"model (default: {d.mixer}, d_model={d.d_model}, n_layers={d.n_layers}, "
                             f"n_heads={d.n_heads})")
    m.add_argument("--mixer", help="mixer of every layer (see available_mixers())")
    m.add_argument("--pattern", type=_pattern, help="hybrid: a preset name, 'gla,attention,...' or a JSON list")
    m.add_argument("--d-model", type=int)
    m.add_argument("--n-layers", type=int)
    m.add_argument("--n-heads", type=int)
    m.add_argument("--mixer-options", type=_json_dict, help='JSON, e.g. \'{"window": 128}\'')
    m.add_argument("--ffn", help="channel mixer (default swiglu)")
    m.add_argument("--ffn-options", type=_json_dict, help="JSON")
    t = p.add_argument_group("training (defaults from TrainConfig)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help=f"optimiser steps (default {TrainConfig().total_steps})")
    budget.add_argument("--tokens", type=int, help="token budget instead of --steps")
    t.add_argument("--time-budget", type=float,
                   help="seconds; the schedule follows whichever budget runs out first; 0 = none (default: "
                        f"{DEFAULT_TIME_BUDGET:g} when neither --steps nor --tokens is given, else none)")
    for flag, kind in (("--batch-size", int), ("--seq-len", int), ("--lr", float), ("--warmup-steps", int),
                       ("--weight-decay", float), ("--grad-clip", float), ("--eval-interval", int),
                       ("--log-interval", int), ("--checkpoint-interval", int), ("--seed", int)):
        t.add_argument(flag, type=kind)
    t.add_argument("--eval-bytes", type=byte_budget, default=argparse.SUPPRESS,
                   help="validation bytes of every evaluation, periodic and final, or 'all' (default: "
                        f"{DEFAULT_EVAL_BYTES} periodic, {DEFAULT_FINAL_EVAL_BYTES} final)")
    t.add_argument("--corpus", help="a text file, a directory of text files or a glob (default: Shakespeare)")
    t.add_argument("--tokenizer",
                   help="bytes (default), bpe:N (a byte-level BPE of N ids trained on the training split), or the "
                        "path of a byte-level tokenizer.json or transformers tokenizer directory; the model's "
                        "vocab_size follows it")
    t.add_argument("--out", help="run directory (default runs/<mixer>-<time>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint, with its saved settings")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--dtype", choices=("float32", "bfloat16"))
    t.add_argument("--on-nonfinite", choices=("stop", "skip"))
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    s = p.add_argument_group("scale (several processes, memory)")
    s.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (one per GPU, or CPU processes with gloo); under torchrun, "
                        "use its --nproc-per-node instead")
    s.add_argument("--parallel", choices=("ddp", "fsdp"), help="with several processes: DDP (default) or FSDP2")
    s.add_argument("--grad-accum", type=int,
                   help="micro-batches per step: the same global --batch-size in smaller pieces (default 1)")
    s.add_argument("--checkpoint-format", choices=("full", "sharded"),
                   help="full: gathered into one file (default); sharded: one file per process")
    s.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                   help="rows packed from whole documents and pieces, each starting from the zero state")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train through torch.compile (C++ kernels on CPU, Triton on a GPU; building takes a minute; "
                        "without a compiler it says so and trains uncompiled)")
    s.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also write loss, learning rate, throughput and evaluations to <out>/tensorboard "
                        "(needs the seqmix[tensorboard] extra)")
    s.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block in the backward pass: less memory, about 1/3 more time")


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig from the flags given; with --resume, the run's own config.json with the flags applied."""
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out (the run directory to continue)")
    saved = Path(args.out) / "config.json" if args.out is not None else None
    if args.resume and saved.exists():
        fields = TrainConfig.from_dict(json.loads(saved.read_text(encoding="utf-8"))).to_dict()
    else:
        fields = TrainConfig().to_dict()
    model = fields["model"]
    for name in ("mixer", "pattern", "d_model", "n_layers", "n_heads", "mixer_options", "ffn", "ffn_options"):
        if getattr(args, name) is not None:
            model[name] = getattr(args, name)
    tokenizer = args.tokenizer
    if tokenizer is None and not args.resume and is_prepared(args.corpus):  # the shards' own tokenizer
        tokenizer = json.loads((Path(args.corpus) / MANIFEST).read_text(encoding="utf-8"))["tokenizer"]["name"]
    if tokenizer is not None:
        fields["tokenizer"] = tokenizer
        model["vocab_size"] = tokenizer_vocab_size(tokenizer, args.corpus)
    if isinstance(args.pattern, list) and args.n_layers is None:
        model["n_layers"] = len(args.pattern)
    for name in ("steps", "tokens", "batch_size", "seq_len", "lr", "warmup_steps", "weight_decay", "grad_clip",
                 "eval_interval", "log_interval", "checkpoint_interval", "seed", "corpus", "device", "dtype",
                 "on_nonfinite", "grad_accum", "parallel", "checkpoint_format", "pack", "activation_checkpointing",
                 "compile", "tensorboard"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if "eval_bytes" in vars(args):  # given ('all' is None)
        fields["eval_bytes"] = fields["final_eval_bytes"] = args.eval_bytes
    if args.steps is not None or args.tokens is not None:  # the flag given replaces a saved budget
        fields["tokens" if args.steps is not None else "steps"] = None
    if args.time_budget is not None:
        fields["time_budget"] = args.time_budget or None
    elif not args.resume and args.steps is None and args.tokens is None:
        fields["time_budget"] = DEFAULT_TIME_BUDGET
    name = model["pattern"] if isinstance(model["pattern"], str) else "hybrid" if model["pattern"] else model["mixer"]
    fields["out_dir"] = args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig.from_dict(fields)


def _rank_tag() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" [rank {os.environ.get('RANK', '0')}/{world}]" if world > 1 else ""


def _worker(config: TrainConfig, resume: bool, quiet: bool) -> dict:
    """One process's run -> its summary (without the model). A known failure prints one line and exits:
    status 1 (non-finite values, out of memory) or 2 (bad settings or files); under a launcher, that stops
    the other processes too."""
    try:
        result = train(config, resume=resume, quiet=quiet)
    except (NonFiniteError, OutOfMemory) as err:
        print(f"seqmix train{_rank_tag()}: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except (ValueError, FileNotFoundError) as err:
        print(f"seqmix train{_rank_tag()}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    result.pop("model")
    return result


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    launched = int(os.environ.get("WORLD_SIZE", "1"))  # > 1 under torchrun
    if args.nproc < 1 or (args.nproc > 1 and launched > 1):
        raise ValueError(f"--nproc={args.nproc}: give a positive number of processes, and none under torchrun "
                         "(use its --nproc-per-node)")
    main = int(os.environ.get("RANK", "0")) == 0
    world = max(args.nproc, launched)
    m = config.model
    if main:
        print(f"seqmix train: {m.pattern or m.mixer}, d_model={m.d_model}, n_layers={m.n_layers}, n_heads={m.n_heads}; "
              f"{config.total_steps} steps of {config.batch_size}x{config.seq_len} tokens ({config.tokenizer})"
              + (f", at most {config.time_budget:g} s" if config.time_budget else "")
              + (f"; {world} processes ({config.parallel})" if world > 1 else "")
              + f"; run directory {config.out_dir}", flush=True)
    if args.nproc > 1:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        from seqmix.train.distributed import launch

        # like torchrun, split this machine's cores between the processes unless told otherwise
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
        try:
            result = launch(args.nproc, _worker, config, args.resume, args.quiet)[0]
        except ChildFailedError as err:
            codes = sorted({f.exitcode for f in err.failures.values()})
            print(f"seqmix train: stopped, a process failed (exit status {codes}; its message is above)",
                  file=sys.stderr)
            return 1 if 2 not in codes else 2
    else:
        try:
            result = _worker(config, args.resume, args.quiet)
        except SystemExit as stop:
            return stop.code
    if not main:
        return 0
    val = result["val"]
    print(f"trained {result['parameters']:,} parameters for {result['steps']} steps ({result['tokens']:,} tokens) "
          f"in {result['elapsed_s']:.1f} s (first step after {result['setup_s']:.1f} s of setup), stopped by the "
          f"{result['stopped_by'].replace('_', ' ')}; "
          f"last training loss {result['train_loss'] / 0.6931471805599453:.3f} bits per "
          + ("byte" if config.tokenizer == "bytes" else "token"))
    print(f"validation: {result['val_bpb']:.4f} bits per byte ({val['bytes']:,} bytes, windows of {val['seq_len']} "
          "tokens)")
    print(f"checkpoint: {result['checkpoint']}")
    return 0
