"""TTT-Linear / TTT-MLP: the three forms of ops.ttt against a per-token autograd reference, the special cases
of the paper (online GD, Theorem 1), gradients, checkpointing through time, and the mixers."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.ops import linear_attention
from seqmix.ops import ttt

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run thousands of tiny ops; on the shared 2-core machine two OpenMP threads spend far longer
    waiting at barriers than computing (measured 20 s vs 0.3 s for the 4096-token case)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B=2, H=3, T=21, d=4, b=8, hidden=0, dtype=F64, seed=0, lr=0.5):
    """Random op inputs with no term trivially zero: ε (in τ), γ, β and the bias rows of W0 all random."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)

    q, k, v = rand(B, H, T, d), rand(B, H, T, d), rand(B, H, T, d)
    eta = (torch.rand(B, H, T, generator=g, dtype=F64) * lr).to(dtype)
    tau = (1 / torch.arange(1, b + 1, dtype=F64) + rand(b, scale=0.2).to(F64)).clamp_min(0).to(dtype)
    widths = [d, hidden, d] if hidden else [d, d]
    weights = tuple(rand(H, i + 1, o, scale=0.5) for i, o in zip(widths, widths[1:]))
    ln_weight, ln_bias = 1 + rand(H, d, scale=0.3), rand(H, d, scale=0.3)
    return q, k, v, eta, tau, weights, ln_weight, ln_bias


def reference(q, k, v, eta, tau, weights, ln_weight, ln_bias, b):
    """The paper's equations token by token, with explicit W_t and autograd gradients.

    W_t = W_anchor − τ_i Σ_{j ≤ i} η_j ∇ℓ_j(W_anchor) (i, j positions in the mini-batch), z_t = f(q_t; W_t),
    f(z) = z + LN(f_res(z)), ℓ_j = ½‖LN(f_res(k_j)) − (v_j − k_j)‖². Returns outputs, final anchors and sums.
    """
    B, H, T, d = q.shape
    gamma, beta = ln_weight[None], ln_bias[None]  # [1, H, d]
    anchor = [W.expand(B, *W.shape).clone() for W in weights]  # [B, H, d_in + 1, d_out]; bias = last row

    def f_res(x, Ws):  # x [B, H, d]
        for n, W in enumerate(Ws):
            x = torch.einsum("bhi,bhio->bho", x, W[:, :, :-1]) + W[:, :, -1]
            if n + 1 < len(Ws):
                x = F.gelu(x, approximate="tanh")
        return x

    def LN(y):
        return F.layer_norm(y, (d,), eps=1e-6) * gamma + beta

    outs = []
    running = [torch.zeros_like(W) for W in anchor]
    for t in range(T):
        i = t % b
        params = [W.detach().requires_grad_() for W in anchor]
        loss = 0.5 * (LN(f_res(k[:, :, t], params)) - (v[:, :, t] - k[:, :, t])).pow(2).sum()
        grads = torch.autograd.grad(loss, params)  # per (batch, head) copy: the sum separates
        running = [S + eta[:, :, t, None, None] * g for S, g in zip(running, grads)]
        W_t = [W - tau[i] * S for W, S in zip(anchor, running)]
        outs.append(q[:, :, t] + LN(f_res(q[:, :, t], W_t)))
        if i == b - 1:
            anchor, running = W_t, [torch.zeros_like(S) for S in running]
    return torch.stack(outs, dim=2), anchor, running


def run_split(form, pieces, q, k, v, eta, *args, **kwargs):
    """Run an op form over consecutive pieces of the sequence, carrying the state."""
    state, outs, pos = None, [], 0
    for n in pieces:
        sl = slice(pos, pos + n)
        out, state = form(q[:, :, sl], k[:, :, sl], v[:, :, sl], eta[:, :, sl], *args, state=state, **kwargs)
        outs.append(out)
        pos += n
    return torch.cat(outs, dim=2), state


def run_steps(q, k, v, eta, *args, state=None, **kwargs):
    outs = []
    for t in range(q.shape[2]):
        out, state = ttt.step(q[:, :, t], k[:, :, t], v[:, :, t], eta[:, :, t], *args, state=state, **kwargs)
        outs.append(out)
    return torch.stack(outs, dim=2), state


