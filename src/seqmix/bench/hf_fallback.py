"""The gated delta rule (Gated DeltaNet, Qwen3-Next's linear layers) against transformers' own CPU path,
``torch_chunk_gated_delta_rule`` of its Qwen3-Next model, on the same inputs: outputs and final states are
checked equal first, then both are timed in interleaved rounds (one op call over the whole sequence)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from seqmix.bench.harness import time_interleaved
from seqmix.ops import delta_rule


def transformers_gated_delta_rule():
    """transformers' chunked torch fallback, or an ImportError saying what to install."""
    try:
        from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    except ImportError as error:
        raise ImportError("the gated delta rule comparison needs transformers with Qwen3-Next (pip install "
                          f"'seqmix[hf]'): {error}") from None
    return torch_chunk_gated_delta_rule


def seqmix_gated_delta_rule(q, k, v, g, beta, chunk_size: int):
    """q, k [B, T, H, Dk] (L2-normalised), v [B, T, H, Dv], g (log decay), beta [B, T, H], in transformers'
    layout -> (o [B, T, H, Dv], final state [B, H, Dk, Dv]) through ``ops.delta_rule.gated_chunked``."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    o, state = delta_rule.gated_chunked(q, k, v, beta.transpose(1, 2), g.transpose(1, 2), None,
                                        q.shape[-1] ** -0.5, chunk_size)
    return o.transpose(1, 2), state


def gated_delta_suite(lengths: list[int], heads: int, head_dim: int, rounds: int, min_time: float,
                      chunk_size: int = 64, progress=None) -> list[dict]:
    reference = transformers_gated_delta_rule()
    rows = []
    for L in lengths:
        gen = torch.Generator().manual_seed(L)
        q, k = (F.normalize(torch.randn(1, L, heads, head_dim, generator=gen), dim=-1) for _ in range(2))
        v = torch.randn(1, L, heads, head_dim, generator=gen)
        g = -F.softplus(torch.randn(1, L, heads, generator=gen)) * 0.1
        beta = torch.rand(1, L, heads, generator=gen)
        with torch.no_grad():
            o_ref, s_ref = reference(q, k, v, g, beta, chunk_size=64, output_final_state=True)
            o, s = seqmix_gated_delta_rule(q, k, v, g, beta, chunk_size)
            error = max(((o - o_ref).abs().max() / o_ref.abs().max()).item(),
                        ((s - s_ref).abs().max() / s_ref.abs().max()).item())
            if not error <= 1e-4:
                raise RuntimeError(f"gated delta rule at L={L}: seqmix and transformers differ by {error:.2e}")
            timings = time_interleaved(
                {"transformers": lambda: reference(q, k, v, g, beta, chunk_size=64, output_final_state=True),
                 "seqmix": lambda: seqmix_gated_delta_rule(q, k, v, g, beta, chunk_size)},
                rounds=rounds, min_time=min_time)
        row = {"suite": "gated_delta", "L": L, "heads": heads, "head_dim": head_dim, "relative_error": error,
               "transformers_ms": timings["transformers"].median * 1e3, "seqmix_ms": timings["seqmix"].median * 1e3,
               "transformers_round_ms": [t * 1e3 for t in timings["transformers"].samples],
               "seqmix_round_ms": [t * 1e3 for t in timings["seqmix"].samples]}
        row["speedup"] = row["transformers_ms"] / row["seqmix_ms"]
        rows.append(row)
        if progress:
            progress(row)
    return rows
