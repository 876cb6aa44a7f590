"""The arena's verdict rules on synthetic results: a clear effect, an effect inside the uncertainty, the
reverse effect, and the scale gates. Also the uncertainty helpers they stand on."""
import math

import pytest

from seqmix.arena import claims
from seqmix.arena.claims import CONTRADICTED, NOT_AT_SCALE, NOT_MEASURED, REPRODUCED, judge_all
from seqmix.arena.stats import Spread, accuracy_spread, order, paired_ratio, wilson


# --- stats ----------------------------------------------------------------------------------------------------

def test_spread_order_and_ratio():
    a, b, c = Spread.of([1.0, 1.1, 1.2]), Spread.of([1.3, 1.4]), Spread.of([1.15, 1.5])
    assert (a.median, a.low, a.high, a.n) == (1.1, 1.0, 1.2, 3)
    assert order(a, b) == -1 and order(b, a) == 1 and order(a, c) == 0
    assert paired_ratio(Spread.of([2.0, 6.0]), Spread.of([1.0, 2.0])).values == (2.0, 3.0)
    with pytest.raises(ValueError, match="repeats"):
        paired_ratio(a, b)
    assert a.fmt() == "1.100 [1.000–1.200]" and Spread.of([2.5]).fmt() == "2.500"
    assert Spread.of([1.0, 1.29]).noisy is False and Spread.of([1.0, 1.31]).noisy is True


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert math.isclose(low, 0.4038, abs_tol=1e-4) and math.isclose(high, 0.5962, abs_tol=1e-4)
    assert math.isclose(wilson(100, 100)[1], 1.0) and wilson(0, 100)[0] == 0.0
    s = accuracy_spread(0.9, 1000)
    assert s.median == 0.9 and s.low < 0.9 < s.high


# --- synthetic results ------------------------------------------------------------------------------------------

def lm_cells(arch, values, drops=None, L=128):
    """One language-model cell per seed with the given validation bpb (and last-octave loss drop)."""
    out = []
    for seed, value in enumerate(values):
        drop = 0.0 if drops is None else drops[seed]
        octaves = [{"start": L // 4, "end": L // 2, "bpb": value + drop}, {"start": L // 2, "end": L, "bpb": value}]
        out.append({"arch": arch, "seed": seed, "val_bpb": value, "train_seconds": 10.0, "octaves_at_L": octaves})
    return out


def speed_cells(arch, prefill, decode, state, linear_time=True):
    """Context cells, one per round: prefill/decode/state are {L: [value per round]} (state: {L: MiB})."""
    rounds = len(next(iter(prefill.values())))
    return [{"kind": "context", "arch": arch, "round": r, "linear_time": linear_time,
             "lengths": [{"L": L, "prefill_us_per_token": prefill[L][r], "decode_us_per_token": decode[L][r],
                          "state_mib": state[L]} for L in prefill]} for r in range(rounds)]


def results(**sections):
    base = {s: [] for s in ("lm", "ttt", "recall", "prompt_order", "kan", "theory", "speed")}
    return {**base, **sections}


def verdict(judge, res):
    return judge(res)[2]


# --- quality claims ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ttt, la, expected", [
    ([3.1, 3.2, 3.15], [4.4, 4.5, 4.6], REPRODUCED),
    ([3.30, 3.41, 3.35], [3.38, 3.45, 3.50], NOT_AT_SCALE),  # a real-looking gap, but inside the seed ranges
    ([4.4, 4.5, 4.6], [3.1, 3.2, 3.15], CONTRADICTED),
])
def test_lower_loss_rule(ttt, la, expected):
    res = results(lm=lm_cells("ttt_linear", ttt) + lm_cells("linear_attention", la))
    assert verdict(claims.ttt_beats_linear_attention, res) == expected


def test_hybrid_needs_to_beat_both_parents():
    parents = lm_cells("mamba", [3.0, 3.01, 3.02]) + lm_cells("attention", [3.6, 3.65, 3.7])
    assert verdict(claims.hybrid_beats_parents("jamba"), results(lm=parents + lm_cells("jamba", [2.9, 2.91, 2.92]))) \
        == REPRODUCED
    assert verdict(claims.hybrid_beats_parents("jamba"), results(lm=parents + lm_cells("jamba", [3.0, 3.05, 3.1]))) \
        == NOT_AT_SCALE  # beats attention, ties Mamba
    assert verdict(claims.hybrid_beats_parents("jamba"), results(lm=parents + lm_cells("jamba", [3.1, 3.11, 3.12]))) \
        == CONTRADICTED