def test_ln_l2_bwd_matches_autograd():
    torch.manual_seed(1)
    z, target = torch.randn(3, 5, 7, dtype=F64, requires_grad=True), torch.randn(3, 5, 7, dtype=F64)
    gamma, beta = 1 + 0.5 * torch.randn(7, dtype=F64), torch.randn(7, dtype=F64)
    loss = 0.5 * (F.layer_norm(z, (7,), eps=1e-6) * gamma + beta - target).pow(2).sum()
    (expected,) = torch.autograd.grad(loss, z)
    assert_close(ttt.ln_l2_bwd(z.detach(), target, gamma, beta), expected, atol=1e-12)


def test_gelu_tanh_grad_matches_autograd():
    x = torch.linspace(-6, 6, 1001, dtype=F64, requires_grad=True)
    (expected,) = torch.autograd.grad(F.gelu(x, approximate="tanh").sum(), x)
    assert_close(ttt.gelu_tanh_grad(x.detach()), expected, atol=1e-12)


def test_fused_kernels_equal_the_closed_forms():
    """The dual and step forms take the loss gradient and GELU′ from ATen's layer-norm and GELU backward
    kernels; the parallel form (the oracle) from the closed forms tested above. Both must agree."""
    torch.manual_seed(2)
    z, c = torch.randn(3, 5, 7, dtype=F64), torch.randn(3, 5, 7, dtype=F64)
    weight_sq = (1 + 0.5 * torch.randn(3, 1, 7, dtype=F64)) ** 2
    assert_close(ttt._ln_l2_grad_fused(z, c, weight_sq), ttt._ln_l2_bwd_folded(z, c, weight_sq), atol=1e-12)
    x, upstream = torch.linspace(-6, 6, 1001, dtype=F64), torch.randn(1001, dtype=F64)
    assert_close(torch.ops.aten.gelu_backward(upstream, x, approximate="tanh"), upstream * ttt.gelu_tanh_grad(x),
                 atol=1e-12)


@pytest.mark.parametrize("hidden", [0, 16], ids=["linear", "mlp"])
@pytest.mark.parametrize("T", [24, 21, 1], ids=["T=3b", "T=21", "T=1"])
def test_dual_primal_parallel_equal_per_token_reference(hidden, T):
    b = 8
    x = make_inputs(T=T, b=b, hidden=hidden)
    expected, anchor, running = reference(*x, b=b)
    q, k, v, eta, *rest = x
    for name, (out, state) in {
        "parallel": ttt.parallel(*x, mini_batch_size=b),
        "chunked": ttt.chunked(*x, mini_batch_size=b),
        "step": run_steps(q, k, v, eta, *rest, mini_batch_size=b),
    }.items():
        assert_close(out, expected, what=name)
        assert int(state["offset"][0]) == T % b
        for n in range(len(anchor)):  # the carried weights: anchors and the partial mini-batch's sums
            assert_close(state[f"W{n + 1}"], anchor[n], what=f"{name} W{n + 1}")
            assert_close(state[f"S{n + 1}"], running[n], what=f"{name} S{n + 1}")


@pytest.mark.parametrize("hidden", [0, 16], ids=["linear", "mlp"])
@pytest.mark.parametrize("pieces", [[3, 1, 17, 2, 6], [5, 8, 8, 8], [7, 1, 1, 20], [29]])
def test_state_cut_anywhere_inside_mini_batches(hidden, pieces):
    b = 8
    x = make_inputs(T=29, b=b, hidden=hidden, seed=2)
    expected, _ = ttt.parallel(*x, mini_batch_size=b)
    for form in (ttt.chunked, ttt.parallel):
        out, _ = run_split(form, pieces, *x, mini_batch_size=b)
        assert_close(out, expected, what=f"{form.__name__} {pieces}")
    # prefill with the dual form, then decode with the primal form from inside a mini-batch
    q, k, v, eta, *rest = x
    head, state = ttt.chunked(q[:, :, :11], k[:, :, :11], v[:, :, :11], eta[:, :, :11], *rest, mini_batch_size=b)
    tail, _ = run_steps(q[:, :, 11:], k[:, :, 11:], v[:, :, 11:], eta[:, :, 11:], *rest, state=state,
                        mini_batch_size=b)
    assert_close(torch.cat([head, tail], dim=2), expected, what="chunked prefill + step decode")


