"""`seqmix bench`: forward time per token vs L and decode latency vs context, next to the machine's roofline;
``--suite ttt``: TTT's dual vs primal forms, TTT-Linear / TTT-MLP against softmax attention, and with
``--ttt-official PATH`` against the official ttt-lm-pytorch model; ``--suite decode --llama-cpp PATH``: whole
models decoding in seqmix beside llama.cpp on the same weights (see seqmix.bench.llama_cpp)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from seqmix.bench.harness import machine_info, measure_read_bandwidth, measure_roofline
from seqmix.bench.official_ttt import load_official, official_ttt_suite
from seqmix.bench.suites import decode_suite, forward_suite, model_generate_suite, ttt_forms_suite

DEFAULT_MIXERS = "attention,linear_attention,gla"
TTT_MIXERS = "ttt_linear,ttt_mlp,attention"  # the default of --suite ttt
GENERATE_MIXERS = "mamba,mamba2,gla,rwkv7,ttt_linear"  # the default of --suite generate
HF_MIXERS = "gated_deltanet,kda,lightning,short_conv,attention,mla"  # the default of --suite hf-layers
TRAIN_MIXERS = "attention,gla"  # the default of --suite train
LLAMA_MIXERS = "mamba"  # the default of --suite decode --llama-cpp
GENERATE_SIZES = "256x4,512x8"  # the default --sizes of --suite generate and train
LLAMA_SIZES = "256x4x256,768x24x50280"  # of --llama-cpp: a small model, and mamba-130m's size and vocabulary


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def configure(p) -> None:
    p.add_argument("--suite", choices=["forward", "decode", "ttt", "generate", "hf-layers", "train", "all"],
                   default="all",
                   help="all = forward + decode + the TTT forms table; ttt = the TTT forms table, then forward "
                        "and decode of TTT-Linear, TTT-MLP and attention; generate = whole models decoding "
                        f"through sample() against their memory floor (default mixers {GENERATE_MIXERS}); hf-layers = the "
                        f"production mixers ({HF_MIXERS}) against the same layers of transformers' Qwen3-Next, "
                        "Kimi Linear, MiniMax and LFM2 (their CPU torch paths), same weights, outputs checked equal first, at "
                        "--lengths; train = training tokens/s of whole models with and without torch.compile (default "
                        f"mixers {TRAIN_MIXERS}, --sizes, --batches, --seq-len)")
    p.add_argument("--mixers", default=None,
                   help=f"comma-separated mixer names (see available_mixers()); default {DEFAULT_MIXERS} "
                        f"({TTT_MIXERS} for --suite ttt)")
    p.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096, 8192, 16384], help="forward: sequence lengths")
    p.add_argument("--contexts", type=_ints, default=[1024, 16384], help="decode: context lengths")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--mixer-options", default="{}", help='JSON keyed by mixer, e.g. {"gla": {"chunk_size": 64}}')
    p.add_argument("--ttt-mixer", default="ttt_linear", help="ttt forms table: which TTT mixer's inner loop")
    p.add_argument("--ttt-length", type=int, default=2048, help="ttt forms table: sequence length")
    p.add_argument("--ttt-official", type=Path, default=None, metavar="PATH",
                   help="ttt suite: also time the official ttt-lm-pytorch model (a checkout at PATH, imported from "
                        "there; needs transformers 4.44) against seqmix with the same weights")
    p.add_argument("--sizes", default=None,
                   help=f"generate, train: model sizes d_modelxlayers, comma-separated (default {GENERATE_SIZES}); "
                        f"--llama-cpp: d_modelxlayersxvocab (default {LLAMA_SIZES}; vocab 50280 when left out)")
    p.add_argument("--batches", type=_ints, default=[1], help="generate: batch sizes (prompts decoded together)")
    p.add_argument("--new-tokens", type=int, default=64, help="generate: tokens decoded per timed round")
    p.add_argument("--compile", action="store_true",
                   help="generate, --llama-cpp: also time the compiled decode step")
    p.add_argument("--device", default="cpu", help="generate: where the models decode, e.g. cuda (with --compile a "
                                                   "state of fixed size decodes from one captured CUDA graph)")
    p.add_argument("--weight-dtypes", default="", help="generate: also time the linear layers' weights in these "
                   "precisions, comma-separated: bfloat16, int8 (weight-only; states stay float32)")
    p.add_argument("--llama-cpp", type=Path, default=None, metavar="PATH",
                   help="decode suite: instead of one layer per mixer, time whole transformers Mamba models (--mixers "
                        "mamba,mamba2) decoding in llama.cpp (GGUF f32 and f16) beside seqmix (eager; --compile: compiled) and "
                        "transformers, same weights, greedy tokens compared; PATH: llama.cpp's convert_hf_to_gguf.py "
                        "or a llama.cpp checkout holding it; needs `pip install llama-cpp-python`")
    p.add_argument("--llama-threads", type=_ints, default=[1, 2],
                   help="--llama-cpp: thread counts, each engine timed at each (default 1,2)")
    p.add_argument("--no-transformers", action="store_true",
                   help="--llama-cpp: leave transformers' own generate out of the comparison")
    p.add_argument("--seq-len", type=int, default=256, help="train: tokens per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed block")
    p.add_argument("--out", type=Path, default=None, help="write all rows and the machine to this JSON file")


def faster_from(rows: list[dict], mixer: str, baseline: str = "attention") -> int | None:
    """The smallest measured L from which `mixer` is faster per token than `baseline` at every longer L too."""
    get = {(r["mixer"], r["L"]): r["us_per_token"] for r in rows}
    lengths = sorted({r["L"] for r in rows})
    start = None
    for L in lengths:
        if get[mixer, L] < get[baseline, L]:
            start = L if start is None else start
        else:
            start = None
    return start


def _fmt_forward(rows: list[dict]) -> str:
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    lengths = sorted({r["L"] for r in rows})
    get = {(r["mixer"], r["L"]): r for r in rows}
    vs = "attention" in mixers
    lines = ["| mixer | " + " | ".join(f"L={L}" for L in lengths) + " |" + (" faster than attention from |" if vs else ""),
             "|---" * (len(lengths) + 1 + vs) + "|"]
    for m in mixers:
        cells = [f"{get[m, L]['us_per_token']:.1f} µs ({100 * get[m, L]['roof_fraction']:.0f}%)" for L in lengths]
        if vs:
            cross = None if m == "attention" else faster_from(rows, m)
            cells.append("" if m == "attention" else ("not in range" if cross is None else f"L={cross}"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_load(rows: list[dict]) -> str:
    shares = [100 * r["other_cpu"] for r in rows]
    return f"(other processes used {min(shares):.0f}–{max(shares):.0f}% of the machine's CPU while timing)"


def _fmt_ttt_forms(rows: list[dict]) -> str:
    lines = ["| form | time per token | time / dual |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['form']} | {r['us_per_token']:.1f} µs | {r['vs_dual']:.1f}× |")
    return "\n".join(lines)


def _fmt_official(rows: list[dict]) -> str:
    lines = ["| model | what | official | seqmix | speed-up |", "|---|---|---|---|---|"]
    for r in rows:
        what = "whole model (2 blocks)" if r["what"] == "model" else "one layer (norms, conv, TTT)"
        lines.append(f"| {r['mixer']} | {what} | {r['official_ms']:.1f} ms | {r['seqmix_ms']:.1f} ms | "
                     f"{r['speedup']:.2f}× |")
        if r["what"] == "model":
            lines.append(f"| {r['mixer']} | whole model, our inner loop skipped (the bound) | | "
                         f"{r['seqmix_without_inner_loop_ms']:.1f} ms | at most {r['speedup_bound']:.2f}× |")
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


def _sizes(text: str | None) -> list[tuple[int, int]]:
    text = GENERATE_SIZES if text is None else text
    sizes = [s.split("x") for s in text.split(",") if s]
    if not sizes or any(len(s) != 2 or not all(v.isdigit() and int(v) > 0 for v in s) for s in sizes):
        raise ValueError(f"--sizes={text!r}: give d_modelxlayers pairs of positive integers, e.g. 256x4,512x8")
    return [(int(d), int(n)) for d, n in sizes]


def _sizes_vocab(text: str | None, vocab: int = 50280) -> list[tuple[int, int, int]]:
    """d_modelxlayers[xvocab], comma-separated -> (d_model, n_layers, vocab); `vocab` where left out."""
    text = LLAMA_SIZES if text is None else text
    sizes = [s.split("x") for s in text.split(",") if s]
    if not sizes or any(len(s) not in (2, 3) or not all(v.isdigit() and int(v) > 0 for v in s) for s in sizes):
        raise ValueError(f"--sizes={text!r}: give d_modelxlayers or d_modelxlayersxvocab of positive integers, "
                         "e.g. 256x4x256,768x24x50280")
    return [(int(s[0]), int(s[1]), int(s[2]) if len(s) == 3 else vocab) for s in sizes]


def _write_json(path: Path | None, result: dict) -> None:
    """Save the rows and the machine as JSON at --out, when given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {path}")


