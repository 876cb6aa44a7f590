"""The seeds' claims, each judged by a stated rule computed from the arena's results (never typed).

Every claim has a source, the measurement it needs, a rule, and a verdict:

* ``reproduced`` — the effect is there and exceeds its uncertainty (see arena/stats.py for what the
  uncertainty is: seed ranges for quality, round ranges for speed, Wilson intervals for recall accuracy);
* ``not reproduced at this scale`` — the difference lies inside the uncertainty, or this preset cannot
  measure what the claim is about (each rule says when);
* ``contradicted`` — the opposite is measured beyond the uncertainty;
* ``not measured`` — the section that measures it did not run (``--sections`` / ``--mixers``).

``judge_all(results)`` returns one row per claim; report.py prints them at the top of the report.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

from seqmix.arena.stats import MachineDrift, Spread, accuracy_spread, order, paired_ratio

REPRODUCED = "reproduced"
NOT_AT_SCALE = "not reproduced at this scale"
CONTRADICTED = "contradicted"
NOT_MEASURED = "not measured"
VERDICTS = (REPRODUCED, NOT_AT_SCALE, CONTRADICTED, NOT_MEASURED)


@dataclass
class Judgement:
    claim: str
    id: str
    source: str
    measurement: str
    rule: str
    verdict: str
    figure: str | None = None


class Missing(Exception):
    """The results lack what a claim needs (its message says what)."""


# --- grouping the results -------------------------------------------------------------------------------------

def quality(results: dict, section: str = "lm", key: str = "variant", metric: str = "val_bpb",
            where: Callable[[dict], bool] = lambda cell: True) -> dict[str, Spread]:
    """{entrant: Spread of `metric` over seeds} of the cells `where` accepts; entrants are `arch` for "lm",
    `key` for other sections."""
    groups = defaultdict(list)
    for cell in filter(where, results.get(section, [])):
        groups[cell["arch"] if section == "lm" else cell[key]].append(cell[metric])
    return {name: Spread.of(values) for name, values in groups.items()}


@dataclass
class ContextSpeed:
    """One entrant's speed section: per context length L, Spreads over rounds of prefill and decode µs/token,
    and the state size (MiB); `linear_time` is True when no layer is full attention."""

    linear_time: bool
    by_length: dict[int, dict]

    @property
    def lengths(self) -> list[int]:
        return sorted(self.by_length)


def context_speed(results: dict) -> dict[str, ContextSpeed]:
    """{arch: ContextSpeed} from the speed section's context cells; only lengths every round reached count."""
    rounds = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    linear = {}
    for cell in results.get("speed", []):
        if cell.get("kind") != "context":
            continue
        linear[cell["arch"]] = cell["linear_time"]
        for p in cell["lengths"]:
            entry = rounds[cell["arch"]][p["L"]]
            entry["prefill"].append(p["prefill_us_per_token"])
            entry["decode"].append(p["decode_us_per_token"])
            entry["state_mib"].append(p["state_mib"])
    out = {}
    for arch, by_L in rounds.items():
        n = max(len(v["prefill"]) for v in by_L.values())
        out[arch] = ContextSpeed(linear[arch], {
            L: {"prefill": Spread.of(v["prefill"]), "decode": Spread.of(v["decode"]), "state_mib": max(v["state_mib"])}
            for L, v in sorted(by_L.items()) if len(v["prefill"]) == n})
    return out


def machine_drift(results: dict) -> MachineDrift:
    """The machine's drift over the speed section, from the references every context cell measured first."""
    references = defaultdict(list)
    for cell in results.get("speed", []):
        if cell.get("kind") == "context" and "roofline" in cell:
            for key in ("matmul_gflops", "bandwidth_gbs"):
                references[key].append(cell["roofline"][key])
    return MachineDrift.of(references)


def generation_speed(results: dict) -> dict[str, dict[int, Spread]]:
    """{arch: {batch: Spread of generated tokens/s over rounds}}."""
    groups = defaultdict(lambda: defaultdict(list))
    for cell in results.get("speed", []):
        if cell.get("kind") == "generation":
            for row in cell["batches"]:
                groups[cell["arch"]][row["batch"]].append(row["tokens_per_s"])
    return {a: {b: Spread.of(v) for b, v in sorted(by.items())} for a, by in groups.items()}