def test_mini_batch_size_one_is_online_gradient_descent():
    """b = 1: every token takes a full GD step on its own loss before its output, W_t = W_{t-1} − τ_1 η_t ∇ℓ_t."""
    q, k, v, eta, tau, (W0,), gamma, beta = make_inputs(B=1, H=2, T=9, b=1, lr=1.0, seed=3)
    d = q.shape[-1]
    W = W0.clone()
    outs = []
    for t in range(q.shape[2]):
        Wg = W.detach().requires_grad_()
        pred = F.layer_norm(k[0, :, t, None] @ Wg[:, :-1] + Wg[:, -1:], (d,), eps=1e-6) * gamma[:, None] + beta[:, None]
        loss = 0.5 * (pred - (v[0, :, t, None] - k[0, :, t, None])).pow(2).sum()
        W = W - tau[0] * eta[0, :, t, None, None] * torch.autograd.grad(loss, Wg)[0]
        z = q[0, :, t, None] @ W[:, :-1] + W[:, -1:]
        outs.append(q[0, :, t] + F.layer_norm(z, (d,), eps=1e-6)[:, 0] * gamma + beta)
    expected = torch.stack(outs, dim=1)[None]
    for form in (ttt.chunked, ttt.parallel):
        out, state = form(q, k, v, eta, tau, (W0,), gamma, beta, mini_batch_size=1)
        assert_close(out, expected, what=form.__name__)
        assert_close(state["W1"][0], W, what=f"{form.__name__} final W")


@pytest.mark.parametrize("form", [ttt.parallel, ttt.chunked])
def test_theorem_1_batch_gd_without_ln_is_linear_attention(form):
    """Linear f, batch GD (b = T), η = 1/2 for the paper's loss ‖Wk − v‖² (= E_ij = 1 for our ½‖·‖²),
    W0 = 0, no LN or residual: z_t = Σ_{s≤t} (q_t·k_s) v_s. The inner model's bias acts as one more
    feature fixed at 1, so the match is linear attention on [q, 1], [k, 1]."""
    B, H, T, d = 2, 2, 13, 5
    q, k, v = (torch.randn(B, H, T, d, dtype=F64) for _ in range(3))
    eta, tau = torch.ones(B, H, T, dtype=F64), torch.ones(T, dtype=F64)
    W0 = torch.zeros(H, d + 1, d, dtype=F64)
    out, state = form(q, k, v, eta, tau, (W0,), torch.ones(H, d, dtype=F64), torch.zeros(H, d, dtype=F64),
                      mini_batch_size=T, ln_residual=False)
    one = torch.ones(B, H, T, 1, dtype=F64)
    expected, S = linear_attention.parallel(torch.cat([q, one], -1), torch.cat([k, one], -1), v, normalize=False)
    assert_close(out, expected)
    assert_close(state["W1"], S)  # the final W is the linear-attention state Σ_s [k_s, 1]ᵀ v_s


@pytest.mark.parametrize("hidden", [0, 8], ids=["linear", "mlp"])
def test_gradcheck_dual_form(hidden):
    """gradcheck of chunked on a tiny layer, from a state inside a mini-batch, with checkpointing through time."""
    q, k, v, eta, tau, weights, gamma, beta = make_inputs(B=1, H=2, T=9, d=4, b=4, hidden=hidden, seed=4)
    _, state = ttt.chunked(q[:, :, :2], k[:, :, :2], v[:, :, :2], eta[:, :, :2], tau, weights, gamma, beta,
                           mini_batch_size=4)
    S1 = state["S1"].clone().requires_grad_()
    leaves = [t.clone().requires_grad_() for t in (q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], eta[:, :, 2:], tau,
                                                   *weights, gamma, beta)]

    def fn(q, k, v, eta, tau, *rest):
        *Ws, gamma, beta, S1 = rest
        anchors = {f"W{n + 1}": W.expand(1, *W.shape) for n, W in enumerate(Ws)}  # still W0 after 2 of 4
        st = {**state, **anchors, "S1": S1}
        out, new = ttt.chunked(q, k, v, eta, tau, tuple(Ws), gamma, beta, state=st, mini_batch_size=4,
                               checkpoint_group=1)
        return out, new["W1"], new["S1"]

    assert torch.autograd.gradcheck(fn, (*leaves, S1))


