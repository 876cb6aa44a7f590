"""Inference caches (transposed weights, parameter-only constants), the compiled decoder, streaming text and
several prompts: decoding stays exact, and caches refresh whenever the weights change."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from seqmix import ModelConfig, SeqMixLM, available_mixers
from seqmix.cli import main
from seqmix.data.tokenizer import ByteTokenizer
from seqmix.layers import Linear, cached, few_rows
from seqmix.layers.inference import INFERENCE_ROWS
from seqmix.model.generate import (CompiledDecoder, CudaGraphStep, TextStream, _fast_step, _shapes, generate,
                                  sample)
from seqmix.model.state import map_state
from seqmix.train.checkpoint import save_checkpoint


def test_cached_value_refreshes_on_in_place_update_and_on_replacement_and_is_never_used_in_training():
    lin = Linear(3, 2)
    calls = []

    def compute():
        calls.append(1)
        return lin.weight.sum().clone()

    with torch.no_grad():
        first = cached(lin, "s", (lin.weight,), compute)
        assert cached(lin, "s", (lin.weight,), compute) is first and len(calls) == 1  # kept
        lin.weight.add_(1.0)  # an optimizer step: in place
        assert torch.allclose(cached(lin, "s", (lin.weight,), compute), first + 6) and len(calls) == 2
        lin.weight.data = torch.zeros(2, 3)  # replaced storage
        assert cached(lin, "s", (lin.weight,), compute).item() == 0 and len(calls) == 3
        lin.load_state_dict({"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
        assert cached(lin, "s", (lin.weight,), compute).item() == 6 and len(calls) == 4
    cached(lin, "s", (lin.weight,), compute)  # autograd on: computed afresh, every time
    cached(lin, "s", (lin.weight,), compute)
    assert len(calls) == 6


@pytest.mark.parametrize("rows", [(1,), (2, 3), (INFERENCE_ROWS + 1,)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [(5, 7), (512, 130)])  # below and above few_rows.MIN_WEIGHT elements
def test_linear_inference_layout_equals_f_linear(rows, bias, width):
    """Every path equals F.linear; the transposed copy is cached only for few-row products over a weight large
    enough to leave the cache (a small one keeps F.linear, without the cache's checks)."""
    torch.manual_seed(0)
    (d_in, d_out), split = width, (3, width[1] - 3)
    lin = Linear(d_in, d_out, bias=bias).double()
    x = torch.randn(*rows, d_in, dtype=torch.float64)
    expected = F.linear(x, lin.weight, lin.bias)
    with torch.no_grad():
        assert torch.allclose(lin(x), expected, atol=1e-12, rtol=0)
        parts = lin.parts(x, split)
        residual = torch.randn(*rows, d_out, dtype=torch.float64)
        added = lin.add_to(residual, x)
    assert torch.allclose(torch.cat(parts, -1), expected, atol=1e-12, rtol=0)
    assert torch.allclose(added, residual + expected, atol=1e-12, rtol=0)
    parts = lin.parts(x, split)  # training: one product per block of rows, gradients flow
    torch.cat(parts, -1).sum().backward()
    assert lin.weight.grad is not None and torch.allclose(torch.cat(parts, -1), expected, atol=1e-12, rtol=0)
    few_rows_large = d_in * d_out >= few_rows.MIN_WEIGHT and rows[0] <= INFERENCE_ROWS
    assert ("_inference_cache" in lin.__dict__) == few_rows_large


@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "rwkv4", "s4d", "ttt_linear"])
def test_decoding_sees_every_weight_update(mixer):
    """After a training step, decoding (which caches transposed weights and A = −exp(A_log) and the like)
    equals a fresh copy of the updated model, which has no caches."""
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2)).double()
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        model(tokens[:, :8], state=model.init_state(2))  # fills the caches
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    fresh = copy.deepcopy(model)
    fresh.__dict__.pop("_inference_cache", None)
    for m in fresh.modules():
        m.__dict__.pop("_inference_cache", None)
    with torch.no_grad():
        state = model.init_state(2)
        _, state = model(tokens[:, :8], state=state)
        got, _ = model.decode(tokens[:, 8:], state)
        expected = fresh(tokens)[:, 8:]
    assert torch.allclose(got, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mixer", available_mixers())
def test_a_decode_step_never_changes_its_input_state(mixer):
    """Generation may try a step and drop it (the compiled decoder warms up that way), so no mixer may
    update the state it is given in place."""
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=1, n_heads=2)).eval()
    with torch.inference_mode():
        _, state = model(torch.randint(0, 256, (1, 5)), state=model.init_state(1))
        before = map_state(torch.clone, state)
        model.decode(torch.tensor([[7]]), state)
        flat_before, flat_after = [], []
        map_state(flat_before.append, before)
        map_state(flat_after.append, state)
    assert all(torch.equal(a, b) for a, b in zip(flat_before, flat_after))