def test_long_context_rule_cannot_contradict_below_16k():
    ttt = lm_cells("ttt_linear", [3.0] * 3, drops=[0.05, 0.06, 0.07])
    mamba_flat = lm_cells("mamba", [3.0] * 3, drops=[0.0, 0.01, 0.02])
    mamba_steep = lm_cells("mamba", [3.0] * 3, drops=[0.2, 0.21, 0.22])
    assert verdict(claims.ttt_uses_long_context, results(lm=ttt + mamba_flat)) == REPRODUCED
    assert verdict(claims.ttt_uses_long_context, results(lm=ttt + mamba_steep)) == NOT_AT_SCALE
    long_ttt = lm_cells("ttt_linear", [3.0] * 3, drops=[0.05, 0.06, 0.07], L=16384)
    long_mamba = lm_cells("mamba", [3.0] * 3, drops=[0.2, 0.21, 0.22], L=16384)
    assert verdict(claims.ttt_uses_long_context, results(lm=long_ttt + long_mamba)) == CONTRADICTED


def ttt_cells(variant_bpb, variant_seconds):
    out = []
    for variant, values in variant_bpb.items():
        backbone, b = variant.split(" b=")
        for seed, value in enumerate(values):
            out.append({"arch": "ttt_linear", "seed": seed, "val_bpb": value, "variant": variant,
                        "backbone": backbone, "b": b, "train_seconds": variant_seconds[variant][seed]})
    return out


def test_mini_batch_rule():
    seconds = {"mamba b=4": [30, 31, 32], "mamba b=16": [20, 21, 22], "mamba b=T": [10, 11, 12],
               "transformer b=16": [10, 10, 10]}
    knee = {"mamba b=4": [3.00, 3.01, 3.02], "mamba b=16": [3.02, 3.03, 3.04], "mamba b=T": [3.30, 3.31, 3.32],
            "transformer b=16": [3.5, 3.5, 3.5]}
    assert verdict(claims.ttt_mini_batch, results(ttt=ttt_cells(knee, seconds))) == REPRODUCED
    no_knee = {**knee, "mamba b=16": [3.25, 3.26, 3.27]}  # most of the gain comes below 16
    assert verdict(claims.ttt_mini_batch, results(ttt=ttt_cells(no_knee, seconds))) == NOT_AT_SCALE
    reversed_ = {**knee, "mamba b=4": [3.4, 3.41, 3.42], "mamba b=T": [3.0, 3.01, 3.02]}
    assert verdict(claims.ttt_mini_batch, results(ttt=ttt_cells(reversed_, seconds))) == CONTRADICTED
    # the Transformer-backbone b = 16 never stands in for the Mamba-backbone one
    only_transformer = {k: v for k, v in knee.items() if k != "mamba b=16"}
    with pytest.raises(claims.Missing, match="b = 16"):
        claims.ttt_mini_batch(results(ttt=ttt_cells(only_transformer, seconds)))
    assert verdict(claims.mamba_backbone, results(ttt=ttt_cells(knee, seconds))) == REPRODUCED


# --- speed claims -----------------------------------------------------------------------------------------------

def test_prefill_and_decode_rules():
    attention = speed_cells("attention", {512: [10, 11, 12], 8192: [50, 60, 55]}, {512: [100, 110, 105],
                            8192: [300, 310, 320]}, {512: 1.0, 8192: 16.0}, linear_time=False)
    gla = speed_cells("gla", {512: [10, 11, 12], 8192: [11, 10, 12]}, {512: [100, 110, 105], 8192: [105, 100, 110]},
                      {512: 0.1, 8192: 0.1})
    res = results(speed=attention + gla)
    assert verdict(claims.prefill_flat, res) == REPRODUCED
    assert verdict(claims.decode_constant, res) == REPRODUCED
    noisy = speed_cells("attention", {512: [10, 11, 12], 8192: [15, 60, 30]}, {512: [1, 1, 1], 8192: [2, 2, 2]},
                        {512: 1.0, 8192: 16.0}, linear_time=False)
    assert verdict(claims.prefill_flat, results(speed=noisy + gla)) == NOT_AT_SCALE  # growth 1.25–5: inside 2
    growing = speed_cells("gla", {512: [10, 10, 10], 8192: [30, 31, 32]}, {512: [1, 1, 1], 8192: [1, 1, 1]},
                          {512: 0.1, 8192: 0.2})
    assert verdict(claims.prefill_flat, results(speed=attention + growing)) == CONTRADICTED
    assert verdict(claims.decode_constant, results(speed=attention + growing)) == CONTRADICTED  # its state grew


