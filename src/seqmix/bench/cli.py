"""`seqmix bench`: forward time per token vs L and decode latency vs context, next to the machine's roofline."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from seqmix.bench.harness import machine_info, measure_roofline
from seqmix.bench.suites import decode_suite, forward_suite


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def configure(p) -> None:
    p.add_argument("--suite", choices=["forward", "decode", "all"], default="all")
    p.add_argument("--mixers", default="attention,linear_attention,gla",
                   help="comma-separated mixer names (see available_mixers())")
    p.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096, 8192, 16384], help="forward: sequence lengths")
    p.add_argument("--contexts", type=_ints, default=[1024, 16384], help="decode: context lengths")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--mixer-options", default="{}", help='JSON keyed by mixer, e.g. {"gla": {"chunk_size": 64}}')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed block")
    p.add_argument("--out", type=Path, default=None, help="write all rows and the machine to this JSON file")


def _fmt_forward(rows: list[dict]) -> str:
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    lengths = sorted({r["L"] for r in rows})
    get = {(r["mixer"], r["L"]): r for r in rows}
    lines = ["| mixer | " + " | ".join(f"L={L}" for L in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for m in mixers:
        cells = [f"{get[m, L]['us_per_token']:.1f} µs ({100 * get[m, L]['roof_fraction']:.0f}%)" for L in lengths]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_decode(rows: list[dict]) -> str:
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    ctxs = sorted({r["context"] for r in rows})
    get = {(r["mixer"], r["context"]): r for r in rows}
    lines = ["| mixer | " + " | ".join(f"context {c}" for c in ctxs) + " | state at largest context |",
             "|---" * (len(ctxs) + 2) + "|"]
    for m in mixers:
        cells = [f"{get[m, c]['us_per_token']:.0f} µs" for c in ctxs]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {get[m, ctxs[-1]]['state_bytes'] / 2**20:.2f} MiB |")
    return "\n".join(lines)


def run(args) -> int:
    torch.set_num_threads(args.threads)
    mixers = [m for m in args.mixers.split(",") if m]
    options = json.loads(args.mixer_options)
    roof = measure_roofline()
    info = machine_info()
    print(f"machine: {info['cpu']}, {args.threads} thread(s), torch {info['torch']}")
    print(f"roofline: fp32 matmul {roof.matmul_gflops:.0f} GFLOP/s, copy bandwidth {roof.bandwidth_gbs:.0f} GB/s")
    note = lambda r: print(f"  {r['suite']:7s} {r['mixer']:18s} {r.get('L', r.get('context')):>6}: "
                           f"{r['us_per_token']:.1f} µs/token", flush=True)
    result = {"machine": info, "roofline": vars(roof), "d_model": args.d_model, "n_heads": args.n_heads, "rows": []}
    if args.suite in ("forward", "all"):
        rows = forward_suite(mixers, args.lengths, args.d_model, args.n_heads, roof, options, args.rounds,
                             args.min_time, note)
        result["rows"] += rows
        print(f"\nforward time per token, one layer d_model={args.d_model}, {args.n_heads} heads "
              "(fraction of measured matmul peak):\n" + _fmt_forward(rows))
    if args.suite in ("decode", "all"):
        rows = decode_suite(mixers, args.contexts, args.d_model, args.n_heads, roof, options, args.rounds,
                            args.min_time, note)
        result["rows"] += rows
        print("\ndecode latency per token after a context:\n" + _fmt_decode(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")
    return 0