def _need(mapping: dict, *names: str, what: str):
    missing = [n for n in names if n not in mapping]
    if missing:
        raise Missing(f"{what}: no results for {', '.join(missing)}")
    return [mapping[n] for n in names]


def _seeds(s: Spread) -> str:
    return f"{s.fmt()} ({s.n} seed{'s' * (s.n != 1)})"


def _lower_is_better(a: Spread, b: Spread) -> str:
    """Verdict for 'a below b' from the seed ranges."""
    return {-1: REPRODUCED, 1: CONTRADICTED, 0: NOT_AT_SCALE}[order(a, b)]


LOWER_RULE = ("reproduced if every seed of the first is below every seed of the second (ranges do not "
              "overlap; for 3 seeds each an exact one-sided permutation test at p = 0.05), contradicted if the "
              "reverse holds, otherwise not reproduced at this scale")


# --- the claims --------------------------------------------------------------------------------------------------

def _speed_span(results):
    """The speed results, attention's, the linear-time entrants and the shortest and longest common L."""
    speed = context_speed(results)
    (attention,) = _need(speed, "attention", what="speed")
    linear = [a for a, s in speed.items() if s.linear_time]
    if not linear:
        raise Missing("speed: no linear-time entrant")
    L0, L1 = attention.lengths[0], attention.lengths[-1]
    linear = [a for a in linear if L0 in speed[a].by_length and L1 in speed[a].by_length]
    return speed, attention, linear, L0, L1


def _growth(series: ContextSpeed, what: str, L0: int, L1: int) -> Spread:
    return paired_ratio(series.by_length[L1][what], series.by_length[L0][what])


def prefill_flat(results):
    speed, attention, linear, L0, L1 = _speed_span(results)
    rule = (f"growth of prefill µs/token from L = {L0} to {L1} (range over rounds): reproduced if attention's is "
            "entirely above 2× and every linear-time entrant's entirely below 2×; contradicted if attention's is "
            "entirely below 2× or a linear-time entrant's entirely above; otherwise not reproduced at this scale "
            "(also when the lengths span less than 8×)")
    growth = {a: _growth(speed[a], "prefill", L0, L1) for a in linear}
    grows = _growth(attention, "prefill", L0, L1)
    text = f"attention {grows.fmt(2)}×; " + ", ".join(f"{a} {g.fmt(2)}×" for a, g in growth.items())
    if L1 < 8 * L0:
        return text, rule, NOT_AT_SCALE
    if grows.high < 2 or any(g.low > 2 for g in growth.values()):
        return text, rule, CONTRADICTED
    if grows.low > 2 and all(g.high < 2 for g in growth.values()):
        return text, rule, REPRODUCED
    return text, rule, NOT_AT_SCALE


def decode_constant(results):
    speed, attention, linear, L0, L1 = _speed_span(results)
    rule = (f"from L = {L0} to {L1}: reproduced if every linear-time entrant's state is the same size and its "
            "decode µs/token grows by less than 2× (range over rounds entirely below), while attention's KV cache "
            f"grows at least 0.9 × {L1 // L0} = {0.9 * L1 / L0:.1f}×; contradicted if a linear-time state grows or "
            "its decode time grows by more than 2× beyond the spread; otherwise not reproduced at this scale")
    growth = {a: _growth(speed[a], "decode", L0, L1) for a in linear}
    states_constant = all(speed[a].by_length[L1]["state_mib"] == speed[a].by_length[L0]["state_mib"] for a in linear)
    cache = attention.by_length[L1]["state_mib"], attention.by_length[L0]["state_mib"]
    text = (f"attention: KV cache {cache[1]:.2f} → {cache[0]:.2f} MiB ({cache[0] / cache[1]:.1f}×), decode "
            f"{_growth(attention, 'decode', L0, L1).fmt(2)}×; linear-time states "
            f"{'constant' if states_constant else 'NOT constant'}, decode growth " +
            ", ".join(f"{a} {g.fmt(2)}×" for a, g in growth.items()))
    if not states_constant or any(g.low > 2 for g in growth.values()):
        return text, rule, CONTRADICTED
    if cache[0] / cache[1] >= 0.9 * L1 / L0 and all(g.high < 2 for g in growth.values()):
        return text, rule, REPRODUCED
    return text, rule, NOT_AT_SCALE


