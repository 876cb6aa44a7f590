"""Render the arena's results into report.md (claims table first), one PNG per figure, and results.json."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from seqmix.arena.claims import context_speed, generation_speed, machine_drift, quality, recall_table  # noqa: E402
from seqmix.arena.plan import FAMILIES, family  # noqa: E402
from seqmix.arena.stats import NOISY, MachineDrift, Spread, wilson  # noqa: E402

SECTIONS = ("Claims", "Setup", "Language modelling", "Loss by position", "Length generalisation",
            "Associative recall", "Prompt order", "Speed and memory", "TTT ablations", "KAN vs MLP", "Theorem 1")
REFERENCE = "attention"
FLAG = " ⚠"  # a speed figure whose spread over rounds exceeds NOISY


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, Spread):
        return x.fmt(digits)
    if isinstance(x, float):
        return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 100 else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _timing(s: Spread | None, digits: int = 1, drift: MachineDrift = MachineDrift(), rate: bool = False) -> str:
    """A figure over rounds: median [stated interval] (the range over rounds widened by the machine's drift),
    flagged when its range over rounds is large."""
    if s is None:
        return "—"
    return drift.fmt(s, digits, rate) + (FLAG if s.noisy else "")


def _small_multiples(path: Path, title: str, xlabel: str, ylabel: str, series: dict, logx=False, logy=False) -> str:
    """One panel per family present in `series` ({name: (xs, ys, lows, highs)}; lows/highs may be None);
    attention is drawn in every panel as the dashed black reference."""
    families = [f for f in list(FAMILIES) + ["other"] if any(family(n) == f for n in series if n != REFERENCE)]
    if not families:
        families = ["attention"]
    cols = min(3, len(families))
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), dpi=110, squeeze=False, sharey=True)
    for ax, fam in zip(axes.flat, families):
        members = [n for n in series if family(n) == fam and n != REFERENCE]
        if REFERENCE in series:
            xs, ys, lo, hi = series[REFERENCE]
            ax.plot(xs, ys, "k--", linewidth=1.4, label=REFERENCE)
            if lo is not None:
                ax.fill_between(xs, lo, hi, color="k", alpha=0.12)
        for i, name in enumerate(members):
            xs, ys, lo, hi = series[name]
            color = plt.get_cmap("tab10")(i % 10)
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, color=color, label=name,
                    linewidth=1.4)
            if lo is not None:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        ax.set_title(fam, fontsize=10)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _ranked_dots(path: Path, title: str, xlabel: str, spreads: dict[str, Spread]) -> str:
    """Entrants sorted by median, each a dot at the median with a bar over its range (seeds)."""
    names = sorted(spreads, key=lambda n: spreads[n].median)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.2), dpi=110)
    for y, name in enumerate(names):
        s = spreads[name]
        color = "k" if name == REFERENCE else plt.get_cmap("tab10")(list(FAMILIES).index(family(name)) % 10
                                                                    if family(name) in FAMILIES else 9)
        ax.plot([s.low, s.high], [y, y], color=color, linewidth=2.5, alpha=0.5)
        ax.plot(s.values, [y] * s.n, "|", color=color, markersize=8)
        ax.plot(s.median, y, "o", color=color)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _claims(md: list, claims: list[dict]) -> None:
    md += ["## Claims", "", "Each verdict is computed from `results.json` by `seqmix.arena.claims` with the rule "
           "listed under the table; uncertainty is the range over seeds (quality), over interleaved rounds "
           "(speed) or a 95 % Wilson interval over test queries (recall), shown as median [min–max].", ""]
    rows = []
    for c in claims:
        figure = f"[plot]({c['figure']})" if c["figure"] and c["verdict"] != "not measured" else ""
        rows.append([c["id"], c["claim"], c["source"], c["measurement"], f"**{c['verdict']}**", figure])
    md.append(_table(["#", "claim", "source", "measurement", "verdict", "figure"], rows))
    md += ["", "Rules:", ""] + [f"* **{c['id']}** — {c['rule']}" for c in claims if c["rule"]] + [""]


def _seed_table(spreads: dict[str, Spread], extra: dict[str, dict[str, Spread]] | None = None) -> list[list]:
    return [[n, spreads[n]] + [col[n] for col in (extra or {}).values()]
            for n in sorted(spreads, key=lambda n: spreads[n].median)]


def _data_sentence(data: dict | None) -> str:
    """What the language models read: the default, or the corpus (with its sha256) and the tokenizer."""
    if not data or (data["name"] == "shakespeare" and data["tokenizer"] == "bytes"):
        return "Byte-level models on the vendored Shakespeare corpus (train/validation/test split by work)."
    return (f"Models on the corpus `{data['name']}` (sha256 `{data['sha256']}`) with the tokenizer "
            f"`{data['tokenizer']}` ({data['vocab_size']:,} ids, sha256 `{data['tokenizer_sha256'][:16]}…`); "
            "every figure is in bits per byte of the text (summed nats / (ln 2 · bytes)), whatever the tokenizer.")


def _lm_sections(md: list, out: Path, results: dict) -> None:
    lm, meta = results["lm"], results["meta"]
    if not lm:
        return
    s = meta["lm"]
    by_arch = defaultdict(list)
    for c in lm:
        by_arch[c["arch"]].append(c)
    md += ["## Setup", "", f"{_data_sentence(meta.get('data'))} The same recipe and token budget for every entrant: {s['n_layers']} layers, "
           f"{s['train_tokens']:,} training tokens at context {s['seq_len']}, widths chosen to match "
           f"{s['target_params']:,} parameters, seeds {', '.join(str(i) for i in range(s['seeds']))} for every "
           "entrant (the seed sets initialisation and batch order).", ""]
    md.append(_table(["architecture", "d_model", "parameters", "train seconds per seed", "train tokens/s"],
                     [[a, cs[0]["d_model"], f"{cs[0]['params']:,}",
                       Spread.of(c["train_seconds"] for c in cs), round(statistics.median(c["train_tokens_per_s"]
                                                                                            for c in cs))]
                      for a, cs in by_arch.items()]))
    val, test = quality(results), quality(results, metric="test_bpb")
    md += ["", "## Language modelling", "", f"Bits per byte on held-out works (lower is better): median [min–max] "
           f"over {s['seeds']} seeds, sorted by validation median. A difference between two entrants is "
           "a finding only where their ranges do not overlap.", ""]
    md.append(_table(["architecture", "validation bpb", "test bpb"], _seed_table(val, {"test": test})))
    png = _ranked_dots(out / "language_modelling.png", "Validation bits per byte (dot: median, bar: seed range)",
                       "bits per byte", val)
    md += ["", f"![language modelling]({png})", ""]
    curves = {}
    for arch, cs in by_arch.items():
        grid = [c["curve"] for c in cs]
        n = min(len(g) for g in grid)
        xs = [grid[0][i][0] for i in range(n)]
        ys = [[g[i][1] for g in grid] for i in range(n)]
        curves[arch] = (xs, [statistics.median(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys])
    png = _small_multiples(out / "training_loss.png", "Training loss (median and seed range)", "tokens",
                           "bits per byte", curves)
    md += [f"![training loss]({png})", ""]

    md += ["## Loss by position", "", f"Mean loss of the next byte at each position of held-out windows of "
           f"{s['eval_len']} bytes (median over seeds; shaded: seed range). Models were trained at context "
           f"{s['seq_len']}; positions beyond it test extrapolation. Claim C6 reads the octaves of the training "
           "context below.", ""]
    positions = {}
    for arch, cs in by_arch.items():
        xs = cs[0]["position"]["positions"]
        ys = [[c["position"]["bpb"][i] for c in cs] for i in range(len(xs))]
        positions[arch] = (xs, [statistics.median(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys])
    png = _small_multiples(out / "loss_by_position.png", "Loss by position (held-out)", "position", "bits per byte",
                           positions, logx=True)
    md += [f"![loss by position]({png})", ""]
    octaves = [o for o in lm[0]["octaves_at_L"] if o["end"] >= 8]
    md.append(_table(["architecture"] + [f"[{o['start']}, {o['end']})" for o in octaves],
                     [[a] + [Spread.of(next(x["bpb"] for x in c["octaves_at_L"] if x["end"] == o["end"]) for c in cs)
                             for o in octaves] for a, cs in by_arch.items()]))

    md += ["", "## Length generalisation", "", f"Bits per byte at the training context L = {s['seq_len']} and at "
           f"4L = {4 * s['seq_len']} (median [range] over seeds).", ""]
    at_4L = quality(results, metric="bpb_at_4L")
    md.append(_table(["architecture", "bpb at L", "bpb at 4L"], _seed_table(val, {"4L": at_4L})))
    md.append("")


def _recall_section(md: list, out: Path, results: dict) -> None:
    recall = results["recall"]
    if not recall:
        return
    rs = results["meta"]["settings"]["recall"]
    md += ["## Associative recall", "", f"MQAR generated by Zoology's recipe: sequence length {rs['seq_len']}, "
           f"vocabulary {rs['vocab_size']}, {rs['n_layers']} layers, no MLP, untied embeddings, a kernel-"
           f"{rs['mixer_conv']} short convolution before every mixer (Zoology's current convention), "
           f"{rs['train_examples']:,} training examples. Learning rates {', '.join(f'{x:g}' for x in rs['lrs'])} "
           f"each train {rs['probe_steps']} steps; the best on a validation split continues to {rs['max_steps']} "
           f"steps (batch {rs['batch_size']}); every run stops at validation accuracy {rs['target']}. Accuracy on "
           f"a separate test split ({rs['test_examples']:,} examples) with its 95 % Wilson interval.", ""]
    rows = []
    for c in recall:
        low, high = wilson(c["accuracy"] * c["test_queries"], c["test_queries"])
        rows.append([c["arch"], c["width"], c["num_kv_pairs"], f"{c['accuracy']:.3f} [{low:.3f}–{high:.3f}]",
                     "yes" if c["converged"] else "no", f"{c['best_lr']:g}", c["steps"],
                     f"{c['state_bytes'] / 1024:.1f}", round(c["train_seconds"])])
    md.append(_table(["architecture", "width", "pairs", "test accuracy [95 %]", f"stopped at {rs['target']}",
                      "best lr", "steps",
                      "state after one example (KiB)", "seconds"], rows))
    table = recall_table(results)
    fig, (by_width, by_state) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110, sharey=True)
    for i, (arch, pairs) in enumerate(sorted({(k[0], k[2]) for k in table})):
        keys = sorted((k for k in table if k[0] == arch and k[2] == pairs), key=lambda k: k[1])
        acc = [table[k]["accuracy"] for k in keys]
        style = dict(color="k" if arch == REFERENCE else plt.get_cmap("tab10")(i % 10), marker="o",
                     linestyle="--" if arch == REFERENCE else "-", label=f"{arch}, {pairs} pairs")
        by_width.plot([k[1] for k in keys], acc, **style)
        by_state.plot([table[k]["state_bytes"] for k in keys], acc, **style)
    by_width.set(xlabel="d_model", ylabel="test accuracy", title="MQAR accuracy vs width")
    by_state.set(xlabel="state bytes after one example (attention: its KV cache)", title="... vs state size")
    for ax in (by_width, by_state):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    by_state.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "recall.png")
    plt.close(fig)
    md += ["", "![recall](recall.png)", ""]


def _prompt_order_section(md: list, out: Path, results: dict) -> None:
    cells = results["prompt_order"]
    if not cells:
        return
    ps = results["meta"]["settings"]["prompt_order"]
    md += ["## Prompt order", "", f"Recall where {ps['num_queries']} of {ps['num_kv_pairs']} key-value pairs are "
           "asked (claim C11). *after*: the prefix is blank and the keys are asked after the context (a "
           "recurrent model must store every pair); *first*: the same examples with the asked keys announced "
           f"before the context. Width {ps['width']}, trained like the recall section; test accuracy with its 95 % "
           "Wilson interval.", ""]
    rows = []
    for c in cells:
        low, high = wilson(c["accuracy"] * c["test_queries"], c["test_queries"])
        rows.append([c["arch"], "first" if c["announce"] else "after", f"{c['accuracy']:.3f} [{low:.3f}–{high:.3f}]",
                     f"{c['best_lr']:g}", c["steps"], round(c["train_seconds"])])
    md.append(_table(["architecture", "question", "test accuracy [95 %]", "best lr", "steps", "seconds"], rows))
    archs = list(dict.fromkeys(c["arch"] for c in cells))
    fig, ax = plt.subplots(figsize=(1.6 * len(archs) + 2, 3.5), dpi=110)
    for j, announce in enumerate((False, True)):
        accs, errs = [], [[], []]
        for a in archs:
            c = next((c for c in cells if c["arch"] == a and c["announce"] == announce), None)
            acc = c["accuracy"] if c else float("nan")
            low, high = wilson(acc * c["test_queries"], c["test_queries"]) if c else (acc, acc)
            accs.append(acc)
            errs[0].append(acc - low)
            errs[1].append(high - acc)
        ax.bar([i + 0.38 * j for i in range(len(archs))], accs, 0.36, yerr=errs,
               label="question first" if announce else "question after", capsize=3)
    ax.set_xticks([i + 0.19 for i in range(len(archs))], archs)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Recall with the question before or after the context")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "prompt_order.png")
    plt.close(fig)
    md += ["", "![prompt order](prompt_order.png)", ""]


def _speed_section(md: list, out: Path, results: dict) -> None:
    cells = results["speed"]
    if not cells:
        return
    ss = results["meta"]["settings"]["speed"]
    speed, drift = context_speed(results), machine_drift(results)
    md += ["## Speed and memory", "", f"Whole models at the language-modelling widths, batch 1 for prefill and "
           f"decode, {ss.get('threads') or 'all'} torch thread(s), each entrant in a fresh process per round; "
           f"{ss['rounds']} rounds, each timing every entrant once (the fastest of three timed blocks), one after "
           f"another across the section. Figures are the median over rounds and, in brackets, the interval this "
           f"run states for a repeat: the range over rounds widened by the machine's own drift during the "
           f"section (every round's process first measured matmul GFLOP/s and copy GB/s; they strayed from "
           f"their medians by factors {drift.faster:.2f}–{drift.slower:.2f} in time), which rounds inside one "
           f"section cannot see. Ratios between entrants (the claims) are taken within a round and are not "
           f"widened. {FLAG.strip()} marks a figure whose own max/min − 1 over rounds exceeds {NOISY:.0%}.", ""]
    context_cells = [c for c in cells if c.get("kind") == "context"]
    if context_cells:
        by_arch = defaultdict(list)
        for c in context_cells:
            by_arch[c["arch"]].append(c)
        md.append(_table(["architecture", "parameters", "linear time (no full-attention layer)",
                          "peak RSS at the longest L (MiB)", "decode at the longest L, % of copy bandwidth"],
                         [[a, f"{cs[0]['params']:,}", "yes" if cs[0]["linear_time"] else "no",
                           round(max(c["lengths"][-1]["peak_rss_mib"] for c in cs)),
                           f"{100 * statistics.median(c['lengths'][-1]['decode_bandwidth_fraction'] for c in cs):.1f}"]
                          for a, cs in by_arch.items()]))
        lengths = sorted({L for s in speed.values() for L in s.lengths})
        for key, title in (("prefill", "Prefill time per token (µs)"),
                           ("decode", "Decode latency per token after a context of L (µs)")):
            md += ["", f"{title}:", "", _table(["architecture"] + [f"L={L}" for L in lengths],
                                              [[a] + [_timing(s.by_length[L][key], drift=drift) if L in s.by_length else "—"
                                                      for L in lengths] for a, s in speed.items()])]
        md += ["", "Recurrent state / KV cache after L tokens (MiB):", "",
               _table(["architecture"] + [f"L={L}" for L in lengths],
                      [[a] + [s.by_length[L]["state_mib"] if L in s.by_length else None for L in lengths]
                       for a, s in speed.items()])]
        for key, title, name in (("prefill", "Prefill time per token", "prefill.png"),
                                 ("decode", "Decode latency per token", "decode.png")):
            series = {a: (s.lengths, [s.by_length[L][key].median for L in s.lengths],
                          [s.by_length[L][key].low for L in s.lengths], [s.by_length[L][key].high for L in s.lengths])
                      for a, s in speed.items()}
            png = _small_multiples(out / name, f"{title} (median, shaded: range over rounds)", "context length L",
                                   "µs per token", series, logx=True, logy=True)
            md += ["", f"![{title}]({png})"]
    forms = next((c for c in cells if c.get("kind") == "ttt_forms"), None)
    if forms:
        dual = Spread.of(forms["forms"]["dual (chunked)"])
        md += ["", f"TTT-Linear's inner loop alone (one layer, L = {forms['L']}, d_model {forms['d_model']}, "
               f"{forms['n_heads']} heads, batch 1; {dual.n} interleaved rounds):", "",
               _table(["form", "ms", "vs dual (median)"],
                      [[name, _timing(Spread.of(v).scaled(1e3), 2), Spread.of(v).median / dual.median]
                       for name, v in forms["forms"].items()])]
    gen = generation_speed(results)
    if gen:
        md += ["", f"Generation through `seqmix.model.generate.sample`: {ss['generation_tokens']} new tokens after "
               f"a prompt of {ss['generation_context']} tokens, generated tokens per second (prefill excluded):", "",
               _table(["architecture"] + [f"batch {b}" for b in ss["generation_batches"]],
                      [[a] + [_timing(by.get(b), 0, drift, rate=True) for b in ss["generation_batches"]]
                       for a, by in gen.items()])]
        fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=110)
        for arch, by in gen.items():
            bs = sorted(by)
            ax.errorbar(bs, [by[b].median for b in bs], yerr=[[by[b].median - by[b].low for b in bs],
                                                               [by[b].high - by[b].median for b in bs]],
                        marker="o", capsize=3, label=arch, color="k" if arch == REFERENCE else None,
                        linestyle="--" if arch == REFERENCE else "-")
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="generated tokens / s",
               title=f"Generation throughput after {ss['generation_context']} tokens")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "generation.png")
        plt.close(fig)
        md += ["", "![generation](generation.png)"]
    md.append("")


def _ttt_section(md: list, out: Path, results: dict) -> None:
    ttt = results["ttt"]
    if not ttt:
        return
    bpb, seconds = quality(results, "ttt", "variant"), quality(results, "ttt", "variant", "train_seconds")
    md += ["## TTT ablations", "", "TTT-Linear language models with the recipe and seeds above: inner-loop "
           "mini-batch size b (b = 1 is online GD, b = T batch GD over the whole context) and Mamba vs Transformer "
           "backbone (the b = 16 Mamba-backbone variant is the language-modelling entrant itself). Quality against "
           "training time.", ""]
    md.append(_table(["variant", "validation bpb", "train seconds"],
                     [[v, bpb[v], seconds[v]] for v in bpb]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for v in bpb:
        b, t = bpb[v], seconds[v]
        ax.errorbar(t.median, b.median, xerr=[[t.median - t.low], [t.high - t.median]],
                    yerr=[[b.median - b.low], [b.high - b.median]], marker="o", capsize=3, label=v)
    ax.set_xlabel("training seconds (median, bars: seed range)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("TTT: quality against time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ttt_ablation.png")
    plt.close(fig)
    md += ["", "![ttt ablation](ttt_ablation.png)", ""]


def _kan_and_theory(md: list, results: dict) -> None:
    kan = results["kan"]
    if kan:
        ks = results["meta"]["settings"]["kan"]
        md += ["## KAN vs MLP", "", f"The KAN paper's toy regression exp(mean sin(π x²)) in {ks['n_inputs']} "
               f"inputs: a KAN [{ks['n_inputs']}, {ks['hidden']}, 1] and an MLP with the same parameter count, "
               f"{ks['epochs']} epochs of {ks['train_samples']:,} samples, the same batches; only training steps "
               "are timed; the order of the two alternates by seed.", ""]
        md.append(_table(["model", "parameters", "train seconds", "test RMSE"],
                         [[m, f"{kan[0]['params'][m]:,}", Spread.of(c[m]["train_seconds"] for c in kan),
                           Spread.of(c[m]["test_rmse"] for c in kan)] for m in ("KAN", "MLP")]))
        md.append("")
    theory = results["theory"]
    if theory:
        c = theory[0]
        md += ["## Theorem 1", "", f"TTT with a linear inner model, batch GD over T = {c['T']} tokens, η = 1/2, "
               "W0 = 0, no layer norm or residual, against un-normalised linear attention; the largest deviation "
               "relative to the output scale.", ""]
        md.append(_table(["form", "float64", "float32"],
                         [[f, f"{c['float64'][f]:.1e}", f"{c['float32'][f]:.1e}"] for f in c["float64"]]))
        md.append("")


def render(out: Path, results: dict) -> Path:
    """Write report.md and the PNGs into `out` from the collected `results` (see cli.run)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    md = [f"# seqmix arena — preset `{meta['preset']}`", "",
          f"Run {meta['finished']} on {meta['machine']['cpu']} ({meta['machine']['threads']} threads), "
          f"torch {meta['machine']['torch']}, seqmix {meta['seqmix']} (commit `{meta['commit']}`). "
          f"Every number below is in `results.json` beside this file; `seqmix arena --preset {meta['preset']} "
          f"--report-only --out {meta['out']}` re-renders it from the cache.", ""]
    md += [f"The cells took {meta['compute_seconds'] / 60:.1f} minutes of compute in all (the time a run from an "
           "empty cache takes).", ""]
    traded = meta["settings"].get("traded")
    if traded:
        md += [f"What this preset trades for its budget: {traded}", ""]
    _claims(md, results["claims"])
    _lm_sections(md, out, results)
    _recall_section(md, out, results)
    _prompt_order_section(md, out, results)
    _speed_section(md, out, results)
    _ttt_section(md, out, results)
    _kan_and_theory(md, results)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return out / "report.md"