def _tiny(mixer="mamba"):
    torch.manual_seed(0)
    return SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2))


@pytest.mark.parametrize("mixer", ["mamba", "attention"])  # a state of fixed size, and a growing KV cache
def test_compiled_decoding_gives_the_same_tokens_and_sees_weight_updates(mixer):
    """Both a state of fixed size and a KV cache (a dynamic length) decode through the ahead-of-time
    ``ExportedDecoder``, without falling back (a warning fails the test), and see in-place weight updates."""
    model = _tiny(mixer)
    prompt = torch.randint(0, 256, (2, 6))
    timings = {}
    eager = sample(model, prompt, 12, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled = sample(model, prompt, 12, temperature=0, compile=True, timings=timings)
    assert [type(d).__name__ for d in model.__dict__.get("_exported_decoders", {}).values()] == ["ExportedDecoder"]
    assert torch.equal(compiled, eager) and timings["compile_seconds"] > 0
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # in place, as an optimizer would
    assert torch.equal(sample(model, prompt, 12, temperature=0, compile=True), sample(model, prompt, 12, temperature=0))


def test_compiled_decoder_falls_back_with_a_warning_when_it_cannot_compile(monkeypatch):
    """Without a toolchain: the ahead-of-time build fails, then torch.compile; each says so, and decoding goes
    on uncompiled with the same tokens."""
    model = _tiny("gla")
    decoder = CompiledDecoder(model)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(decoder, "compiled", {False: broken, None: broken})
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    model.__dict__["_compiled_decoder"] = decoder
    prompt = torch.randint(0, 256, (1, 4))
    with pytest.warns(RuntimeWarning) as caught:
        out = sample(model, prompt, 8, temperature=0, compile=True)
    messages = [str(w.message) for w in caught]
    assert any("cannot be compiled ahead of time (RuntimeError: no C++ compiler found)" in m for m in messages)
    assert any("no C++ compiler found" in m and "decoding uncompiled" in m for m in messages)
    assert torch.equal(out, sample(model, prompt, 8, temperature=0))


def test_exported_decoder_is_refused_when_its_logits_differ_from_eager_decoding(monkeypatch):
    """The ahead-of-time step is checked against eager decoding when built (a miscompiled library must not
    decode silently): one whose runner returns other logits is refused, and decoding falls back."""
    model = _tiny("mamba")
    real_load = torch._inductor.aoti_load_package

    class Skewed:
        def __init__(self, loader):
            self.inner = loader

        def run(self, inputs):
            out = self.inner.run(inputs)
            return [out[0] + 1.0, *out[1:]]

    monkeypatch.setattr(torch._inductor, "aoti_load_package",
                        lambda path: type("Package", (), {"loader": Skewed(real_load(path).loader)})())
    prompt = torch.randint(0, 256, (2, 5))
    with pytest.warns(RuntimeWarning, match="differ from eager decoding"):
        out = sample(model, prompt, 6, temperature=0, compile=True)
    assert torch.equal(out, sample(model, prompt, 6, temperature=0))


def test_text_stream_never_splits_a_character():
    tok = ByteTokenizer()
    text = "añ€😀 ok"
    stream, pieces = TextStream(tok), []
    for b in tok.encode(text):
        pieces.append(stream.push([b]))
    pieces.append(stream.close())
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert pieces[:3] == ["a", "", "ñ"]  # ñ is two bytes: nothing until both have come
    stream = TextStream(tok)  # bytes that never become a character are given out at the end
    assert stream.push([0xE2, 0x82]) == "" and stream.close() == "\ufffd"


def test_several_prompts_decode_together_as_each_alone():
    model = _tiny("gla")
    prompts = ["To be", "or", "not to", "be"]
    together = generate(model, prompts, 10, temperature=0)
    assert together == [generate(model, p, 10, temperature=0) for p in prompts]
    streamed = []
    assert generate(model, "To be", 10, temperature=0, stream=streamed.append) == together[0]
    assert "".join(streamed) == together[0]
    with pytest.raises(ValueError, match="one prompt only|2 prompts"):
        generate(model, ["a", "b"], 3, stream=print)


def test_cli_streams_one_prompt_and_prints_several(tmp_path, capsys):
    model = _tiny("gla")
    save_checkpoint(tmp_path / "ckpt", model, {"model": model.config.to_dict()}, {"step": 0})
    base = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--max-new-tokens", "15", "--temperature", "0"]
    assert main(base + ["--prompt", "ROMEO."]) == 0
    streamed = capsys.readouterr()
    assert main(base + ["--prompt", "ROMEO.", "--no-stream"]) == 0
    assert capsys.readouterr().out == streamed.out
    assert "tokens/s" in streamed.err and "1 × 15 new tokens" in streamed.err
    assert main(base + ["--prompt", "ROMEO.", "--prompt", "JULIET.", "--batch", "2"]) == 0
    out = capsys.readouterr()
    assert out.out.count("ROMEO.") == 2 and out.out.count("JULIET.") == 2 and "4 × 15 new tokens" in out.err
    assert streamed.out.strip() in out.out
    assert main(base + ["--batch", "0"]) == 2
    assert "--batch=0: must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow  # one compilation per mixer, about 10 s each
@pytest.mark.parametrize("mixer", available_mixers())
def test_every_mixer_decodes_compiled_with_the_same_tokens(mixer):
    model = _tiny(mixer)
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager decoding fails the test
        compiled = sample(model, prompt, 6, temperature=0, compile=True)
    assert torch.equal(compiled, sample(model, prompt, 6, temperature=0))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("mixer", available_mixers())
def test_cuda_graph_decoding_gives_the_eager_tokens(mixer):
    """On CUDA a state of fixed size decodes by replaying one captured graph; the tokens and the logits are
    those of eager decoding, through a prompt of another length and batches of one and three."""
    model = _tiny(mixer).cuda()
    with torch.inference_mode():
        for batch, length in ((1, 5), (3, 8)):
            prompt = torch.randint(0, 256, (batch, length), device="cuda")
            logits, state = model(prompt, state=model.init_state(batch))
            warm = logits[:, -1].argmax(-1, keepdim=True)
            after = model.decode(warm, state)[1]
            if _shapes(state) != _shapes(after):
                pytest.skip(f"{mixer}'s state grows: decoded compiled, not from a graph")
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # a step that cannot be captured fails the test
                step = _fast_step(model, warm, state)
            assert isinstance(step, CudaGraphStep)
            eager_state, graph_state, token = state, state, warm
            for _ in range(6):
                expected, eager_state = model.decode(token, eager_state)
                got, graph_state = step(token, graph_state)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
                token = expected[:, -1].argmax(-1, keepdim=True)
    assert torch.equal(sample(model, prompt, 12, temperature=0, compile=True), sample(model, prompt, 12, temperature=0))


def test_packed_decode_weights_copy_each_weight_in_its_decode_layout():
    """The ahead-of-time step's weights, side by side in one page-backed buffer: equal to the parameters, laid
    out as ``decode_weight()`` lays them out, each 64-byte aligned, none sharing memory with a parameter."""
    from seqmix.layers.inference import packed_decode_weights
    torch.manual_seed(0)
    layers = [Linear(512, 512), Linear(1024, 256), Linear(13, 7), Linear(64, 2000)]
    copies = packed_decode_weights(layers)
    for layer, copy_ in zip(layers, copies):
        assert torch.equal(copy_, layer.weight) and copy_.stride() == layer.decode_weight().stride()
        assert copy_.data_ptr() % 64 == 0 and copy_.data_ptr() != layer.weight.data_ptr()
    ends = sorted((c.data_ptr(), c.data_ptr() + 4 * c.numel()) for c in copies)
    assert all(end <= start for (_, end), (start, _) in zip(ends, ends[1:]))  # no overlaps