def test_ttt_crossover_rule():
    attention = speed_cells("attention", {2048: [10, 10, 10], 8192: [40, 42, 41]}, {2048: [1] * 3, 8192: [1] * 3},
                            {2048: 1.0, 8192: 4.0}, linear_time=False)
    faster = speed_cells("ttt_linear", {2048: [15, 15, 15], 8192: [16, 15, 17]}, {2048: [1] * 3, 8192: [1] * 3},
                         {2048: 0.1, 8192: 0.1})
    slower = speed_cells("ttt_linear", {2048: [15, 15, 15], 8192: [50, 52, 51]}, {2048: [1] * 3, 8192: [1] * 3},
                         {2048: 0.1, 8192: 0.1})
    assert verdict(claims.ttt_faster_from_8k, results(speed=attention + faster)) == REPRODUCED
    assert verdict(claims.ttt_faster_from_8k, results(speed=attention + slower)) == CONTRADICTED
    short = [dict(c, lengths=c["lengths"][:1]) for c in attention + faster]  # no L ≥ 8192 measured
    assert verdict(claims.ttt_faster_from_8k, results(speed=short)) == NOT_AT_SCALE


@pytest.mark.parametrize("primal, expected", [([60, 70, 65], REPRODUCED), ([40, 60, 50], NOT_AT_SCALE),
                                              ([20, 30, 25], CONTRADICTED)])
def test_dual_form_rule(primal, expected):
    cell = {"kind": "ttt_forms", "L": 2048, "d_model": 256,
            "forms": {"dual (chunked)": [10, 10, 10], "primal (materialised)": primal}}
    assert verdict(claims.dual_vs_primal, results(speed=[cell])) == expected


def test_generation_rule():
    def gen(arch, rates):
        return [{"kind": "generation", "arch": arch, "round": r,
                 "batches": [{"batch": 1, "tokens_per_s": 100.0}, {"batch": 16, "tokens_per_s": rate}]}
                for r, rate in enumerate(rates)]

    assert verdict(claims.mamba_throughput, results(speed=gen("mamba", [900, 1000, 950]) +
                                                    gen("attention", [300, 320, 310]))) == REPRODUCED
    assert verdict(claims.mamba_throughput, results(speed=gen("mamba", [300, 600, 350]) +
                                                    gen("attention", [400, 320, 310]))) == NOT_AT_SCALE
    assert verdict(claims.mamba_throughput, results(speed=gen("mamba", [100, 110, 120]) +
                                                    gen("attention", [300, 320, 310]))) == CONTRADICTED


@pytest.mark.parametrize("kan_seconds, expected", [([9, 10, 11], REPRODUCED), ([3, 6, 5], NOT_AT_SCALE),
                                                   ([3, 3.5, 4], CONTRADICTED), ([30, 35, 40], CONTRADICTED)])
def test_kan_rule(kan_seconds, expected):
    cells = [{"seed": s, "params": {"KAN": 100, "MLP": 101}, "KAN": {"train_seconds": t},
              "MLP": {"train_seconds": 1.0}} for s, t in enumerate(kan_seconds)]
    assert verdict(claims.kan_slower, results(kan=cells)) == expected


def test_theorem_1_rule():
    def cell(deviation):
        return {"T": 64, "float64": {"chunked": deviation}, "float32": {"chunked": 1e-7}}

    assert verdict(claims.theorem_1, results(theory=[cell(3e-16)])) == REPRODUCED
    assert verdict(claims.theorem_1, results(theory=[cell(1e-9)])) == NOT_AT_SCALE
    assert verdict(claims.theorem_1, results(theory=[cell(1e-3)])) == CONTRADICTED


# --- recall claims ----------------------------------------------------------------------------------------------

def recall_cells(arch, accuracies, pairs=4, queries=2000):
    return [{"arch": arch, "width": w, "num_kv_pairs": pairs, "accuracy": a, "test_queries": queries}
            for w, a in accuracies.items()]