def _weight_dtypes(text: str) -> list[str]:
    from seqmix.layers.low_precision import LOW_PRECISION

    dtypes = [d for d in text.split(",") if d]
    bad = [d for d in dtypes if d not in LOW_PRECISION]
    if bad:
        raise ValueError(f"--weight-dtypes {bad}: choose from {list(LOW_PRECISION)}")
    return dtypes


def _fmt_generate(rows: list[dict]) -> str:
    get = {(r["mixer"], r["d_model"], r["n_layers"], r["batch"], r["variant"]): r for r in rows}
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| mixer | model | batch | weights | floor | products alone | "
             + " | ".join(f"{v} µs/step (× floor)" for v in variants) + " |", "|---" * (6 + len(variants)) + "|"]
    for key in dict.fromkeys(k[:4] for k in get):
        first = get[(*key, variants[0])]
        cells = []
        for v in variants:
            r = get[(*key, v)]
            cells.append(f"{r['us_per_token']:,.0f} [{min(r['round_us']):,.0f}–{max(r['round_us']):,.0f}] "
                         f"({r['us_per_token'] / r['floor_us']:.1f}×)")
        lines.append(f"| {key[0]} | d {key[1]} × {key[2]} | {key[3]} | {first['param_bytes'] / 1e6:.1f} MB | "
                     f"{first['floor_us']:,.0f} µs | {first['products_us']:,.0f} µs | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> int:
    torch.set_num_threads(args.threads)
    if args.llama_cpp is not None and args.suite != "decode":
        raise ValueError(f"--llama-cpp times whole models decoding: use it with --suite decode, not {args.suite}")
    default = {"ttt": TTT_MIXERS, "generate": GENERATE_MIXERS, "hf-layers": HF_MIXERS,
               "train": TRAIN_MIXERS}.get(args.suite, DEFAULT_MIXERS)
    if args.llama_cpp is not None:
        default = LLAMA_MIXERS
    mixers = [m for m in (args.mixers or default).split(",") if m]
    if args.llama_cpp is not None:
        return _run_llama_cpp(args, mixers)
    if args.suite == "generate":
        return _run_generate(args, mixers)
    if args.suite == "hf-layers":
        return _run_hf_layers(args, mixers)
    if args.suite == "train":
        return _run_train(args, mixers)
    options = json.loads(args.mixer_options)
    official = load_official(args.ttt_official) if args.ttt_official and args.suite in ("ttt", "all") else None
    roof = measure_roofline()
    info = machine_info()
    print(f"machine: {info['cpu']}, {args.threads} thread(s), torch {info['torch']}")
    print(f"roofline: fp32 matmul {roof.matmul_gflops:.0f} GFLOP/s, copy bandwidth {roof.bandwidth_gbs:.0f} GB/s")
    note = lambda r: print(f"  {r['suite']:9s} {r['mixer'] + (' ' + r['form'] if 'form' in r else ''):18s} "
                           f"{r.get('L', r.get('context')):>6}: {r['us_per_token']:.1f} µs/token", flush=True)
    result = {"machine": info, "roofline": vars(roof), "d_model": args.d_model, "n_heads": args.n_heads, "rows": []}
    if args.suite in ("ttt", "all"):
        rows = ttt_forms_suite(args.ttt_mixer, args.ttt_length, args.d_model, args.n_heads,
                               options.get(args.ttt_mixer, {}), args.rounds, args.min_time, note)
        result["rows"] += rows
        print(f"\n{args.ttt_mixer} inner loop at L={args.ttt_length}, d_model={args.d_model}, {args.n_heads} heads, "
              f"batch 1 {_fmt_load(rows)}:\n" + _fmt_ttt_forms(rows))
    if official is not None:
        note_official = lambda r: print(f"  official  {r['mixer']:10s} {r['what']:5s} {r['L']:>6}: official "
                                   f"{r['official_ms']:.1f} ms, seqmix {r['seqmix_ms']:.1f} ms", flush=True)
        rows = official_ttt_suite(official, args.ttt_length, args.d_model, args.n_heads, args.rounds,
                                  args.min_time, note_official)
        result["rows"] += rows
        print(f"\nagainst the official ttt-lm-pytorch model at L={args.ttt_length}, d_model={args.d_model}, "
              f"{args.n_heads} heads, Mamba backbone, same weights, batch 1, median of {args.rounds} "
              f"interleaved rounds {_fmt_load(rows)}:\n" + _fmt_official(rows))
    if args.suite in ("forward", "ttt", "all"):
        rows = forward_suite(mixers, args.lengths, args.d_model, args.n_heads, roof, options, args.rounds,
                             args.min_time, note)
        result["rows"] += rows
        print(f"\nforward time per token, one layer d_model={args.d_model}, {args.n_heads} heads "
              f"(fraction of measured matmul peak) {_fmt_load(rows)}:\n" + _fmt_forward(rows))
    if args.suite in ("decode", "ttt", "all"):
        rows = decode_suite(mixers, args.contexts, args.d_model, args.n_heads, roof, options, args.rounds,
                            args.min_time, note)
        result["rows"] += rows
        print(f"\ndecode latency per token after a context {_fmt_load(rows)}:\n" + _fmt_decode(rows))
    _write_json(args.out, result)
    return 0


def _run_generate(args, mixers: list[str]) -> int:
    sizes = _sizes(args.sizes)
    read_gbs = measure_read_bandwidth(device=args.device)
    info = machine_info()
    print(f"machine: {info['cpu']}, {args.threads} thread(s), torch {info['torch']}; read bandwidth "
          f"{read_gbs:.1f} GB/s (the fastest read of 256 MiB)")
    note = lambda r: print(f"  {r['mixer']:10s} d {r['d_model']} × {r['n_layers']} batch {r['batch']} "  # noqa: E731
                           f"{r['variant']:8s}: {r['us_per_token']:,.0f} µs/step, floor {r['floor_us']:,.0f} µs",
                           flush=True)
    rows = model_generate_suite(mixers, sizes, args.batches, args.new_tokens, read_gbs, args.rounds,
                                args.compile, note, _weight_dtypes(args.weight_dtypes), args.device)
    print(f"\ndecoding through sample(), greedy, float32, median [range] of {args.rounds} interleaved rounds of "
          f"{args.new_tokens} tokens; floor = (weights + state) / read bandwidth; products alone = the model's matrix "
          "products as the (compiled) step runs them, nothing else:\n" + _fmt_generate(rows))
    _write_json(args.out, {"machine": info, "read_gbs": read_gbs, "rows": rows})
    return 0


def _fmt_llama_cpp(rows: list[dict]) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    get = {(r["mixer"], r["d_model"], r["n_layers"], r["vocab"], r["threads"], r["variant"]): r for r in rows}
    compared = [v for v in variants if v != "llama.cpp f32"]
    best = "seqmix compiled" if "seqmix compiled" in variants else "seqmix eager"
    lines = ["| mixer | model | threads | floor | " + " | ".join(f"{v} µs/token" for v in variants)
             + f" | {best} / llama.cpp f32 | leading tokens equal to llama.cpp f32's ("
             + ", ".join(compared) + ") | other processes' CPU |", "|---" * (7 + len(variants)) + "|"]
    for key in dict.fromkeys(k[:5] for k in get):
        first = get[(*key, variants[0])]
        cells = [f"{get[(*key, v)]['us_per_token']:,.0f} [{min(get[(*key, v)]['round_us']):,.0f}–"
                 f"{max(get[(*key, v)]['round_us']):,.0f}]" for v in variants]
        ratio = get[(*key, best)]["us_per_token"] / get[(*key, "llama.cpp f32")]["us_per_token"]
        agree = " / ".join(str(get[(*key, v)]["agree"]) for v in compared)
        lines.append(f"| {key[0]} | d {key[1]} × {key[2]}, vocab {key[3]:,} ({first['param_bytes'] / 1e6:.1f} MB) | "
                     f"{key[4]} | {first['floor_us']:,.0f} µs | " + " | ".join(cells)
                     + f" | {ratio:.2f}× | {agree} of {first['new_tokens']} | {100 * first['other_cpu']:.0f}% |")
    return "\n".join(lines)


def _run_llama_cpp(args, mixers: list[str]) -> int:
    from seqmix.bench.llama_cpp import (MIXERS, PROMPT_TOKENS, find_converter, import_llama_cpp,
                                        llama_cpp_decode_suite, llama_cpp_version)

    bad = [m for m in mixers if m not in MIXERS]
    if bad:
        raise ValueError(f"--mixers {bad}: the llama.cpp comparison converts transformers {list(MIXERS)} models")
    if not args.llama_threads or min(args.llama_threads) < 1:
        raise ValueError(f"--llama-threads {args.llama_threads}: give positive thread counts, e.g. 1,2")
    converter = find_converter(args.llama_cpp)  # before anything is built: a wrong path fails at once
    import_llama_cpp()
    sizes = _sizes_vocab(args.sizes)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; converter {converter}")

    def note(r):
        print(f"  {r['mixer']:6s} d {r['d_model']} × {r['n_layers']} vocab {r['vocab']} {r['threads']} thread(s) "
              f"{r['variant']:15s}: {r['us_per_token']:,.0f} µs/token, {r['agree']} leading tokens as llama.cpp f32"
              + (f", compiled in {r['compile_seconds']:.0f} s" if r["compile_seconds"] else ""), flush=True)

    rows = llama_cpp_decode_suite(converter, mixers, sizes, args.llama_threads, args.new_tokens, args.rounds,
                                  args.compile, not args.no_transformers, note)
    early = [r for r in rows if r["agree"] < min(4, r["new_tokens"])]
    for r in early:
        print(f"WARNING: {r['variant']} differs from llama.cpp f32 within the first tokens ({r['agree']} equal) for "
              f"{r['mixer']} d {r['d_model']} × {r['n_layers']}, {r['threads']} thread(s)", flush=True)
    print(f"\ndecoding after a {PROMPT_TOKENS}-token prompt, greedy, batch 1, median [range] of {args.rounds} "
          f"interleaved rounds of {args.new_tokens} tokens, µs per token (prompt excluded); floor = (float32 "
          f"weights + state) / the one-read bandwidth with that many threads; llama-cpp-python "
          f"{llama_cpp_version()} {_fmt_load(rows)}:\n" + _fmt_llama_cpp(rows))
    command = "seqmix bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    _write_json(args.out, {"machine": info, "llama_cpp_python": llama_cpp_version(), "converter": str(converter),
                           "command": command, "rows": rows})
    return 0


