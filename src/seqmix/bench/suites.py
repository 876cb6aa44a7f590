"""Benchmark suites for `seqmix bench`: one mixer layer at a time, float32, batch 1, no autograd.

* forward: time per token of the parallel/chunked path vs sequence length L (prefill/training shape);
* decode: latency of one recurrent step after a context of C tokens (KV cache vs fixed-size state);
* generate: a whole model decoding through ``sample``, eager and compiled, against its memory floor;
* ttt_forms: TTT's inner loop at one length in its dual form (chunked, training/prefill) against the primal
  form, materialised per mini-batch (the paper's §2.4 primal) and token by token (the decoding step).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import statistics
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from seqmix.bench.harness import Roofline, synchronised, time_block, time_interleaved
from seqmix.layers import Linear, few_rows
from seqmix.layers.inference import packed_decode_weights
from seqmix.layers.low_precision import low_precision_weights
from seqmix.mixers import MIXERS
from seqmix.model import ModelConfig, SeqMixLM
from seqmix.model.generate import sample
from seqmix.model.state import map_state
from seqmix.ops import ttt


def build_mixer(name: str, d_model: int, n_heads: int, options: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return MIXERS.build(name, d_model, n_heads, options=options or {}).float().eval()


def count_flops(mixer: torch.nn.Module, x: torch.Tensor) -> float:
    """Matmul FLOPs of one forward. FlopCounterMode misses SDPA on CPU, so causal attention's
    2·(T²/2)·D·2 per head is added analytically for the attention mixer."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        mixer(x)
    flops = counter.get_total_flops()
    if getattr(mixer, "registered_name", "") == "attention":
        T = x.shape[1]
        visible = T * (T + 1) / 2 if mixer.window is None else T * min(T, mixer.window)
        flops += 4 * x.shape[0] * mixer.n_heads * visible * mixer.head_dim
    return float(flops)


def state_bytes(state) -> int:
    total = 0

    def add(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    map_state(add, state)
    return total


def forward_suite(mixers: list[str], lengths: list[int], d_model: int, n_heads: int, roof: Roofline,
                  options: dict, rounds: int, min_time: float, progress=None) -> list[dict]:
    rows = []
    built = {m: build_mixer(m, d_model, n_heads, options.get(m)) for m in mixers}
    for L in lengths:
        x = torch.randn(1, L, d_model)
        cands = {}
        for m, mixer in built.items():
            cands[m] = (lambda mixer=mixer: mixer(x))
        with torch.no_grad():
            timings = time_interleaved(cands, rounds=rounds, min_time=min_time)
        for m, t in timings.items():
            flops = count_flops(built[m], x)
            rows.append({"suite": "forward", "mixer": m, "L": L, "seconds": t.median, "iqr": t.spread,
                         "us_per_token": 1e6 * t.median / L, "gflops": flops / t.median / 1e9,
                         "roof_fraction": roof.compute_fraction(flops, t.median), "other_cpu": t.other_cpu_share})
            if progress:
                progress(rows[-1])
    return rows


def decode_suite(mixers: list[str], contexts: list[int], d_model: int, n_heads: int, roof: Roofline,
                 options: dict, rounds: int, min_time: float, progress=None) -> list[dict]:
    rows = []
    built = {m: build_mixer(m, d_model, n_heads, options.get(m)) for m in mixers}
    for C in contexts:
        token = torch.randn(1, 1, d_model)
        cands, states = {}, {}
        with torch.no_grad():
            for m, mixer in built.items():
                _, states[m] = mixer(torch.randn(1, C, d_model), state=mixer.init_state(1))
                cands[m] = (lambda mixer=mixer, s=states[m]: mixer(token, state=s))
            timings = time_interleaved(cands, rounds=rounds, min_time=min_time)
        for m, t in timings.items():
            params = sum(p.numel() * p.element_size() for p in built[m].parameters())
            nbytes = params + state_bytes(states[m])
            rows.append({"suite": "decode", "mixer": m, "context": C, "seconds": t.median, "iqr": t.spread,
                         "us_per_token": 1e6 * t.median, "state_bytes": state_bytes(states[m]),
                         "bandwidth_fraction": roof.bandwidth_fraction(nbytes, t.median),
                         "other_cpu": t.other_cpu_share})
            if progress:
                progress(rows[-1])
    return rows


def ttt_forms_suite(mixer_name: str, L: int, d_model: int, n_heads: int, options: dict, rounds: int,
                    min_time: float, progress=None) -> list[dict]:
    """The inner loop of one TTT mixer (its W0, ε, LN) on random q, k, v, η of length L, batch 1:
    ``chunked`` (dual), ``parallel`` (primal, per-token gradients materialised) and a loop of ``step``
    (primal, one token at a time). The three outputs are checked to agree before anything is timed."""
    mixer = build_mixer(mixer_name, d_model, n_heads, options)
    H, d, b = mixer.n_heads, mixer.head_dim, mixer.mini_batch_size
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, L, d, generator=gen) / d ** 0.5 for _ in range(3))
    eta = (mixer.base_lr / d) * torch.sigmoid(torch.randn(1, H, L, generator=gen))
    tau = torch.relu(1 / torch.arange(1, b + 1) + mixer.token_idx_offset.detach())
    inner = (tau, tuple(W.detach() for W in mixer._weights()), mixer.ttt_norm_weight.detach(),
             mixer.ttt_norm_bias.detach())

    def step_loop():
        state, outs = None, []
        for t in range(L):
            out, state = ttt.step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], *inner, state=state,
                                  mini_batch_size=b)
            outs.append(out)
        return torch.stack(outs, dim=2)

    forms = {"dual (chunked)": lambda: ttt.chunked(q, k, v, eta, *inner, mini_batch_size=b)[0],
             "primal (materialised)": lambda: ttt.parallel(q, k, v, eta, *inner, mini_batch_size=b)[0],
             "primal (step loop)": step_loop}
    with torch.no_grad():
        ref = forms["dual (chunked)"]()
        for name, fn in forms.items():
            err = (fn() - ref).abs().max().item()
            if err > 1e-3:
                raise RuntimeError(f"ttt_forms: {name} differs from the dual form by {err:.2e}")
        timings = time_interleaved(forms, rounds=rounds, min_time=min_time)
    dual = timings["dual (chunked)"].median
    rows = []
    for name, t in timings.items():
        rows.append({"suite": "ttt_forms", "mixer": mixer_name, "form": name, "L": L, "seconds": t.median,
                     "iqr": t.spread, "us_per_token": 1e6 * t.median / L, "vs_dual": t.median / dual,
                     "round_seconds": list(t.samples),
                     "other_cpu": t.other_cpu_share})
        if progress:
            progress(rows[-1])
    return rows


