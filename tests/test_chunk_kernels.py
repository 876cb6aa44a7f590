"""The block kernels behind the fast chunked forms, each against its definition written out in full.

* the GLA core's per-channel intra-chunk scores (recursive halving), plain and grouped (several query and
  key kinds per position), values and gradients;
* the delta rule's unit-lower-triangular solve (recursive-doubling inverse with a hand-written backward);
* the selective scan's reverse scan and hand-written backward at every chunk alignment;
* the chunk-length rule, and float32 at long lengths with the small chunks the mixers now default to.
"""
import pytest
import torch

from helpers import assert_close
from seqmix.ops import delta_rule as dr
from seqmix.ops import gated_linear_attention as gla
from seqmix.ops import selective_scan as ss

F64 = torch.float64


def _decay(*shape, strength=2.0):
    """A non-increasing cumulative log decay along dim -2."""
    return (-torch.rand(*shape, dtype=F64) * strength).cumsum(dim=-2)


def _explicit_scores(q, k, b):
    """A[.., t, s] = Σ_d q_td k_sd exp(b_td - b_sd) for s ≤ t, straight from the definition."""
    C = q.shape[-2]
    diff = b.unsqueeze(-2) - b.unsqueeze(-3)  # [.., t, s, D]
    causal = torch.tril(torch.ones(C, C, dtype=torch.bool))
    return torch.einsum("...td,...tsd,...sd->...ts", q, diff.masked_fill(~causal[..., None], float("-inf")).exp(), k)


@pytest.mark.parametrize("C", [1, 2, 4, 8, 32])
def test_grouped_channel_scores_equal_the_definition(C):
    torch.manual_seed(C)
    q, k = torch.randn(2, 3, C, 2, 5, dtype=F64), torch.randn(2, 3, C, 3, 5, dtype=F64)
    b = _decay(2, 3, C, 5)
    A = gla.grouped_intra_chunk_scores(q, k, b)
    assert A.shape == (2, 3, 2, 3, C, C)
    for i in range(2):
        for j in range(3):
            assert_close(A[:, :, i, j], _explicit_scores(q[..., i, :], k[..., j, :], b), what=f"kind ({i}, {j})")


@pytest.mark.parametrize("decay", ["none", "scalar", "channel"])
def test_plain_scores_equal_the_definition(decay):
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 3, 16, 4, dtype=F64)
    b = {"none": None, "scalar": _decay(2, 3, 16, 1), "channel": _decay(2, 3, 16, 4)}[decay]
    expected = _explicit_scores(q, k, torch.zeros(2, 3, 16, 4, dtype=F64) if b is None else b.expand(2, 3, 16, 4))
    assert_close(gla.intra_chunk_scores(q, k, b), expected)
    grouped = gla.grouped_intra_chunk_scores(q.unsqueeze(-2), k.unsqueeze(-2), b)
    assert_close(grouped[..., 0, 0, :, :], expected, what="grouped form")


def test_channel_scores_gradcheck():
    torch.manual_seed(1)
    q, k = torch.randn(1, 8, 2, 3, dtype=F64), torch.randn(1, 8, 1, 3, dtype=F64)
    b = _decay(1, 8, 3)
    args = [t.requires_grad_() for t in (q, k, b)]
    assert torch.autograd.gradcheck(gla.grouped_intra_chunk_scores, args)


def test_channel_scores_refuse_a_chunk_that_is_not_a_power_of_two():
    q = torch.randn(1, 6, 1, 2)
    with pytest.raises(ValueError, match="power-of-two"):
        gla.grouped_intra_chunk_scores(q, q, torch.zeros(1, 6, 2))


@pytest.mark.parametrize("T, chunk_size, power_of_two, expected", [
    (128, 64, False, 64), (37, 64, False, 37), (0, 64, False, 1), (128, 48, True, 32), (37, 64, True, 64),
    (20, 16, True, 16), (1, 16, True, 1), (5, 16, True, 8)])
def test_chunk_length_rule(T, chunk_size, power_of_two, expected):
    assert gla.chunk_length(T, chunk_size, power_of_two) == expected


def test_chunk_length_refuses_a_non_positive_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        gla.chunk_length(10, 0, True)


@pytest.mark.parametrize("chunk_size", [24, 48])
def test_chunk_sizes_that_are_not_powers_of_two_still_agree(chunk_size):
    """Per-channel GLA and the delta rule round the chunk down to a power of two; results are unchanged."""
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, 2, 53, 4, dtype=F64)
    g = -torch.rand(1, 2, 53, 4, dtype=F64)
    assert_close(gla.chunked(q, k, v, g, chunk_size=chunk_size)[0], gla.parallel(q, k, v, g)[0], what="gla")
    kappa = torch.nn.functional.normalize(torch.randn(1, 2, 53, 4, dtype=F64), dim=-1)
    a, b = -kappa, kappa * torch.rand(1, 2, 53, 4, dtype=F64)
    assert_close(dr.chunked(q, k, v, a, b, g, chunk_size=chunk_size)[0], dr.parallel(q, k, v, a, b, g)[0],
                 what="delta rule")