@pytest.mark.parametrize("hidden", [0, 8], ids=["linear", "mlp"])
def test_gradients_of_dual_primal_and_checkpointed_forms_agree(hidden):
    x = make_inputs(B=2, H=2, T=19, d=4, b=8, hidden=hidden, seed=5)
    weight = torch.randn(2, 2, 19, 4, dtype=F64)

    def grads(run):
        leaves = [t.clone().requires_grad_() for t in (*x[:5], *x[5], *x[6:])]
        q, k, v, eta, tau, *rest = leaves
        Ws, (gamma, beta) = tuple(rest[:-2]), rest[-2:]
        out = run(q, k, v, eta, tau, Ws, gamma, beta)
        return torch.autograd.grad((out * weight).sum(), leaves)

    expected = grads(lambda *a: run_steps(*a, mini_batch_size=8)[0])
    for name, run in {"chunked": lambda *a: ttt.chunked(*a, mini_batch_size=8)[0],
                      "checkpointed": lambda *a: ttt.chunked(*a, mini_batch_size=8, checkpoint_group=1)[0],
                      "parallel": lambda *a: ttt.parallel(*a, mini_batch_size=8)[0]}.items():
        for n, (g, e) in enumerate(zip(grads(run), expected)):
            assert_close(g, e, what=f"{name} grad {n}")


def test_checkpointing_through_time_keeps_no_per_mini_batch_weights():
    """Without checkpointing autograd keeps W (and activations) of every mini-batch; with groups of g it
    keeps nothing inside groups (the inner loop is recomputed in backward)."""
    q, k, v, eta, tau, weights, gamma, beta = make_inputs(B=1, H=2, T=256, d=32, b=16, dtype=torch.float32)
    for t in (q, k, v, *weights):
        t.requires_grad_()

    def saved(group):
        weight_like, total = 0, {}

        def pack(t):
            nonlocal weight_like
            weight_like += t.shape[-2:] == weights[0].shape[-2:]
            total[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = ttt.chunked(q, k, v, eta, tau, weights, gamma, beta, mini_batch_size=16, checkpoint_group=group)
        out.sum().backward()
        return weight_like, sum(total.values())

    full_w, full_bytes = saved(0)
    ckpt_w, ckpt_bytes = saved(4)
    assert full_w >= 16 and ckpt_w == 0
    assert ckpt_bytes < 0.6 * full_bytes


@pytest.mark.parametrize("hidden", [0, 16], ids=["linear", "mlp"])
def test_long_sequence_float32_stays_finite(hidden):
    x = make_inputs(B=1, H=1, T=4096, d=4, b=16, hidden=hidden, dtype=torch.float32, lr=1.0)
    out, state = ttt.chunked(*x, mini_batch_size=16)
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in state.values())
    expected, _ = ttt.chunked(*make_inputs(B=1, H=1, T=4096, d=4, b=16, hidden=hidden, lr=1.0), mini_batch_size=16)
    assert_close(out.double(), expected, atol=1e-3)


@pytest.mark.parametrize("form", ["parallel", "chunked", "step"])
def test_forms_without_autograd_hand_back_ordinary_tensors(form):
    """Without autograd the forms run in inference mode inside; what they return must still work with
    autograd afterwards (a state computed under no_grad, then training continues from it)."""
    q, k, v, eta, tau, weights, gamma, beta = make_inputs(B=1, H=2, T=6, d=4, b=4)
    run = getattr(ttt, form)
    cut = (lambda x: x[:, :, 0]) if form == "step" else (lambda x: x[:, :, :3])
    with torch.no_grad():
        out, state = run(cut(q), cut(k), cut(v), cut(eta), tau, weights, gamma, beta, mini_batch_size=4)
    assert not out.is_inference() and not any(t.is_inference() for t in state.values())
    k2 = k.clone().requires_grad_()  # the state's tensors meet tensors that need gradients: they are saved
    out2, _ = run(cut(q), cut(k2), cut(v), cut(eta), tau, weights, gamma, beta, state=state, mini_batch_size=4)
    (out2 * out).sum().backward()
    assert k2.grad is not None and torch.isfinite(k2.grad).all() and k2.grad.abs().sum() > 0


