"""The generalised delta rule op: oracle, WY/UT chunked and step forms agree; DeltaNet and RWKV-7 as cases."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close
from seqmix.ops import delta_rule as dr, head_decay

F64 = torch.float64


def _inputs(B=2, H=3, T=37, Dk=8, Dv=5, decay="channel", dtype=F64):
    """RWKV-7-like inputs: a = -κ̂, b = κ̂ ⊙ α with κ̂ unit per head and α ∈ (0, 1)."""
    q, k = torch.randn(2, B, H, T, Dk, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    kappa = F.normalize(torch.randn(B, H, T, Dk, dtype=dtype), dim=-1)
    alpha = torch.rand(B, H, T, Dk, dtype=dtype)
    log_w = {"none": None, "scalar": -torch.rand(B, H, T, dtype=dtype),
             "channel": -torch.rand(B, H, T, Dk, dtype=dtype) * 0.6}[decay]
    return q, k, v, -kappa, kappa * alpha, log_w


def _rwkv7_definition(q, k, v, a, b, log_w, S):
    """RWKV-7's own layout S [Dv, Dk]: S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_tᵀ + v_t k_tᵀ, o_t = S_t q_t."""
    S = S.transpose(-1, -2)
    outs = []
    for t in range(q.shape[2]):
        w = torch.ones_like(k[:, :, t]) if log_w is None else log_w[:, :, t].exp()
        w = w if w.shape == k[:, :, t].shape else w.unsqueeze(-1).expand_as(k[:, :, t])
        sa = S @ a[:, :, t].unsqueeze(-1)
        S = S * w.unsqueeze(-2) + sa * b[:, :, t].unsqueeze(-2) + v[:, :, t].unsqueeze(-1) * k[:, :, t].unsqueeze(-2)
        outs.append((S @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(outs, 2), S.transpose(-1, -2)


def _steps(q, k, v, a, b, log_w, S, **kw):
    outs = []
    for t in range(q.shape[2]):
        o, S = dr.step(q[:, :, t], k[:, :, t], v[:, :, t], a[:, :, t], b[:, :, t],
                       None if log_w is None else log_w[:, :, t], S, **kw)
        outs.append(o)
    return torch.stack(outs, 2), S


@pytest.mark.parametrize("decay", ["none", "scalar", "channel"])
@pytest.mark.parametrize("T", [1, 15, 37, 100])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_forms_agree_with_rwkv7_definition(decay, T, chunk_size):
    q, k, v, a, b, log_w = _inputs(T=T, decay=decay)
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    expected, S_end = _rwkv7_definition(q, k, v, a, b, log_w, S0)
    for name, (o, S) in {"parallel": dr.parallel(q, k, v, a, b, log_w, S0),
                         "chunked": dr.chunked(q, k, v, a, b, log_w, S0, chunk_size=chunk_size),
                         "step": _steps(q, k, v, a, b, log_w, S0)}.items():
        assert_close(o, expected, what=f"{name} output")
        assert_close(S, S_end, what=f"{name} state")


def test_deltanet_is_a_special_case():
    """S_t = S_{t-1} + β_t k_t (v_t - S_{t-1}ᵀ k_t)ᵀ (Schlag et al. 2021) with a = -k, b = β k, v ← β v."""
    q, k, v, _, _, _ = _inputs(T=29)
    k = F.normalize(k, dim=-1)
    beta = torch.rand(2, 3, 29, 1, dtype=F64)
    S = torch.zeros(2, 3, 8, 5, dtype=F64)
    outs = []
    for t in range(29):
        kt, bt = k[:, :, t], beta[:, :, t]
        S = S + (bt * kt).unsqueeze(-1) * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, kt)).unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t] * 0.5, S))
    o, S_chk = dr.chunked(q, k, beta * v, -k, beta * k, None, scale=0.5, chunk_size=8)
    assert_close(o, torch.stack(outs, 2))
    assert_close(S_chk, S)