def test_recall_rule():
    attention = recall_cells("attention", {32: 0.995, 64: 0.998})
    gla = recall_cells("gla", {32: 0.60, 64: 0.97})
    assert verdict(claims.attention_solves_recall, results(recall=attention + gla)) == REPRODUCED
    unsolved = recall_cells("attention", {32: 0.95, 64: 0.998})
    assert verdict(claims.attention_solves_recall, results(recall=unsolved + gla)) == NOT_AT_SCALE
    flat = recall_cells("gla", {32: 0.60, 64: 0.61})  # below attention but not rising with width
    assert verdict(claims.attention_solves_recall, results(recall=attention + flat)) == NOT_AT_SCALE
    beaten = recall_cells("attention", {32: 0.30, 64: 0.998})
    assert verdict(claims.attention_solves_recall, results(recall=beaten + gla)) == CONTRADICTED


def prompt_cells(arch, after, first, queries=2000):
    return [{"arch": arch, "announce": announce, "accuracy": acc, "test_queries": queries}
            for announce, acc in ((False, after), (True, first))]


def test_prompt_order_rule():
    attention = prompt_cells("attention", 0.99, 0.99)
    assert verdict(claims.question_first, results(prompt_order=attention + prompt_cells("gla", 0.36, 0.87))) \
        == REPRODUCED
    assert verdict(claims.question_first, results(prompt_order=attention + prompt_cells("gla", 0.80, 0.81))) \
        == NOT_AT_SCALE  # inside the intervals
    assert verdict(claims.question_first, results(prompt_order=attention + prompt_cells("gla", 0.87, 0.36))) \
        == CONTRADICTED
    # a model that learned neither layout says nothing about the claim, whichever way its noise goes
    assert verdict(claims.question_first, results(prompt_order=attention + prompt_cells("gla", 0.14, 0.09))) \
        == NOT_AT_SCALE


def test_missing_sections_are_not_measured():
    rows = judge_all(results(meta={}))
    assert len(rows) == len(claims.CLAIMS) and {r["verdict"] for r in rows} == {NOT_MEASURED}
    assert all(r["measurement"] for r in rows)  # each says what is missing


def test_two_runs_agree_when_each_median_is_inside_the_other_range(capsys, tmp_path):
    import json

    from seqmix.arena import repeat
    state = {512: 0.1, 8192: 0.1}
    a = results(speed=speed_cells("gla", {512: [10, 11, 12], 8192: [10, 12, 14]}, {512: [5, 6, 7], 8192: [5, 6, 7]},
                                  state))
    b = results(speed=speed_cells("gla", {512: [10.5, 11, 11.5], 8192: [13, 15, 16]},
                                  {512: [5, 6, 7], 8192: [5, 6, 7]}, state))
    for res, primal in ((a, [0.10, 0.11, 0.12]), (b, [0.13, 0.14, 0.15])):
        res["speed"].append({"kind": "ttt_forms", "L": 64, "d_model": 8, "n_heads": 1,
                             "forms": {"dual (chunked)": [0.02, 0.02, 0.03], "primal (materialised)": primal}})
    total, outside = repeat.compare(a, b)
    assert total == 6
    # b's median 15 lies above a's range 10–14; TTT's primal 0.14 above a's 0.10–0.12
    assert [d.figure for d in outside] == ["gla prefill L=8192", "TTT-Linear primal (materialised) L=64"]
    paths = []
    for name, res in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(res))
    assert repeat.main([str(p) for p in paths]) == 0
    assert capsys.readouterr().out.startswith("4/6 speed figures agree")


def test_machine_drift_widens_absolute_figures_by_how_far_the_machine_strayed():
    from seqmix.arena.stats import MachineDrift
    drift = MachineDrift.of({"matmul_gflops": [90, 100, 100, 110], "bandwidth_gbs": [21, 20, 20]})
    assert drift.faster == pytest.approx(100 / 110) and drift.slower == pytest.approx(100 / 90)  # bandwidth strayed less: 20 / 21, 20 / 20
    times = Spread.of([10, 11, 12])
    assert drift.interval(times) == pytest.approx((10 * 100 / 110, 12 * 100 / 90))
    rates = Spread.of([100, 110])  # tokens/s shrink when the machine slows
    assert drift.interval(rates, rate=True) == pytest.approx((100 * 90 / 100, 110 * 110 / 100))
    assert drift.covers(times, 13.0) and not drift.covers(times, 13.5)
    assert MachineDrift().interval(times) == (10, 12)  # no references: the range over rounds
