"""The few-row product kernel (seqmix.layers.few_rows): equal to F.linear to float32 rounding in both weight
layouts, independent of the thread count, clear errors, used by the exported decode step, and a fallback with a
warning where it cannot be built."""
import pytest
import torch
import torch.nn.functional as F

from seqmix.layers import Linear, few_rows
from seqmix.layers.inference import EXPORTED_WEIGHT

pytestmark = pytest.mark.skipif(not few_rows.available(), reason=f"kernel not built: {few_rows.KERNEL.status.get('reason')}")


def _layouts(weight):
    """The weight [out, in] contiguous ('dots') and as the transpose of a contiguous [in, out] ('rows')."""
    return {"dots": weight, "rows": weight.t().contiguous().t()}


@pytest.mark.parametrize("rows", [1, 2, 3, 8])
@pytest.mark.parametrize("in_features,out_features", [(256, 1024), (1024, 256), (13, 5), (37, 300), (64, 8),
                                                       (24, 48)])
def test_kernel_equals_linear_in_both_layouts_with_and_without_bias(rows, in_features, out_features):
    torch.manual_seed(rows * 1000 + in_features)
    x = torch.randn(rows, in_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    for b in (None, bias):
        exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
        for name, w in _layouts(weight).items():
            y = few_rows.linear(x, w, b)
            assert y.shape == exact.shape and y.dtype == torch.float32
            error = ((y.double() - exact).abs().max() / exact.abs().max()).item()
            assert error < 1e-5, (name, b is None, error)  # a sum of up to 1024 float32 terms


def test_kernel_keeps_leading_dimensions_and_reads_strided_rows():
    weight = torch.randn(40, 24)
    x = torch.randn(2, 1, 48)[..., ::2]  # not contiguous
    assert torch.allclose(few_rows.linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert few_rows.linear(x, weight).shape == (2, 1, 40)


def test_kernel_results_do_not_depend_on_the_thread_count():
    """Threads split the outputs, never a sum: every output is computed the same way on 1 or 2 threads."""
    x, weight = torch.randn(3, 512), torch.randn(2048, 512)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([few_rows.linear(x, w) for w in _layouts(weight).values()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_kernel_refuses_what_it_cannot_compute():
    with pytest.raises(RuntimeError, match="float32 only"):
        few_rows.linear(torch.randn(1, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="do not match"):
        few_rows.linear(torch.randn(1, 8), torch.randn(4, 9))
    with pytest.raises(RuntimeError, match="bias"):
        few_rows.linear(torch.randn(1, 8), torch.randn(4, 8), torch.randn(5))


def test_linear_runs_on_the_kernel_only_inside_in_use_and_for_few_rows():
    layer = Linear(1024, 256).eval()
    with torch.no_grad():
        assert not few_rows.usable(torch.randn(1, 1024), layer.weight)  # off outside the decode export
        with few_rows.in_use():
            assert few_rows.usable(torch.randn(1, 1024), layer.weight)
            assert not few_rows.usable(torch.randn(few_rows.MAX_ROWS + 1, 1024), layer.weight)
            assert not few_rows.usable(torch.randn(1, 1024, dtype=torch.float64), layer.weight.double())
            assert not few_rows.usable(torch.randn(1, 64), torch.randn(16, 64))  # a weight that stays in cache
            x = torch.randn(2, 1024)  # as the exported decode step calls it: its decode layout given as an input
            y = torch.func.functional_call(layer, {EXPORTED_WEIGHT: layer.decode_weight()}, (x,))
            assert torch.allclose(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)
    # the layout the decode step passes: [out, in] itself for narrow outputs, the cached transpose for wide ones
    # and for weights too small for the kernel
    assert Linear(1024, 256).decode_weight().is_contiguous()
    assert Linear(256, 1024).decode_weight().t().is_contiguous()
    assert Linear(64, 16).decode_weight().t().is_contiguous()


def test_exported_program_calls_the_kernel():
    layer = Linear(256, 512, bias=False).eval()

    class Step(torch.nn.Module):
        def forward(self, x, weight):
            return torch.func.functional_call(layer, {EXPORTED_WEIGHT: weight}, (x,)).relu()

    with torch.no_grad(), few_rows.in_use():
        program = torch.export.export(Step(), (torch.randn(1, 256), layer.decode_weight()), strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "seqmix.few_rows_linear.default" in targets, targets


def test_a_kernel_that_cannot_be_built_warns_once_and_leaves_torch_products(monkeypatch):
    monkeypatch.setattr(few_rows.KERNEL, "status", {})
    monkeypatch.setattr(few_rows.KERNEL, "compiler", lambda: "/nonexistent/c++")
    with pytest.warns(RuntimeWarning, match="kernel could not be built.*torch's matrix products"):
        assert not few_rows.available()
    assert not few_rows.available()  # not retried, no second warning
    with few_rows.in_use():
        assert not few_rows.usable(torch.randn(1, 1024), torch.randn(256, 1024))
    assert Linear(1024, 256).decode_weight().t().is_contiguous()  # the transposed copy torch's BLAS streams best


def test_a_tied_head_gets_its_own_decode_layout_in_the_exported_step():
    """The head tied to the embedding reads its decode layout (the [d, vocab] copy), not the [vocab, d] table
    the embedding looks rows up in; decoding gives the eager tokens."""
    from seqmix import ModelConfig, SeqMixLM
    from seqmix.model.generate import ExportedDecoder, sample
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="gla", vocab_size=1024, d_model=128, n_layers=1, n_heads=2,
                                 tie_embeddings=True)).eval()
    assert model.head.weight is model.embed.weight
    prompt = torch.randint(0, 1024, (1, 5))
    assert torch.equal(sample(model, prompt, 8, temperature=0, compile=True), sample(model, prompt, 8, temperature=0))
    decoder, = model.__dict__["_exported_decoders"].values()
    assert isinstance(decoder, ExportedDecoder)
    values = dict(zip(decoder.names, decoder._values()))
    head = values["lm.head.exported_decode_weight"]
    assert head.shape == (1024, 128) and head.t().is_contiguous()
    assert values["lm.embed.weight"].is_contiguous()