def _gated_delta_rule_per_token(q, k, v, beta, alpha, S, decay_first):
    """The gated delta rule written out per token in the [Dk, Dv] layout, o_t = S_tᵀ q_t:
    Gated DeltaNet (decay_first=False): S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ (α_t a scalar per head);
    KDA (decay_first=True):             S_t = (I - β_t k_t k_tᵀ) diag(α_t) S_{t-1} + β_t k_t v_tᵀ (α_t per channel)."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    outs = []
    for t in range(q.shape[2]):
        kt, bt, at = k[:, :, t], beta[:, :, t, :, None], alpha[:, :, t]
        removal = eye - bt * kt.unsqueeze(-1) * kt.unsqueeze(-2)
        if decay_first:
            S = removal @ (at.unsqueeze(-1) * S) + bt * kt.unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        else:
            S = at[..., None, None] * (removal @ S) + bt * kt.unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        outs.append((q[:, :, t].unsqueeze(-2) @ S).squeeze(-2))
    return torch.stack(outs, 2), S


@pytest.mark.parametrize("T, chunk_size", [(29, 8), (64, 16), (1, 16)])
def test_gated_deltanet_mapping(T, chunk_size):
    """Gated DeltaNet is the op with log_w = g, a = -k, b = e^g β k, v ← β v: the decay rides on b because
    a reads the state before it is decayed (b = β k would compute α S - β k kᵀ S, not α (I - β k kᵀ) S)."""
    q, k, v, _, _, _ = _inputs(T=T)
    k = F.normalize(k, dim=-1)
    beta = torch.rand(2, 3, T, 1, dtype=F64)
    g = -torch.rand(2, 3, T, dtype=F64)  # one log decay per head and token
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    expected, S_end = _gated_delta_rule_per_token(q, k, v, beta, g.exp(), S0, decay_first=False)
    args = (q, k, beta * v, -k, g.exp().unsqueeze(-1) * beta * k, g, S0)
    for name, (o, S) in {"parallel": dr.parallel(*args), "chunked": dr.chunked(*args, chunk_size=chunk_size),
                         "step": _steps(*args)}.items():
        assert_close(o, expected, what=f"{name} output")
        assert_close(S, S_end, what=f"{name} state")
    wrong, _ = dr.chunked(q, k, beta * v, -k, beta * k, g, S0, chunk_size=chunk_size)  # the old docstring's mapping
    assert (wrong - expected).abs().max() > 1e-3


def test_kimi_delta_attention_mapping():
    """KDA decays per channel before the delta update: log_w = log α, a = -α ⊙ k, b = β k, v ← β v."""
    q, k, v, _, _, log_alpha = _inputs(T=45, decay="channel")
    k = F.normalize(k, dim=-1)
    beta = torch.rand(2, 3, 45, 1, dtype=F64)
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    expected, S_end = _gated_delta_rule_per_token(q, k, v, beta, log_alpha.exp(), S0, decay_first=True)
    o, S = dr.chunked(q, k, beta * v, -log_alpha.exp() * k, beta * k, log_alpha, S0, chunk_size=16)
    assert_close(o, expected)
    assert_close(S, S_end)


@pytest.mark.parametrize("decay", ["scalar", "channel"])
def test_state_cut_at_unaligned_positions(decay):
    q, k, v, a, b, log_w = _inputs(T=100, decay=decay)
    full, S_full = dr.chunked(q, k, v, a, b, log_w, chunk_size=32)
    S, outs = None, []
    for i, j in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        cut = [x[:, :, i:j] for x in (q, k, v, a, b, log_w)]
        o, S = dr.chunked(*cut, S, chunk_size=32)
        outs.append(o)
    assert_close(torch.cat(outs, 2), full)
    assert_close(S, S_full)


@pytest.mark.parametrize("decay", ["none", "channel"])
def test_chunked_gradcheck(decay):
    q, k, v, a, b, log_w = _inputs(B=1, H=1, T=7, Dk=3, Dv=2, decay=decay)  # two chunks, one padded
    S0 = torch.randn(1, 1, 3, 2, dtype=F64)
    args = [t.requires_grad_() for t in (q, k, v, a, b, S0)] + ([] if log_w is None else [log_w.requires_grad_()])

    def f(q, k, v, a, b, S0, *log_w):
        return dr.chunked(q, k, v, a, b, log_w[0] if log_w else None, S0, scale=0.7, chunk_size=4)

    assert torch.autograd.gradcheck(f, args)


def test_float32_long_sequence_rwkv7_regime():
    """8192 tokens, RWKV-7's decay range (w ∈ (e^{-e^{-0.5}}, 1)) and removal strengths up to 1."""
    q, k, v, a, b, _ = _inputs(B=1, H=1, T=8192, Dk=8, Dv=4, dtype=torch.float32)
    log_w = -torch.rand(1, 1, 8192, 8) * 0.6
    o, S = dr.chunked(q, k, v, a, b, log_w, chunk_size=64)
    ref, S_ref = dr.chunked(*(x.double() for x in (q, k, v, a, b, log_w)), chunk_size=64)
    assert_close(o.double(), ref, atol=1e-4, rtol=1e-4, what="float32 vs float64")
    assert_close(S.double(), S_ref, atol=1e-4, rtol=1e-4, what="float32 state")
    o_stp, _ = _steps(q[:, :, -300:], k[:, :, -300:], v[:, :, -300:], a[:, :, -300:], b[:, :, -300:],
                      log_w[:, :, -300:], dr.chunked(*(x[:, :, :-300] for x in (q, k, v, a, b, log_w)))[1])
    assert_close(o_stp.double(), ref[:, :, -300:], atol=1e-4, rtol=1e-4, what="step after a chunked prefill")