@pytest.mark.parametrize("hidden", [0, 8], ids=["linear", "mlp"])
def test_dual_form_without_autograd_leaves_the_callers_state_and_weights_alone(hidden):
    """Without autograd the dual form updates its anchors in place; they must be its own copies."""
    q, k, v, eta, tau, weights, gamma, beta = make_inputs(B=1, H=2, T=40, d=4, b=8, hidden=hidden)
    cut = lambda x, s: x[:, :, s]  # noqa: E731
    with torch.no_grad():
        _, state = ttt.chunked(*(cut(x, slice(0, 16)) for x in (q, k, v, eta)), tau, weights, gamma, beta,
                               mini_batch_size=8)
        kept_state = {name: t.clone() for name, t in state.items()}
        kept_weights = [W.clone() for W in weights]
        ttt.chunked(*(cut(x, slice(16, None)) for x in (q, k, v, eta)), tau, weights, gamma, beta, state=state,
                    mini_batch_size=8)
        ttt.chunked(q, k, v, eta, tau, weights, gamma, beta, mini_batch_size=8)
    assert all(torch.equal(state[name], kept_state[name]) for name in state)
    assert all(torch.equal(W, kept) for W, kept in zip(weights, kept_weights))


def test_op_refuses_bad_arguments():
    q, k, v, eta, tau, weights, gamma, beta = make_inputs(T=5, b=8)
    with pytest.raises(ValueError, match="tau must have shape"):
        ttt.chunked(q, k, v, eta, tau[:4], weights, gamma, beta, mini_batch_size=8)
    with pytest.raises(ValueError, match="mini_batch_size=0"):
        ttt.chunked(q, k, v, eta, tau, weights, gamma, beta, mini_batch_size=0)
    with pytest.raises(ValueError, match="checkpoint_group=-1"):
        ttt.chunked(q, k, v, eta, tau, weights, gamma, beta, mini_batch_size=8, checkpoint_group=-1)


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_any_split_invariant(mixer, backbone):
    b = 4 if mixer == "ttt_linear" else 16  # 37 tokens cross 9 or 2 mini-batch boundaries
    assert_any_split(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2,
                                 mixer_options={"backbone": backbone, "mini_batch_size": b}))


def test_mixer_defaults_and_checkpointed_training_gradients():
    cfg = dict(d_model=16, n_layers=1, n_heads=2)
    lin = SeqMixLM(ModelConfig(mixer="ttt_linear", **cfg)).blocks[0].mixer
    mlp = SeqMixLM(ModelConfig(mixer="ttt_mlp", **cfg)).blocks[0].mixer
    assert (lin.base_lr, mlp.base_lr, lin.mini_batch_size, lin.backbone) == (1.0, 0.1, 16, "mamba")
    assert [tuple(W.shape) for W in mlp._weights()] == [(2, 9, 32), (2, 33, 8)]
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 40))
    grads = []
    for group in (0, 1):
        torch.manual_seed(0)
        model = SeqMixLM(ModelConfig(mixer="ttt_mlp", mixer_options={"checkpoint_group": group}, **cfg)).double()
        model(tokens).logsumexp(-1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for g0, g1 in zip(*grads):
        assert_close(g1, g0)


@pytest.mark.parametrize("options, message", [
    ({"backbone": "rnn"}, "backbone='rnn'"),
    ({"mini_batch_size": 0}, "mini_batch_size=0"),
    ({"base_lr": -1.0}, "base_lr=-1.0"),
    ({"checkpoint_group": -2}, "checkpoint_group=-2"),
    ({"residual_stream": True, "backbone": "transformer"}, "residual_stream=True: needs backbone='mamba'"),
])
def test_mixer_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer="ttt_linear", d_model=16, n_layers=1, n_heads=2, mixer_options=options))