def _run_hf_layers(args, mixers: list[str]) -> int:
    from seqmix.bench.hf_fallback import LAYERS, hf_layer_suite

    info = machine_info()
    print(f"machine: {info['cpu']}, {args.threads} thread(s), torch {info['torch']}")
    note = lambda r: print(f"  {r['mixer']:14s} L={r['L']}: transformers {r['transformers_ms']:.1f} ms, seqmix "  # noqa: E731
                           f"{r['seqmix_ms']:.1f} ms, projections {r['projections_ms']:.1f} ms (outputs agree to "
                           f"{r['relative_error']:.1e})", flush=True)
    rows = hf_layer_suite(mixers, args.lengths, args.d_model, args.n_heads, args.rounds, args.min_time, note)
    lines = ["| seqmix mixer | transformers layer | L | transformers | seqmix | speed-up | projections | ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    timed = lambda r, key: f"{r[key + '_ms']:.1f} ms [{min(r[key + '_round_ms']):.1f}–{max(r[key + '_round_ms']):.1f}]"  # noqa: E731
    for r in rows:
        lines.append(f"| `{r['mixer']}` | {LAYERS[r['mixer']][2]} | {r['L']} | {timed(r, 'transformers')} | "
                     f"{timed(r, 'seqmix')} | {r['speedup']:.2f}× | {timed(r, 'projections')} | {r['ceiling']:.2f}× |")
    print(f"\none layer, batch 1, d_model {args.d_model}, {args.n_heads} heads of {args.d_model // args.n_heads}, "
          f"float32, no autograd, median [range] of {args.rounds} interleaved rounds; projections = the layer's "
          "linear layers alone (shared work), ceiling = transformers / projections:\n" + "\n".join(lines))
    _write_json(args.out, {"machine": info, "rows": rows})
    return 0


def _run_train(args, mixers: list[str]) -> int:
    from seqmix.bench.train_speed import train_compile_suite

    info = machine_info()
    print(f"machine: {info['cpu']}, {args.threads} thread(s), torch {info['torch']}")
    rows = []
    for d_model, n_layers in _sizes(args.sizes):
        for batch in args.batches:
            rows += train_compile_suite(mixers, d_model, n_layers, args.n_heads, batch, args.seq_len, args.rounds,
                                        args.min_time, lambda r: print(
                                            f"  {r['mixer']:10s} d {r['d_model']} × {r['n_layers']} batch {r['batch']}: "
                                            f"eager {r['eager_tokens_per_s']:,.0f}, compiled "
                                            f"{r['compiled_tokens_per_s']:,.0f} tokens/s", flush=True))
    lines = ["| mixer | model | batch × seq_len | eager tokens/s | compiled tokens/s | speed-up | first compiled step "
             "| first-step loss difference |", "|---" * 8 + "|"]
    for r in rows:
        span = lambda k: f"{r[k + '_tokens_per_s']:,.0f} [{min(r[k + '_round_tokens_per_s']):,.0f}–"  # noqa: E731
        lines.append(f"| {r['mixer']} | d {r['d_model']} × {r['n_layers']} | {r['batch']} × {r['seq_len']} | "
                     f"{span('eager')}{max(r['eager_round_tokens_per_s']):,.0f}] | "
                     f"{span('compiled')}{max(r['compiled_round_tokens_per_s']):,.0f}] | {r['speedup']:.2f}× | "
                     f"{r['compile_s']:.0f} s | {r['first_loss_relative_difference']:.1e} |")
    print(f"\ntraining steps (forward, backward, AdamW), float32, median [range] of {args.rounds} interleaved rounds "
          f"{_fmt_load(rows)}:\n" + "\n".join(lines))
    _write_json(args.out, {"machine": info, "rows": rows})
    return 0