def ttt_faster_from_8k(results):
    speed = context_speed(results)
    ttt, attention = _need(speed, "ttt_linear", "attention", what="speed")
    common = [L for L in ttt.lengths if L in attention.by_length]
    ratios = {L: paired_ratio(ttt.by_length[L]["prefill"], attention.by_length[L]["prefill"]) for L in common}
    rule = ("prefill µs/token of TTT-Linear over attention's, round by round: reproduced if the ratio's range is "
            "entirely below 1 at every measured L ≥ 8192; contradicted if it is entirely above 1 at the largest "
            "L ≥ 8192; otherwise (or with no L ≥ 8192) not reproduced at this scale")
    text = ", ".join(f"L={L}: {r.fmt(2)}" for L, r in ratios.items())
    faster = [L for L, r in ratios.items() if r.high < 1]
    if faster:
        text += f"; TTT-Linear faster from L = {min(faster)}"
    long = [L for L in common if L >= 8192]
    if not long:
        return text, rule, NOT_AT_SCALE
    if all(ratios[L].high < 1 for L in long):
        return text, rule, REPRODUCED
    if ratios[max(long)].low > 1:
        return text, rule, CONTRADICTED
    return text, rule, NOT_AT_SCALE


def dual_vs_primal(results):
    forms = next((c for c in results.get("speed", []) if c.get("kind") == "ttt_forms"), None)
    if forms is None:
        raise Missing("speed: no TTT forms cell")
    ratio = paired_ratio(Spread.of(forms["forms"]["primal (materialised)"]), Spread.of(forms["forms"]["dual (chunked)"]))
    text = (f"primal (materialised) / dual time, TTT-Linear layer, L = {forms['L']}, d_model {forms['d_model']}: "
            f"{ratio.fmt(2)}× over {ratio.n} interleaved rounds")
    rule = ("reproduced if the ratio's range is entirely at or above 5; contradicted if entirely below 5; "
            "otherwise not reproduced at this scale")
    verdict = REPRODUCED if ratio.low >= 5 else CONTRADICTED if ratio.high < 5 else NOT_AT_SCALE
    return text, rule, verdict


def ttt_beats_linear_attention(results):
    ttt, la = _need(quality(results), "ttt_linear", "linear_attention", what="language modelling")
    text = f"validation bpb: TTT-Linear {_seeds(ttt)}, linear attention {_seeds(la)}"
    return text, "TTT-Linear vs linear attention: " + LOWER_RULE, _lower_is_better(ttt, la)