def _decode_products(linears: list[Linear], batch: int, device: str, compiled: bool):
    """The matrix products of one decode step and nothing else, as the step runs them: with ``compiled`` on CPU
    the few-row kernel where it takes the product (``seqmix.layers.few_rows``) over the packed decode weights
    (``packed_decode_weights``), otherwise torch's product over the cached transposed weight."""
    on_cpu = compiled and device == "cpu"
    weights = packed_decode_weights(linears) if on_cpu else [m.inference_weight().t() for m in linears]
    rows = [torch.randn(batch, w.shape[1], device=device) for w in weights]
    with few_rows.in_use() if on_cpu else contextlib.nullcontext():
        kernel = [few_rows.usable(x, w) for x, w in zip(rows, weights)]
    return lambda: [few_rows.linear(x, w) if k else x @ w.t() for x, w, k in zip(rows, weights, kernel)]


def model_generate_suite(mixers: list[str], sizes: list[tuple[int, int]], batches: list[int], new_tokens: int,
                         read_gbs: float, rounds: int, compile: bool, progress=None,
                         weight_dtypes: Sequence[str] = (), device: str = "cpu") -> list[dict]:
    """Whole-model decoding through ``sample`` (greedy, after a 16-token prompt), byte vocabulary, float32:
    time per step by batch size, eager and (with ``compile``) compiled, in interleaved rounds, against the
    memory floor: (parameter + state bytes) / ``read_gbs``, the time to read every weight and the state once,
    and against the model's matrix products alone as the step runs them (``products_us``, the fastest of 5, see
    ``_decode_products``: the part of a step no fusion of the other ops removes). ``weight_dtypes``
    ("bfloat16", "int8") add eager variants with the linear layers' weights in that precision
    (``seqmix.layers.low_precision``), each against its own floor. ``device``: where the models run (on CUDA
    the compiled variant of a fixed-size state replays one CUDA graph, see ``sample``)."""
    rows = []
    variants = (["eager", "compiled"] if compile else ["eager"]) + list(weight_dtypes)
    for mixer in mixers:
        for d_model, n_layers in sizes:
            torch.manual_seed(0)
            model = SeqMixLM(ModelConfig(mixer=mixer, vocab_size=256, d_model=d_model, n_layers=n_layers,
                                         n_heads=max(1, d_model // 64))).float().eval().to(device)
            models = {v: model for v in variants}
            models.update({d: low_precision_weights(copy.deepcopy(model), d) for d in weight_dtypes})
            weight_bytes = {v: sum(t.numel() * t.element_size() for t in itertools.chain(m.parameters(), m.buffers()))
                            for v, m in models.items()}
            linears = [m for m in model.modules() if isinstance(m, Linear)]
            for batch in batches:
                products = min(time_block(synchronised(_decode_products(linears, batch, device, compile), device),
                                          0.0) for _ in range(5))
                prompt = torch.randint(0, 256, (batch, 16), generator=torch.Generator().manual_seed(0)).to(device)
                state = state_bytes(model.init_state(batch))
                seconds = {v: [] for v in variants}
                compile_seconds = None
                for r in range(rounds + 1):  # round 0 warms up (and compiles)
                    for v in variants:
                        t: dict = {}
                        sample(models[v], prompt, new_tokens, temperature=0, timings=t, compile=v == "compiled")
                        if r == 0:
                            compile_seconds = t.get("compile_seconds", compile_seconds)
                        else:
                            seconds[v].append(t["decode_seconds"] / new_tokens)
                for v in variants:
                    row = {"suite": "generate", "mixer": mixer, "d_model": d_model, "n_layers": n_layers,
                           "batch": batch, "variant": v, "param_bytes": weight_bytes[v],
                           "floor_us": (weight_bytes[v] + state) / (read_gbs * 1e9) * 1e6,
                           "products_us": products * 1e6,
                           "round_us": [s * 1e6 for s in seconds[v]],
                           "us_per_token": statistics.median(seconds[v]) * 1e6,
                           "compile_seconds": compile_seconds if v == "compiled" else None}
                    rows.append(row)
                    if progress:
                        progress(row)
    return rows
