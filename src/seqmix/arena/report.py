"""Render the arena's cached cells into report.md, one PNG per figure, and results.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SECTIONS = ("Setup", "Language modelling", "Loss by position", "Length generalisation", "Associative recall",
            "Speed and memory", "TTT ablations")


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 100 else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list, list]],
          logx: bool = False, logy: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if len(series) > 10:  # the default cycle repeats after 10 colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors[:len(series)])
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=name, linewidth=1.4)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def render(out: Path, results: dict) -> Path:
    """Write report.md and the PNGs into `out` from the collected `results` (see cli.collect)."""
    out.mkdir(parents=True, exist_ok=True)
    meta, lm, recall, speed, ttt = (results[k] for k in ("meta", "lm", "recall", "speed", "ttt"))
    md = [f"# seqmix arena — preset `{meta['preset']}`", "",
          f"Run {meta['finished']} on {meta['machine']['cpu']} ({meta['machine']['threads']} threads), "
          f"torch {meta['machine']['torch']}, seqmix {meta['seqmix']} (commit `{meta['commit']}`). "
          f"Every number below is in `results.json` beside this file; `seqmix arena --report-only --out "
          f"{meta['out']}` re-renders it from the cache.", ""]

    compute = sum(c.get("cell_seconds", 0.0) for k in ("lm", "recall", "speed", "ttt") for c in results[k])
    md += [f"The {sum(len(results[k]) for k in ('lm', 'recall', 'speed', 'ttt'))} cells took "
           f"{compute / 60:.1f} minutes of compute in all (the time a run from an empty cache takes).", ""]
    md += ["## Setup", "", f"Byte-level models on the vendored Shakespeare corpus (train/validation/test split by "
           f"work). Same recipe and token budget for every entrant: {meta['lm']['n_layers']} layers, "
           f"{meta['lm']['train_tokens']:,} training tokens at context {meta['lm']['seq_len']}, widths chosen to "
           f"match {meta['lm']['target_params']:,} parameters.", ""]
    md.append(_table(["architecture", "d_model", "parameters", "train time (s)", "train tokens/s"],
                     [[r["arch"], r["d_model"], f"{r['params']:,}", r["train_seconds"], round(r["train_tokens_per_s"])]
                      for r in lm]))

    md += ["", "## Language modelling", "", "Bits per byte on held-out works (lower is better), sorted by "
           "validation.", ""]
    ranked = sorted(lm, key=lambda r: r["val_bpb"])
    md.append(_table(["architecture", "validation bpb", "test bpb"], [[r["arch"], r["val_bpb"], r["test_bpb"]]
                                                                        for r in ranked]))
    png = _plot(out / "training_loss.png", "Training loss", "tokens", "loss (bits per byte)",
                {r["arch"]: ([p[0] for p in r["curve"]], [p[1] for p in r["curve"]]) for r in lm})
    md += ["", f"![training loss]({png})", ""]

    md += ["## Loss by position", "", f"Mean loss of the next byte at each position of held-out windows of "
           f"{meta['lm']['eval_len']} bytes — does loss keep falling with more context, or flatten? Models were "
           f"trained at context {meta['lm']['seq_len']}; positions beyond it test extrapolation.", ""]
    png = _plot(out / "loss_by_position.png", "Loss by token position (held-out)", "position", "bits per byte",
                {r["arch"]: (r["position"]["positions"], r["position"]["bpb"]) for r in lm}, logx=True)
    md += [f"![loss by position]({png})", ""]
    marks = lm[0]["position"]["positions"] if lm else []
    pick = [i for i, p in enumerate(marks) if p in {min(marks, key=lambda q: abs(q - t)) for t in
                                                    (4, 32, meta["lm"]["seq_len"], meta["lm"]["eval_len"])}]
    md.append(_table(["architecture"] + [f"pos {marks[i]}" for i in pick],
                     [[r["arch"]] + [r["position"]["bpb"][i] for i in pick] for r in lm]))

    md += ["", "## Length generalisation", "", f"Bits per byte when evaluating at the training context L = "
           f"{meta['lm']['seq_len']} and at 4L = {4 * meta['lm']['seq_len']}.", ""]
    md.append(_table(["architecture", "bpb at L", "bpb at 4L", "change"],
                     [[r["arch"], r["bpb_at_L"], r["bpb_at_4L"], r["bpb_at_4L"] - r["bpb_at_L"]] for r in lm]))

    md += ["", "## Associative recall", "", f"MQAR (zoology recipe): {meta['recall']['num_kv_pairs']} key-value "
           f"pairs, sequence length {meta['recall']['seq_len']}, vocabulary {meta['recall']['vocab_size']}, "
           f"{meta['recall']['n_layers']} layers; accuracy of the recalled values on held-out examples vs model "
           "width. A fixed-size state must squeeze all pairs in; attention can look them up.", ""]
    widths = sorted({r["width"] for r in recall})
    archs = list(dict.fromkeys(r["arch"] for r in recall))
    acc = {(r["arch"], r["width"]): r["accuracy"] for r in recall}
    md.append(_table(["architecture"] + [f"d={w}" for w in widths],
                     [[a] + [acc.get((a, w)) for w in widths] for a in archs]))
    png = _plot(out / "recall.png", "MQAR accuracy vs width", "d_model", "accuracy",
                {a: (widths, [acc.get((a, w), float("nan")) for w in widths]) for a in archs}, logx=True)
    md += ["", f"![recall]({png})", ""]

    md += ["## Speed and memory", "", "One whole model per architecture (the widths above), batch 1 for prefill "
           "and decode, measured in a fresh process each. Percentages are fractions of the same process's measured "
           "fp32 matmul peak (compute) or copy bandwidth (decode: weights + state bytes per token).", ""]
    md.append(_table(["architecture", "train tokens/s", "% of matmul peak", "peak RSS at largest L (MiB)"],
                     [[r["arch"], round(r["train_tokens_per_s"]), 100 * r["train_roof_fraction"],
                       r["lengths"][-1]["peak_rss_mib"]] for r in speed]))
    lengths = sorted({p["L"] for r in speed for p in r["lengths"]})

    def grid(key, scale=1.0):
        return [[r["arch"]] + [next((scale * p[key] for p in r["lengths"] if p["L"] == L), None) for L in lengths]
                for r in speed]

    md += ["", "Prefill time per token (µs):", "", _table(["architecture"] + [f"L={L}" for L in lengths],
                                                            grid("prefill_us_per_token"))]
    md += ["", "Decode latency per token after a context of L (µs):", "",
           _table(["architecture"] + [f"L={L}" for L in lengths], grid("decode_us_per_token"))]
    md += ["", "Recurrent state / KV cache size after L tokens (MiB):", "",
           _table(["architecture"] + [f"L={L}" for L in lengths], grid("state_mib"))]
    for key, title, fname in (("prefill_us_per_token", "Prefill time per token", "prefill.png"),
                              ("decode_us_per_token", "Decode latency per token", "decode.png")):
        png = _plot(out / fname, title, "context length L", "µs per token",
                    {r["arch"]: ([p["L"] for p in r["lengths"]], [p[key] for p in r["lengths"]]) for r in speed},
                    logx=True, logy=True)
        md += ["", f"![{title}]({png})"]

    md += ["", "## TTT ablations", "", "TTT-Linear language models with the recipe above: inner-loop mini-batch "
           "size b (b = 1 is online GD, b = T is batch GD over the whole context) and Mamba vs Transformer "
           "backbone. Quality against time.", ""]
    md.append(_table(["variant", "backbone", "b", "validation bpb", "train time (s)"],
                     [[r["variant"], r["backbone"], r["b"], r["val_bpb"], r["train_seconds"]] for r in ttt]))
    if ttt:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for r in ttt:
            ax.scatter(r["train_seconds"], r["val_bpb"])
            ax.annotate(r["variant"], (r["train_seconds"], r["val_bpb"]), fontsize=7)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("validation bits per byte")
        ax.set_title("TTT: quality against time")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "ttt_ablation.png")
        plt.close(fig)
        md += ["", "![ttt ablation](ttt_ablation.png)"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return out / "report.md"