def test_mixer_needs_even_head_dim_for_rope():
    with pytest.raises(ValueError, match="even head_dim"):
        SeqMixLM(ModelConfig(mixer="ttt_linear", d_model=18, n_layers=1, n_heads=2))


@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_every_mixer_parameter_is_trained(backbone):
    """W0, ε (τ's offsets), θ_lr and its bias, the inner LN, the convs and the gate all reach the loss."""
    model = SeqMixLM(ModelConfig(mixer="ttt_mlp", d_model=16, n_layers=1, n_heads=2,
                                 mixer_options={"backbone": backbone, "mini_batch_size": 8}))
    model(torch.randint(0, 256, (2, 20))).logsumexp(-1).sum().backward()
    untouched = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not untouched


def _causal_conv(x, conv):
    """Depthwise causal conv of x [B, T, C] with an nn.Conv1d's weights, by explicit left zero padding."""
    K = conv.weight.shape[-1]
    return F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), conv.weight, conv.bias, groups=x.shape[-1]).transpose(1, 2)


def _interleaved_rope(x, positions, theta=10000.0):
    """Rotate channel pairs (2i, 2i+1) of x [B, H, T, d] by positions[t] · theta^(-2i/d)."""
    d = x.shape[-1]
    angle = positions[:, None].double() * theta ** (-torch.arange(0, d, 2, dtype=F64) / d)  # [T, d/2]
    c, s = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * c - odd * s, even * s + odd * c
    return out


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_mixer_matches_a_from_scratch_layer(mixer, backbone):
    """The mixer's wiring against the paper/official layer written out here: projections (shared θ_QK + two
    convs for the Mamba backbone), RoPE at t mod b on pairs (2i, 2i+1), η = η_base σ(θ_lr x + β)/d,
    τ_i = relu(1/i + ε_i), the per-token autograd inner loop, post-LN, gate, output projection."""
    torch.manual_seed(7)
    b, D, H, T = 8, 16, 2, 21
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=D, n_layers=1, n_heads=H,
                                 mixer_options={"backbone": backbone, "mini_batch_size": b})).double()
    m = model.blocks[0].mixer
    with torch.no_grad():  # move every parameter off its initial value so none is trivially 0 or 1
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, T, D, dtype=F64)
    d = D // H
    skip = 0
    u = x
    if backbone == "mamba":
        skip = _causal_conv(x, m.pre_conv.conv)
        h = x + skip
        u = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * m.ttt_norm_in.weight
    P = u @ m.in_proj.weight.T
    lr_logits = P[..., 3 * D:]
    if backbone == "mamba":
        q, k = _causal_conv(P[..., :D], m.conv_q.conv), _causal_conv(P[..., :D], m.conv_k.conv)
        v, gate = P[..., D:2 * D], P[..., 2 * D:3 * D]
    else:
        q, k, v = P[..., :D], P[..., D:2 * D], P[..., 2 * D:3 * D]
    q, k, v = (t.reshape(2, T, H, d).transpose(1, 2) for t in (q, k, v))
    positions = torch.arange(T) % b
    q, k = _interleaved_rope(q, positions), _interleaved_rope(k, positions)
    eta = (m.base_lr / d) * torch.sigmoid(lr_logits + m.lr_bias).transpose(1, 2)
    tau = torch.relu(1 / torch.arange(1, b + 1, dtype=F64) + m.token_idx_offset)
    weights = tuple(torch.cat([W, c], dim=-2) for W, c in zip(m.W0, m.b0))
    with torch.enable_grad():
        z, _, _ = reference(q.detach(), k.detach(), v.detach(), eta.detach(), tau.detach(),
                            tuple(W.detach() for W in weights), m.ttt_norm_weight.detach(), m.ttt_norm_bias.detach(), b)
    z = F.layer_norm(z.transpose(1, 2).reshape(2, T, D), (D,), m.post_norm.weight, m.post_norm.bias, eps=1e-6)
    if backbone == "mamba":
        z = z * F.gelu(gate, approximate="tanh")
    expected = skip + z @ m.out.weight.T
    with torch.no_grad():
        assert_close(m(x)[0], expected.detach())
