import pytest
import torch
import torch.nn.functional as F

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.ffn.kan import KAN, KANLinear, bspline_basis


def scalar_bspline(x: float, knots: list[float], j: int, p: int) -> float:
    """Textbook recursive definition of B_{j,p}(x), one scalar at a time (the oracle)."""
    if p == 0:
        return 1.0 if knots[j] <= x < knots[j + 1] else 0.0
    a = (x - knots[j]) / (knots[j + p] - knots[j]) * scalar_bspline(x, knots, j, p - 1)
    b = (knots[j + p + 1] - x) / (knots[j + p + 1] - knots[j + 1]) * scalar_bspline(x, knots, j + 1, p - 1)
    return a + b


@pytest.mark.parametrize("order", [0, 1, 3])
def test_basis_matches_scalar_recursion_on_uneven_knots(order):
    knots = torch.tensor([-2.0, -1.3, -1.0, -0.2, 0.1, 0.15, 0.9, 1.4, 2.5], dtype=torch.float64)
    xs = torch.linspace(-2.5, 3.0, 41, dtype=torch.float64)
    got = bspline_basis(xs[:, None], knots[None], order)[:, 0]  # [41, M - 1 - order]
    want = torch.tensor([[scalar_bspline(x, knots.tolist(), j, order) for j in range(len(knots) - 1 - order)]
                         for x in xs.tolist()], dtype=torch.float64)
    assert_close(got, want)


@pytest.mark.parametrize("grid_size, order", [(5, 3), (3, 1), (8, 2), (1, 0)])
def test_basis_is_a_partition_of_unity_on_the_grid(grid_size, order):
    layer = KANLinear(2, 3, grid_size=grid_size, spline_order=order, grid_range=(-1.5, 0.5)).double()
    x = torch.rand(500, 2, dtype=torch.float64) * 2 - 1.5  # inside [low, high)
    x[0] = -1.5  # the grid start is included
    B = layer.basis(x)
    assert B.shape == (500, 2, grid_size + order)
    assert (B >= 0).all()
    assert_close(B.sum(-1), torch.ones(500, 2, dtype=torch.float64))
    # also after an adaptive (uneven) grid update, on the new grid's range
    layer.update_grid(torch.randn(300, 2, dtype=torch.float64))
    lo, hi = layer.grid[:, order], layer.grid[:, grid_size + order]
    x = lo + (hi - lo) * torch.rand(500, 2, dtype=torch.float64)
    assert_close(layer.basis(x).sum(-1), torch.ones(500, 2, dtype=torch.float64))


def test_inputs_outside_the_extended_grid_take_only_the_base_path():
    layer = KANLinear(3, 4, grid_range=(-1.0, 1.0)).double()  # h = 0.4, knots span [-2.2, 2.2] (float32-rounded)
    with torch.no_grad():
        layer.spline_weight.normal_()
    base = lambda x: F.linear(F.silu(x), layer.base_weight)
    outside = torch.tensor([[-2.2001, 2.2001, 5.0], [-40.0, 2.3, -2.5]], dtype=torch.float64)
    assert (layer.basis(outside) == 0).all()
    assert torch.equal(layer(outside), base(outside))
    # between the grid range and the last extended knot, part of the basis is still alive
    margin = torch.tensor([[1.1, -1.5, 2.1]], dtype=torch.float64)
    assert (layer(margin) - base(margin)).abs().min() > 1e-6
    assert (layer.basis(margin).sum(-1) < 1 - 1e-6).all()


def test_grid_update_on_the_same_grid_is_exact():
    layer = KANLinear(2, 3, grid_size=4, spline_order=3, grid_eps=1.0).double()
    with torch.no_grad():
        layer.spline_weight.normal_()
    grid, coef = layer.grid.clone(), layer.spline_weight.detach().clone()
    x = torch.rand(400, 2, dtype=torch.float64) * 2 - 1
    x[0], x[1] = -1.0, 1.0  # samples span exactly the old grid range
    layer.update_grid(x, margin=0.0)
    assert_close(layer.grid, grid)
    assert_close(layer.spline_weight.detach(), coef)