def ttt_uses_long_context(results):
    cells = defaultdict(list)
    for c in results.get("lm", []):
        cells[c["arch"]].append(c)
    ttt, mamba = _need(cells, "ttt_linear", "mamba", what="language modelling")
    L = max(o["end"] for o in ttt[0]["octaves_at_L"])  # the training context

    def last_octave_drop(cell):
        octaves = {o["end"]: o["bpb"] for o in cell["octaves_at_L"]}
        return octaves[L // 2] - octaves[L]  # mean bpb over [L/4, L/2) minus over [L/2, L)

    ttt_drop, mamba_drop = Spread.of(map(last_octave_drop, ttt)), Spread.of(map(last_octave_drop, mamba))
    text = (f"fall of bpb from positions [{L // 4}, {L // 2}) to [{L // 2}, {L}) of the training context: "
            f"TTT-Linear {_seeds(ttt_drop)}, Mamba {_seeds(mamba_drop)}")
    rule = ("the claim is about contexts beyond 16k; this rule compares how much the loss still falls over the last "
            "doubling of the training context: reproduced if TTT-Linear's fall exceeds Mamba's beyond the seed "
            "ranges; contradicted only if Mamba's exceeds TTT-Linear's beyond the ranges with a training context "
            "≥ 16384; otherwise not reproduced at this scale")
    o = order(mamba_drop, ttt_drop)
    if o == -1:
        return text, rule, REPRODUCED
    if o == 1 and L >= 16384:
        return text, rule, CONTRADICTED
    return text, rule, NOT_AT_SCALE


def ttt_mini_batch(results):
    mamba_backbone = lambda cell: cell["backbone"] == "mamba"  # noqa: E731
    bpb = quality(results, "ttt", "b", where=mamba_backbone)
    seconds = quality(results, "ttt", "b", "train_seconds", where=mamba_backbone)
    sizes = sorted((b for b in bpb if b != "T"), key=int) + (["T"] if "T" in bpb else [])
    if "16" not in bpb or len(sizes) < 3:
        raise Missing("TTT ablation: needs the Mamba backbone at b = 16 and two other mini-batch sizes")
    small, large = sizes[0], sizes[-1]
    quality_order = order(bpb[small], bpb[large])
    slower = order(seconds[small], seconds[large]) == 1
    i16 = sizes.index("16")
    knee = (i16 > 0 and i16 < len(sizes) - 1
            and bpb[sizes[i16 + 1]].median - bpb["16"].median > bpb["16"].median - bpb[small].median)
    text = ("validation bpb by b: " + ", ".join(f"b={b} {_seeds(bpb[b])}" for b in sizes) +
            "; training seconds: " + ", ".join(f"b={b} {seconds[b].fmt(1)}" for b in sizes))
    rule = (f"reproduced if the smallest b ({small}) is below the largest ({large}) in bpb beyond the seed ranges, "
            "slower beyond the ranges of training time, and b = 16 is the knee (the median gain from the next "
            "larger b down to 16 exceeds the gain from 16 down to the smallest); contradicted if the largest b is "
            "better beyond the ranges; otherwise not reproduced at this scale")
    if quality_order == 1:
        return text, rule, CONTRADICTED
    if quality_order == -1 and slower and knee:
        return text, rule, REPRODUCED
    return text, rule, NOT_AT_SCALE


def mamba_backbone(results):
    by_variant = quality(results, "ttt", "variant")
    mamba, transformer = _need(by_variant, "mamba b=16", "transformer b=16", what="TTT ablation")
    text = f"validation bpb at b = 16: Mamba backbone {_seeds(mamba)}, Transformer backbone {_seeds(transformer)}"
    return text, "Mamba backbone vs Transformer backbone: " + LOWER_RULE, _lower_is_better(mamba, transformer)


def theorem_1(results):
    cell = next(iter(results.get("theory", [])), None)
    if cell is None:
        raise Missing("theory: not run")
    worst64, worst32 = max(cell["float64"].values()), max(cell["float32"].values())
    text = (f"largest deviation relative to the output scale over the parallel, chunked and step forms "
            f"(T = {cell['T']}): {worst64:.1e} in float64, {worst32:.1e} in float32")
    rule = ("reproduced if the float64 deviation is at rounding level (≤ 1e-12); contradicted if above 1e-6; "
            "otherwise not reproduced at this scale")
    verdict = REPRODUCED if worst64 <= 1e-12 else CONTRADICTED if worst64 > 1e-6 else NOT_AT_SCALE
    return text, rule, verdict


def recall_table(results: dict) -> dict[tuple[str, int, int], dict]:
    return {(c["arch"], c["width"], c["num_kv_pairs"]): c for c in results.get("recall", [])}


def attention_solves_recall(results):
    table = recall_table(results)
    attention = {k: c for k, c in table.items() if k[0] == "attention"}
    if not attention:
        raise Missing("recall: attention not run")
    others = sorted({k[0] for k in table} - {"attention"})
    if not others:
        raise Missing("recall: no fixed-state entrant")
    spread = {k: accuracy_spread(c["accuracy"], c["test_queries"]) for k, c in table.items()}
    solved = all(c["accuracy"] >= 0.99 for c in attention.values())
    width_bound = []
    for arch in others:
        for pairs in sorted({k[2] for k in table if k[0] == arch}):
            widths = sorted(k[1] for k in table if k[0] == arch and k[2] == pairs)
            small, big = (arch, widths[0], pairs), (arch, widths[-1], pairs)
            ref = ("attention", widths[0], pairs)
            if ref in spread and len(widths) > 1 and order(spread[small], spread[ref]) == -1 \
                    and order(spread[small], spread[big]) == -1:
                width_bound.append(f"{arch} ({pairs} pairs)")
    beaten = [k for k in table if k[0] != "attention" and ("attention",) + k[1:] in spread
              and order(spread[("attention",) + k[1:]], spread[k]) == -1]
    text = ("attention accuracy " + ", ".join(f"d={k[1]}/{k[2]} pairs {c['accuracy']:.3f}" for k, c in
                                               sorted(attention.items())) +
            "; fixed-state entrants below attention at their smallest width and rising with width: " +
            (", ".join(width_bound) if width_bound else "none"))
    rule = ("accuracy on the test split with 95 % Wilson intervals over its queries: reproduced if attention "
            "reaches ≥ 0.99 at every width and pair count run, and at least one fixed-state entrant is below "
            "attention at its smallest width and below its own largest width (intervals apart); contradicted if "
            "attention is below a fixed-state entrant at some setting (intervals apart); otherwise not reproduced "
            "at this scale")
    if beaten:
        return text, rule, CONTRADICTED
    if solved and width_bound:
        return text, rule, REPRODUCED
    return text, rule, NOT_AT_SCALE


def question_first(results):
    cells = {(c["arch"], c["announce"]): c for c in results.get("prompt_order", [])}
    archs = sorted({a for a, _ in cells if (a, True) in cells and (a, False) in cells})
    if "attention" not in archs or len(archs) < 2:
        raise Missing("prompt order: needs attention and a fixed-state entrant in both layouts")
    spread = {k: accuracy_spread(c["accuracy"], c["test_queries"]) for k, c in cells.items()}
    gains = {a: order(spread[(a, False)], spread[(a, True)]) for a in archs}
    text = "; ".join(f"{a}: after {cells[(a, False)]['accuracy']:.3f}, first {cells[(a, True)]['accuracy']:.3f}"
                     for a in archs)
    learned = [a for a in archs if a != "attention" and max(cells[(a, x)]["accuracy"] for x in (False, True)) >= 0.5]
    rule = ("test accuracy with 95 % Wilson intervals, keys asked only after the context vs announced before it; "
            "a fixed-state entrant counts once it learned the task in one layout (accuracy ≥ 0.5): reproduced if "
            "every fixed-state entrant counts and gains beyond the intervals while attention does not change beyond "
            "them; contradicted if a counted fixed-state entrant loses beyond the intervals; otherwise not "
            "reproduced at this scale")
    fixed = [a for a in archs if a != "attention"]
    if any(gains[a] == 1 for a in learned):
        return text, rule, CONTRADICTED
    if learned == fixed and all(gains[a] == -1 for a in fixed) and gains["attention"] == 0:
        return text, rule, REPRODUCED
    return text, rule, NOT_AT_SCALE


def kan_slower(results):
    cells = results.get("kan", [])
    if not cells:
        raise Missing("kan: not run")
    ratio = Spread.of(c["KAN"]["train_seconds"] / c["MLP"]["train_seconds"] for c in cells)
    params = cells[0]["params"]
    text = (f"KAN / MLP training time, {params['KAN']:,} vs {params['MLP']:,} parameters: {ratio.fmt(2)}× "
            f"({ratio.n} seeds)")
    rule = ("'about 10×' read as within a factor of 2 of it: reproduced if the ratio's range lies inside [5, 20]; "
            "contradicted if it lies entirely outside; otherwise not reproduced at this scale")
    if 5 <= ratio.low and ratio.high <= 20:
        return text, rule, REPRODUCED
    if ratio.high < 5 or ratio.low > 20:
        return text, rule, CONTRADICTED
    return text, rule, NOT_AT_SCALE


def mamba_throughput(results):
    gen = generation_speed(results)
    mamba, attention = _need(gen, "mamba", "attention", what="generation throughput")
    batches = [b for b in mamba if b in attention]
    ratios = {b: paired_ratio(mamba[b], attention[b]) for b in batches}
    text = "Mamba / attention generated tokens/s: " + ", ".join(f"batch {b}: {r.fmt(2)}×" for b, r in ratios.items())
    rule = ("through `sample` after the preset's context, round by round; at the largest batch: reproduced if the "
            "ratio's range is entirely above 1, contradicted if entirely below 1, otherwise not reproduced at this "
            "scale")
    big = ratios[max(batches)]
    verdict = REPRODUCED if big.low > 1 else CONTRADICTED if big.high < 1 else NOT_AT_SCALE
    return text, rule, verdict


def hybrid_beats_parents(hybrid: str):
    def judge(results):
        q = quality(results)
        h, mamba, attention = _need(q, hybrid, "mamba", "attention", what="language modelling")
        text = f"validation bpb: {hybrid} {_seeds(h)}, Mamba {_seeds(mamba)}, attention {_seeds(attention)}"
        rule = (f"reproduced if {hybrid} is below both parents beyond the seed ranges; contradicted if a parent is "
                "below it beyond the ranges; otherwise not reproduced at this scale")
        orders = (order(h, mamba), order(h, attention))
        verdict = CONTRADICTED if 1 in orders else REPRODUCED if orders == (-1, -1) else NOT_AT_SCALE
        return text, rule, verdict

    return judge


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    source: str
    judge: Callable
    figure: str | None = None


CLAIMS = (
    Claim("C1", "Prefill time per token is flat in L for linear-time mixers and grows for attention",
          "seeds 000, 001, 003; TTT paper Fig. 12", prefill_flat, "prefill.png"),
    Claim("C2", "Decode time and state are constant in context, while attention's KV cache grows",
          "seeds 002, 004", decode_constant, "decode.png"),
    Claim("C3", "TTT-Linear is faster than attention from 8k context", "seed 001; TTT paper v1 abstract, Fig. 12",
          ttt_faster_from_8k, "prefill.png"),
    Claim("C4", "TTT's dual form is at least 5× faster than the primal form", "seed 001; TTT paper §3.3",
          dual_vs_primal),
    Claim("C5", "TTT-Linear has lower loss than linear attention at equal parameters and tokens",
          "seed 001; TTT paper Table 1", ttt_beats_linear_attention, "language_modelling.png"),
    Claim("C6", "TTT keeps lowering its loss with more context while Mamba flattens (after 16k)",
          "seed 001; TTT paper Fig. 2", ttt_uses_long_context, "loss_by_position.png"),
    Claim("C7", "TTT inner mini-batch: smaller b is better and slower; b = 16 is the knee",
          "seed 001; TTT paper Fig. 7 (arXiv)", ttt_mini_batch, "ttt_ablation.png"),
    Claim("C8", "TTT with the Mamba backbone beats the Transformer backbone", "seed 001; TTT paper Table 1",
          mamba_backbone, "ttt_ablation.png"),
    Claim("C9", "Theorem 1: TTT with a linear inner model, batch GD, η = 1/2, W0 = 0 is linear attention",
          "seed 001; TTT paper Theorem 1", theorem_1),
    Claim("C10", "Attention solves MQAR at every width; fixed-state models need width growing with the pairs",
          "seeds 003, 004; Zoology (Arora et al. 2023) Fig. 2", attention_solves_recall, "recall.png"),
    Claim("C11", "Recurrent models need the question before the context; attention does not care",
          "seed 004 (RWKV-4 paper's prompt study: RTE F1 44.2 → 74.8); Arora et al. 2024 (JRT)", question_first,
          "prompt_order.png"),
    Claim("C12", "KAN trains about 10× slower than an MLP with the same parameters", "seed 000; KAN paper §6",
          kan_slower),
    Claim("C13", "Mamba generates with higher throughput than a Transformer at long context and large batch",
          "seeds 000, 002; Mamba paper §4.5 (5× throughput)", mamba_throughput, "generation.png"),
    Claim("C14a", "The Jamba hybrid beats its pure parents (Mamba, attention) at equal budget",
          "seed 003; Jamba paper", hybrid_beats_parents("jamba"), "language_modelling.png"),
    Claim("C14b", "The Samba hybrid beats its pure parents (Mamba, attention) at equal budget",
          "seed 003; Samba paper", hybrid_beats_parents("samba"), "language_modelling.png"),
)


def judge_all(results: dict) -> list[dict]:
    """One row per claim (as dicts, for results.json and the report)."""
    rows = []
    for claim in CLAIMS:
        try:
            measurement, rule, verdict = claim.judge(results)
        except Missing as why:
            measurement, rule, verdict = str(why), "", NOT_MEASURED
        rows.append(asdict(Judgement(claim.text, claim.id, claim.source, measurement, rule, verdict, claim.figure)))
    return rows