def test_bad_shapes_are_refused():
    q, k, v, a, b, log_w = _inputs(T=5)
    with pytest.raises(ValueError, match="log_w"):
        dr.chunked(q, k, v, a, b, log_w[..., :3])
    with pytest.raises(ValueError, match="do not match"):
        dr.parallel(q, k, v, a[..., :3], b, log_w)


def _gated_inputs(T, decay=True, B=2, H=3, Dk=8, Dv=5):
    q, k, v, _, _, _ = _inputs(B=B, H=H, T=T, Dk=Dk, Dv=Dv)
    k = F.normalize(k, dim=-1)
    beta = torch.rand(B, H, T, dtype=F64)
    log_alpha = -torch.rand(B, H, T, dtype=F64) if decay else None
    return q, k, v, beta, log_alpha


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("T", [1, 15, 37, 100])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_gated_chunked_equals_the_rule_per_token(decay, T, chunk_size, head_decay_path):
    """The specialised chunked form against the gated delta rule written out per token (α = 1: DeltaNet)."""
    q, k, v, beta, log_alpha = _gated_inputs(T, decay)
    S0 = torch.randn(2, 3, 8, 5, dtype=F64)
    alpha = torch.ones(2, 3, T, dtype=F64) if log_alpha is None else log_alpha.exp()
    expected, S_end = _gated_delta_rule_per_token(q * 0.6, k, v, beta[..., None], alpha, S0, decay_first=False)
    for start in (None, S0):
        o, S = dr.gated_chunked(q, k, v, beta, log_alpha, start, scale=0.6, chunk_size=chunk_size)
        if start is None:  # from zero: compare with the general chunked form under the documented mapping
            b = beta[..., None] * k * (1 if log_alpha is None else log_alpha.exp()[..., None])
            ref, S_ref = dr.chunked(q, k, beta[..., None] * v, -k, b, log_alpha, None, 0.6, chunk_size)
        else:
            ref, S_ref = expected, S_end
        assert_close(o, ref, what="gated_chunked output")
        assert_close(S, S_ref, what="gated_chunked state")


def test_gated_chunked_state_cut_at_unaligned_positions(head_decay_path):
    q, k, v, beta, log_alpha = _gated_inputs(100)
    full, S_full = dr.gated_chunked(q, k, v, beta, log_alpha, chunk_size=32)
    S, outs = None, []
    for i, j in [(0, 7), (7, 40), (40, 41), (41, 100)]:
        o, S = dr.gated_chunked(*(x[:, :, i:j] for x in (q, k, v, beta, log_alpha)), S, chunk_size=32)
        outs.append(o)
    assert_close(torch.cat(outs, 2), full)
    assert_close(S, S_full)


def test_gated_chunked_gradcheck():
    q, k, v, beta, log_alpha = _gated_inputs(7, B=1, H=1, Dk=3, Dv=2)  # two chunks, one padded
    S0 = torch.randn(1, 1, 3, 2, dtype=F64)
    args = [t.requires_grad_() for t in (q, k, v, beta, log_alpha, S0)]
    assert torch.autograd.gradcheck(lambda q, k, v, beta, g, S0: dr.gated_chunked(q, k, v, beta, g, S0, 0.7, 4), args)


def test_gated_chunked_float32_long_sequence(head_decay_path):
    q, k, v, beta, log_alpha = (x.float() for x in _gated_inputs(4096, B=1, H=2, Dk=16, Dv=8))
    o, S = dr.gated_chunked(q, k, v, beta, log_alpha * 0.05, chunk_size=64)
    ref, S_ref = dr.gated_chunked(*(x.double() for x in (q, k, v, beta, log_alpha * 0.05)), chunk_size=64)
    assert_close(o.double(), ref, atol=1e-4, rtol=1e-4, what="float32 vs float64")
    assert_close(S.double(), S_ref, atol=1e-4, rtol=1e-4, what="float32 state")