def test_grid_update_moves_the_grid_and_preserves_outputs():
    torch.manual_seed(1)
    layer = KANLinear(3, 4).double()
    with torch.no_grad():
        layer.spline_weight.normal_()  # O(1) splines, so the spline part dominates the check
    x = torch.rand(4000, 3, dtype=torch.float64) * 1.6 - 0.7  # data in [-0.7, 0.9]
    spline = lambda: layer(x) - F.linear(F.silu(x), layer.base_weight)
    before = spline()
    layer.update_grid(x, margin=0.01)
    k, G = layer.spline_order, layer.grid_size
    assert_close(layer.grid[:, k], torch.full((3,), -0.7, dtype=torch.float64), atol=5e-3)
    assert_close(layer.grid[:, G + k], torch.full((3,), 0.9, dtype=torch.float64), atol=5e-3)
    rel = ((spline() - before).pow(2).mean() / before.pow(2).mean()).sqrt()
    assert rel < 0.05, f"relative RMS change of the spline output {rel:.3f}"


def test_network_grid_update_preserves_outputs_and_covers_wider_inputs():
    torch.manual_seed(2)
    net = KAN([4, 5, 2]).double()
    x = torch.rand(2000, 4, dtype=torch.float64) * 2.6 - 1.3  # partly outside the initial grid [-1, 1]
    before = net(x)
    assert (net.layers[0].basis(x).sum(-1)[x.abs() > 1.001] < 1 - 1e-9).all()
    net.update_grid(x)
    after = net(x)
    assert (net.layers[0].basis(x).sum(-1) > 1 - 1e-9).all()  # every sample now lies on the grid
    rel = ((after - before).pow(2).mean() / before.pow(2).mean()).sqrt()
    assert rel < 0.03, f"relative RMS change of the network output {rel:.3f}"


def test_kan_layer_gradcheck():
    layer = KANLinear(3, 2, grid_size=3, spline_order=2).double()
    x = (torch.rand(4, 3, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    fn = lambda x, wb, ws: F.linear(F.silu(x), wb) + F.linear(
        bspline_basis(x, layer.grid, 2).flatten(-2), ws.flatten(1))
    assert_close(fn(x, layer.base_weight, layer.spline_weight), layer(x))
    assert torch.autograd.gradcheck(fn, (x, layer.base_weight, layer.spline_weight))


def test_kan_ffn_model_holds_the_any_split_invariant_and_trains():
    cfg = ModelConfig(mixer="gla", ffn="kan", d_model=32, n_layers=2, n_heads=2,
                      ffn_options={"grid_size": 4, "grid_range": [-3, 3]})
    assert_any_split(cfg)
    torch.manual_seed(0)
    model = SeqMixLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 16, (4, 24))
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_kan_ffn_default_width_matches_swiglu_parameters():
    count = lambda ffn: sum(p.numel() for b in SeqMixLM(ModelConfig(d_model=64, n_layers=1, ffn=ffn)).blocks
                            for p in b.ffn.parameters())
    kan, swiglu = count("kan"), count("swiglu")
    assert abs(kan - swiglu) / swiglu < 0.05, (kan, swiglu)


@pytest.mark.parametrize("options, message", [
    ({"grid_size": 0}, "grid_size=0"),
    ({"spline_order": -1}, "spline_order=-1"),
    ({"grid_range": [1.0, -1.0]}, "grid_range=[1.0, -1.0]"),
    ({"grid_range": "ab"}, "grid_range='ab'"),
    ({"hidden": 0}, "hidden=0"),
    ({"grid_eps": 0.1}, "unknown option(s) ['grid_eps']"),
])
def test_bad_kan_options_raise(options, message):
    with pytest.raises(ValueError) as err:
        SeqMixLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, ffn="kan", ffn_options=options))
    assert message in str(err.value)


def test_kan_vs_mlp_pieces_match_parameters():
    from seqmix.bench.kan_vs_mlp import count_parameters, load_digits_split, matched_mlp

    x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
    assert x_tr.shape[1] == 64 and len(x_tr) + len(x_te) == 1797
    assert x_tr.min() >= -1 and x_tr.max() <= 1 and set(y_te.tolist()) == set(range(10))
    kan = KAN([64, 32, 10])
    mlp = matched_mlp(64, 10, count_parameters(kan))
    assert abs(count_parameters(mlp) - count_parameters(kan)) <= 64 + 1 + 10


def test_kan_vs_mlp_command_end_to_end(tmp_path, capsys):
    from seqmix.cli import main

    out = tmp_path / "kan_vs_mlp.png"
    assert main(["kan-vs-mlp", "--epochs", "1", "--seeds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "KAN" in printed and "MLP" in printed and out.stat().st_size > 1000
