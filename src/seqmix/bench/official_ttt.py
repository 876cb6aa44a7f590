"""seqmix's TTT models against the official ttt-lm-pytorch ``TTTForCausalLM``: same weights, same input.

``seqmix bench --suite ttt --ttt-official PATH``: PATH is a checkout of
github.com/test-time-training/ttt-lm-pytorch. Its ``ttt.py`` is imported from there (never copied into
seqmix) and needs the transformers version it was written for (4.44; 5.x cannot build it). For TTT-Linear
and TTT-MLP with the paper's Mamba backbone, the official model is built with random weights, converted
with `seqmix.interop.from_ttt_reference`, and both are checked to give the same logits before anything is
timed. Timed, interleaved, without autograd: the whole model (embeddings, 2 blocks with SwiGLU FFNs, head)
and one block's sequence-mixing half (RMSNorm, causal conv, RMSNorm, TTT layer).
"""
from __future__ import annotations

import contextlib
import importlib.util
import types
from pathlib import Path

import torch

from seqmix.bench.harness import time_interleaved
from seqmix.interop import from_ttt_reference

LAYER_TYPES = {"ttt_linear": ("linear", 1.0), "ttt_mlp": ("mlp", 0.1)}  # official ttt_layer_type, the paper's η_base


def load_official(path: Path):
    """The official ``ttt`` module from a checkout of ttt-lm-pytorch, with a clear error when it cannot be."""
    source = Path(path) / "ttt.py"
    if not source.is_file():
        raise FileNotFoundError(f"--ttt-official {path}: no ttt.py there; pass a checkout of "
                                "github.com/test-time-training/ttt-lm-pytorch")
    spec = importlib.util.spec_from_file_location("ttt_official", source)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # an import error from transformers, most often
        raise ImportError(f"--ttt-official: importing {source} failed ({type(exc).__name__}: {exc}); the official "
                           "code needs transformers 4.44 — run this in an environment that has it") from exc
    return module


@contextlib.contextmanager
def inner_loop_skipped():
    """Within: the TTT mixers' dual form returns its queries unchanged (a zero-cost inner loop; wrong
    outputs, right shapes). For timing the rest of a model only."""
    from seqmix.mixers import ttt as mixers_ttt

    real = mixers_ttt.op
    mixers_ttt.op = types.SimpleNamespace(chunked=lambda q, *args, **kwargs: (q, None), step=real.step)
    try:
        yield
    finally:
        mixers_ttt.op = real


def _skipping(fn):
    def run():
        with inner_loop_skipped():
            return fn()
    return run


def _mixing_half(block, x, positions):
    """One official block's sequence-mixing half, as our mixer holds it: c = conv(RMSNorm x) (the conv module
    holds its norm), y = c + TTT(RMSNorm(x + c))."""
    c = block.conv(x)
    return c + block.seq_modeling_block(hidden_states=block.seq_norm(x + c), position_ids=positions)


def official_ttt_suite(official, L: int, d_model: int, n_heads: int, rounds: int, min_time: float,
                       progress=None) -> list[dict]:
    """Rows {"what", "mixer", "official_ms", "seqmix_ms", "speedup"} for the whole model and one layer (the
    model's also "seqmix_without_inner_loop_ms" and "speedup_bound"); `official`: what `load_official` returns."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (1, L), generator=gen)
    x = torch.randn(1, L, d_model, generator=gen)
    positions = torch.arange(L)[None]
    rows = []
    for mixer, (layer_type, base_lr) in LAYER_TYPES.items():
        config = official.TTTConfig(
            vocab_size=256, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=2,
            num_attention_heads=n_heads, max_position_embeddings=L, pre_conv=True, share_qk=True, use_gate=True,
            ttt_layer_type=layer_type, ttt_base_lr=base_lr, mini_batch_size=16, tie_word_embeddings=True,
            use_cache=False)
        torch.manual_seed(0)
        theirs = official.TTTForCausalLM(config).eval()
        ours = from_ttt_reference(theirs.state_dict(), config.to_dict())
        block, mine = theirs.model.layers[0], ours.blocks[0].mixer
        candidates = {
            ("model", "official"): lambda: theirs(input_ids=tokens).logits,
            ("model", "seqmix"): lambda: ours(tokens),
            ("layer", "official"): lambda: _mixing_half(block, x, positions),
            ("layer", "seqmix"): lambda: mine(x)[0],
        }
        with torch.no_grad():
            for what in ("model", "layer"):
                want, got = candidates[what, "official"](), candidates[what, "seqmix"]()
                err = ((got - want).abs().max() / want.abs().max()).item()
                if err > 1e-4:
                    raise RuntimeError(f"{mixer} {what}: seqmix and the official model differ by {err:.1e} "
                                       "(relative); nothing was timed")
            candidates["model", "seqmix, inner loop skipped"] = _skipping(candidates["model", "seqmix"])
            timings = time_interleaved({f"{w} {s}": f for (w, s), f in candidates.items()}, rounds, min_time)
        bound = timings["model seqmix, inner loop skipped"].median
        for what in ("model", "layer"):
            theirs_s, ours_s = timings[f"{what} official"].median, timings[f"{what} seqmix"].median
            rows.append({"suite": "ttt_official", "mixer": mixer, "what": what, "L": L,
                         "official_ms": 1e3 * theirs_s, "seqmix_ms": 1e3 * ours_s, "speedup": theirs_s / ours_s,
                         "other_cpu": timings[f"{what} seqmix"].other_cpu_share,
                         **({"seqmix_without_inner_loop_ms": 1e3 * bound, "speedup_bound": theirs_s / bound}
                            if what == "model" else {})})
            if progress:
                progress(rows[-1])
    return rows
