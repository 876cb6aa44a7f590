"""Shared test helpers: the model-level any-split invariant and exact-agreement checks."""
from __future__ import annotations

import math

import torch

from seqmix import ModelConfig, SeqMixLM

F64_TOL = 1e-9


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = F64_TOL, rtol: float = 0.0, what: str = ""):
    """Fail with the largest deviation when |actual - expected| > atol + rtol·|expected| anywhere."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert (err <= bound).all(), f"{what}: max abs error {err.max().item():.3e} exceeds tolerance"


def state_tensors(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in state_tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in state_tensors(v)]
    return []


SPLITS = ([1] * 9, [3, 1, 17, 2, 1, 6], [5, 32], [37])


def assert_any_split(config: ModelConfig, length: int = 37, batch: int = 2, splits=SPLITS, seed: int = 0):
    """Feeding a sequence in any split through the state equals the one-shot forward (float64, ≤ 1e-9).

    Each entry of `splits` lists piece lengths; the last piece takes whatever remains.
    """
    torch.manual_seed(seed)
    model = SeqMixLM(config).double().eval()
    tokens = torch.randint(0, config.vocab_size, (batch, length))
    with torch.no_grad():
        reference = model(tokens)
        for pieces in splits:
            state = model.init_state(batch)
            outs, pos = [], 0
            for n in pieces:
                if pos >= length:
                    break
                logits, state = model(tokens[:, pos:pos + n], state=state)
                outs.append(logits)
                pos += n
            if pos < length:
                logits, state = model(tokens[:, pos:], state=state)
                outs.append(logits)
            assert_close(torch.cat(outs, dim=1), reference, what=f"{config.mixer or config.pattern} split {pieces}")
            for t in state_tensors(state):
                assert t.shape[0] == batch, "every state tensor must be batch-first"
    return model


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, what: str = "") -> float:
    """Fail unless max|actual − expected| ≤ rtol · max|expected| (agreement relative to the tensor's scale,
    the float32 criterion for conversions); returns that relative error."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    rel = ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
    assert rel <= rtol, f"{what}: relative error {rel:.3e} exceeds {rtol:.0e}"
    return rel


def randomise(model: torch.nn.Module, seed: int, norm_offset: float = 1.0, gain: float = 1.0) -> None:
    """Every parameter O(1) and away from its initial value, so no term of the forward is trivial. Norm scales
    become norm_offset + 0.2 · N(0, 1): 0 for models whose norms multiply by (1 + weight) (Qwen3-Next).
    Matrices are gain · N(0, 1/fan_in) (embeddings: gain 1). With gain 1 some deep gated hybrids are chaotic in
    float32: random Zamba-2 models amplify rounding ~1000× (their float32 forward lies 1e-5–4e-4 from their
    float64 one, transformers' and seqmix's alike), so no float32 comparison could hold them to 1e-5; gain 0.7
    keeps every term non-trivial and the float32 function within a few 1e-6 of the exact one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() == 0:
                continue
            r = torch.randn(p.shape, generator=g)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(0.5 + 0.5 * r.clamp(-2, 2))
            elif leaf.startswith("time_mix"):
                p.copy_(torch.rand(p.shape, generator=g))
            elif p.dim() >= 2:  # linear, conv and embedding weights
                p.copy_(r * ((1.0 if "embed" in name else gain) / math.sqrt(p.shape[-1])))
            elif leaf == "weight":  # norm scales
                p.copy_(norm_offset + 0.2 * r)
            else:  # biases, D, dt_bias, time_decay, time_first
                p.copy_(0.3 * r)


def assert_mixer_matches(mixer, x: torch.Tensor, expected: torch.Tensor,
                         pieces=((0, 5), (5, 6), (6, 13), (13, 19))) -> None:
    """A mixer's output equals `expected` one shot and through its state in uneven pieces (down to one token)."""
    assert_close(mixer(x)[0], expected, what="one shot")
    state, outs = mixer.init_state(x.shape[0]), []
    for lo, hi in pieces:
        y, state = mixer(x[:, lo:hi], state)
        outs.append(y)
    assert_close(torch.cat(outs, 1), expected, what="through the state")