@pytest.mark.parametrize("C", [1, 2, 8, 32])
def test_unit_lower_solve_equals_the_triangular_solve(C):
    torch.manual_seed(C)
    L = torch.randn(3, C, C, dtype=F64).tril(-1) * 0.5
    R = torch.randn(3, C, 4, dtype=F64)
    expected = torch.linalg.solve_triangular(torch.eye(C, dtype=F64) - L, R, upper=False, unitriangular=True)
    assert_close(dr._UnitLowerSolve.apply(L, R), expected, atol=1e-10)


def test_unit_lower_solve_gradcheck_and_ignores_the_upper_triangle():
    torch.manual_seed(3)
    L = (torch.randn(2, 4, 4, dtype=F64).tril(-1) * 0.5).requires_grad_()
    R = torch.randn(2, 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda L, R: dr._UnitLowerSolve.apply(L.tril(-1), R), (L, R))
    dr._UnitLowerSolve.apply(L, R).sum().backward()
    assert (L.grad.triu() == 0).all()


def test_unit_lower_inverse_equals_the_inverse_and_gradchecks():
    torch.manual_seed(4)
    L = (torch.randn(2, 8, 8, dtype=F64).tril(-1) * 0.5).requires_grad_()
    assert_close(dr._UnitLowerInverse.apply(L), torch.linalg.inv(torch.eye(8, dtype=F64) - L), atol=1e-10)
    assert torch.autograd.gradcheck(lambda L: dr._UnitLowerInverse.apply(L.tril(-1)), (L,))


@pytest.mark.parametrize("T", range(1, 10))
def test_reverse_scan_equals_the_backward_recurrence(T):
    torch.manual_seed(T)
    a, u = torch.rand(2, T, 3, dtype=F64), torch.randn(2, T, 3, dtype=F64)
    expected, acc = torch.empty_like(u), torch.zeros(2, 3, dtype=F64)
    for t in reversed(range(T)):
        acc = a[:, t] * acc + u[:, t]
        expected[:, t] = acc
    work = torch.empty(2, *u.shape, dtype=F64)
    assert_close(ss._scan_reverse(a, u, torch.empty_like(u), work), expected)
    in_place = u.clone()
    ss._scan_reverse(a, in_place, in_place, work)
    assert_close(in_place, expected, what="in place")


@pytest.mark.parametrize("T", [1, 5, 13])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
def test_selective_scan_backward_equals_autograd_of_the_oracle(T, chunk_size):
    torch.manual_seed(T * chunk_size)
    x, B, C = torch.randn(2, T, 3, dtype=F64), torch.randn(2, T, 4, dtype=F64), torch.randn(2, T, 4, dtype=F64)
    dt, A = torch.rand(2, T, 3, dtype=F64) + 0.1, -torch.rand(3, 4, dtype=F64) * 3 - 0.1
    h0 = torch.randn(2, 3, 4, dtype=F64)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C, h0)]
    gy, gh = torch.randn(2, T, 3, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    grads = []
    for form in (ss.parallel, lambda *z: ss.chunked(*z, chunk_size=chunk_size)):
        y, h = form(x, dt, A, B, C, None, h0)
        grads.append(torch.autograd.grad((y * gy).sum() + (h * gh).sum(), inputs))
    for name, g_chunked, g_oracle in zip(("x", "dt", "A", "B", "C", "h0"), *grads):
        assert_close(g_chunked, g_oracle, what=f"d{name}")


def test_float32_long_sequences_at_small_chunks():
    """Strong per-channel decay over 4096 steps in float32 with the mixers' small chunks: finite and equal to
    float64 to float32 precision."""
    torch.manual_seed(4)
    T = 4096
    q, k, v = torch.randn(3, 1, 1, T, 4)
    g = -torch.rand(1, 1, T, 4) * 8
    kappa = torch.nn.functional.normalize(torch.randn(1, 1, T, 4), dim=-1)
    a, b = -kappa, kappa * torch.rand(1, 1, T, 4)
    for chunk_size in (16, 32):
        for name, run in (("gla", lambda *z: gla.chunked(*z[:3], z[5], chunk_size=chunk_size)),
                          ("delta rule", lambda *z: dr.chunked(*z, chunk_size=chunk_size))):
            out, state = run(q, k, v, a, b, g)
            ref, _ = run(*(t.double() for t in (q, k, v, a, b, g)))
            assert torch.isfinite(out).all() and torch.isfinite(state).all(), name
            assert_close(out.double(), ref, atol=1e-4, rtol=1e-4, what=f"{name} chunk {chunk_size}")