def test_the_kernel_takes_strided_inputs_and_leaves_autograd_to_torch():
    """Inputs laid out as the layer makes them (token-major [B, T, H, D] memory seen as [B, H, T, D], β and log α
    transposed, a key whose last dimension is strided) give the torch path's result; under autograd the torch
    path runs, so gradients flow."""
    if not head_decay.KERNEL.available():
        pytest.skip(f"kernel not built: {head_decay.KERNEL.status['reason']}")
    q, k, v, beta, log_alpha = _gated_inputs(50, H=4)
    q, k = q[:, :2], k[:, :2]
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # last dimension strided
    beta, log_alpha = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (beta, log_alpha))
    S0 = torch.randn(2, 4, 8, 5, dtype=F64)
    with head_decay.allowed(False):
        expected, S_end = dr.gated_chunked(q, k, v, beta, log_alpha, S0, 0.5, 16)
    o, S = dr.gated_chunked(q, k, v, beta, log_alpha, S0, 0.5, 16)
    assert_close(o, expected, atol=1e-12, rtol=1e-12, what="kernel output")
    assert_close(S, S_end, atol=1e-12, rtol=1e-12, what="kernel state")
    assert o.transpose(1, 2).is_contiguous()  # heads merge for free
    same_key = k[:, :, :1].expand(-1, -1, 50, -1)  # rows 0 apart: the kernel copies what the BLAS cannot read
    for x in (same_key, same_key[:, :, :1]):
        with head_decay.allowed(False):
            expected, S_end = dr.gated_chunked(x, x, v[:, :, :x.shape[2]], beta[:, :, :x.shape[2]],
                                               log_alpha[:, :, :x.shape[2]], S0, 0.5, 16)
        o, S = dr.gated_chunked(x, x, v[:, :, :x.shape[2]], beta[:, :, :x.shape[2]], log_alpha[:, :, :x.shape[2]],
                                S0, 0.5, 16)
        assert_close(o, expected, atol=1e-12, rtol=1e-12, what="kernel output, broadcast keys")
        assert_close(S, S_end, atol=1e-12, rtol=1e-12, what="kernel state, broadcast keys")
    o, S = dr.gated_chunked(q, k, v.requires_grad_(), beta, log_alpha, S0, 0.5, 16)
    assert o.grad_fn is not None


@pytest.mark.parametrize("heads", [(1, 2), (2, 4)])  # one job (run inline, BLAS free to thread) or several
def test_the_kernel_does_not_depend_on_the_thread_count(heads):
    if not head_decay.KERNEL.available():
        pytest.skip(f"kernel not built: {head_decay.KERNEL.status['reason']}")
    Hk, H = heads
    q, k, v, beta, log_alpha = (x.float() for x in _gated_inputs(300, B=1, H=H, Dk=64, Dv=64))
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(dr.gated_chunked(q[:, :Hk], k[:, :Hk], v, beta, log_alpha, None, 0.125, 32))
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_a_kernel_that_cannot_be_built_warns_once_and_leaves_the_torch_form(monkeypatch):
    monkeypatch.setattr(head_decay.KERNEL, "status", {})
    monkeypatch.setattr(head_decay.KERNEL, "compiler", lambda: "/nonexistent/c++")
    q, k, v, beta, log_alpha = _gated_inputs(20)
    with head_decay.allowed(False):
        expected = dr.gated_chunked(q, k, v, beta, log_alpha, chunk_size=8)
    with pytest.warns(RuntimeWarning, match="could not be built.*torch operations instead"):
        got = dr.gated_chunked(q, k, v, beta, log_alpha, chunk_size=8)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not retried, no second warning
        assert not head_decay.takes(q, k, v)


def test_gated_chunked_bad_shapes_are_refused():
    q, k, v, beta, log_alpha = _gated_inputs(5)
    with pytest.raises(ValueError, match="do not match"):
        dr.gated_chunked(q, k, v, beta[..., :3], log_alpha)
    with pytest.raises(ValueError, match="log_alpha"):
        dr.gated_chunked(q, k, v, beta, log_alpha[:, :1])


def test_gated_chunked_groups_heads_and_spans(head_decay_path):
    """Query/key heads serving several value heads equal those heads repeated; any span gives the same result."""
    q, k, v, beta, log_alpha = _gated_inputs(45, H=4)
    q, k = q[:, :2], k[:, :2]  # 2 query/key heads, each for 2 consecutive value heads
    expected, S_end = dr.gated_chunked(q.repeat_interleave(2, 1), k.repeat_interleave(2, 1), v, beta, log_alpha,
                                       chunk_size=8)
    for span in (8, 16, 512):
        o, S = dr.gated_chunked(q, k, v, beta, log_alpha, chunk_size=8, span=span)
        assert_close(o, expected, what=f"span {span}")
        assert_close(S, S_end, what=f"span {span} state")
