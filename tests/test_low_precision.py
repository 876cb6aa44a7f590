"""Reduced-precision weights for inference (bfloat16, int8 weight-only): the products against their definition,
whole models within a stated tolerance of float32, float32 states, exact decoding, the CLI and the bench."""
import argparse
import copy
import json

import pytest
import torch

from helpers import state_tensors
from seqmix import ModelConfig, SeqMixLM
from seqmix.bench import cli as bench_cli
from seqmix.cli import main
from seqmix.layers.low_precision import WeightOnlyLinear, low_precision_weights
from seqmix.model.generate import sample
from seqmix.train.checkpoint import save_checkpoint

# the largest |logit − float32 logit| / max |float32 logit| allowed for these random models (measured: bfloat16
# ≤ 0.027, int8 ≤ 0.060); what it costs a trained model is its bits per byte (README)
TOLERANCE = {"bfloat16": 0.04, "int8": 0.08}


def test_products_follow_their_definition():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 20)
    x = torch.randn(3, 5, 48)
    int8 = WeightOnlyLinear(linear, "int8")
    scale = linear.weight.abs().amax(1) / 127  # one scale per output row
    q = torch.round(linear.weight / scale[:, None])
    assert torch.equal(int8.weight_int8.to(torch.float32), q) and int8.weight_int8.dtype == torch.int8
    # activations rounded to bfloat16 (the fast kernel's input), weights exactly Q · s
    expected = x.to(torch.bfloat16).double() @ (q.double() * scale.double()[:, None]).T + linear.bias.double()
    assert torch.allclose(int8(x).double(), expected, atol=1e-2, rtol=1e-2)
    odd = WeightOnlyLinear(torch.nn.Linear(33, 20), "int8")  # in_features % 8 ≠ 0: the widened path, no crash
    assert odd(torch.randn(2, 33)).shape == (2, 20)
    many = torch.randn(100, 48)  # more than FEW_ROWS rows: the float32 GEMM on the widened weight, same values
    expected = many.to(torch.bfloat16).double() @ (q.double() * scale.double()[:, None]).T + linear.bias.double()
    assert torch.allclose(int8(many).double(), expected, atol=1e-4, rtol=1e-4)
    bf16 = WeightOnlyLinear(linear, "bfloat16")
    expected = (x.to(torch.bfloat16).double() @ linear.weight.to(torch.bfloat16).double().T + linear.bias.double())
    assert torch.allclose(bf16(x).double(), expected, atol=1e-2, rtol=1e-2)
    assert int8(x).dtype == bf16(x).dtype == torch.float32
    with pytest.raises(ValueError, match="weight dtype 'fp8': choose one of"):
        WeightOnlyLinear(linear, "fp8")


@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "gla", "rwkv7", "ttt_linear", "attention", "gated_deltanet"])
@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_models_within_tolerance_with_float32_states_and_exact_decoding(mixer, dtype):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer=mixer, d_model=64, n_layers=2, n_heads=4)).eval()
    tokens = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        reference = model(tokens)
        low = low_precision_weights(copy.deepcopy(model), dtype)
        assert not any(isinstance(m, torch.nn.Linear) for m in low.modules())
        logits = low(tokens)
        assert (logits - reference).abs().max() <= TOLERANCE[dtype] * reference.abs().max()
        assert (logits - reference).abs().max() > 0  # the weights did change precision
        state = low.init_state(2)
        first, state = low(tokens[:, :20], state=state)
        steps = [first]
        for t in range(20, 30):
            step, state = low(tokens[:, t:t + 1], state=state)
            steps.append(step)
        assert all(t.dtype in (torch.float32, torch.int64) for t in state_tensors(state))
        decoded = torch.cat(steps, 1)
        # both round every product's input to bfloat16, so a last-bit float32 difference before it (the chunked
        # and the step forms sum in different orders) can move a logit by a bfloat16 step
        assert (decoded - logits).abs().max() <= 2e-2 * logits.abs().max()


def test_int8_weights_take_a_quarter_of_the_bytes():
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=64, n_layers=2, n_heads=4))
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    low = low_precision_weights(model, "int8")
    int8_bytes = sum(m.weight_int8.numel() + m.scale.numel() * 4 for m in low.modules()
                     if isinstance(m, WeightOnlyLinear))
    assert int8_bytes < 0.27 * linear_bytes


def test_cli_generate_with_int8_weights(tmp_path, capsys):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2))
    save_checkpoint(tmp_path / "ckpt", model, {"model": model.config.to_dict()}, {"step": 0})
    argv = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "ROMEO.", "--max-new-tokens", "12",
            "--temperature", "0", "--dtype", "int8"]
    assert main(argv) == 0
    greedy = sample(low_precision_weights(model, "int8"), torch.tensor([list(b"ROMEO.")]), 12, temperature=0)[0]
    assert capsys.readouterr().out == "ROMEO." + bytes(greedy.tolist()).decode("utf-8", errors="replace") + "\n"


def test_bench_generate_times_low_precision_weights(tmp_path):
    parser = argparse.ArgumentParser()
    bench_cli.configure(parser)
    out = tmp_path / "g.json"
    args = parser.parse_args(["--suite", "generate", "--mixers", "gla", "--sizes", "32x1", "--new-tokens", "2",
                              "--rounds", "1", "--weight-dtypes", "bfloat16,int8", "--out", str(out)])
    assert bench_cli.run(args) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"eager", "bfloat16", "int8"}
    assert rows["int8"]["param_bytes"] < rows["bfloat16"]["param_bytes"] < rows["eager"]["param_bytes"]
    with pytest.raises(ValueError, match=r"--weight-dtypes \['fp16'\]"):
        bench_cli.run(parser.parse_args(["--suite", "generate", "--weight-dtypes", "fp16"]))


def test_cli_eval_reports_bits_per_byte_with_low_precision_weights(tmp_path, capsys, corpus_dir):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2))
    save_checkpoint(tmp_path / "ckpt", model, {"model": model.config.to_dict(),
                                              "train": {"corpus": str(corpus_dir), "seq_len": 32}}, {"step": 0})
    bpb = {}
    for dtype in ("float32", "bfloat16", "int8"):
        assert main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--split", "test", "--max-bytes", "2000",
                     "--dtype", dtype, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["dtype"] == dtype
        bpb[dtype] = result["test"]["bpb"]
    assert bpb["bfloat16"] != bpb["float32"] != bpb["int8"]
    assert abs(bpb["bfloat16"] - bpb["float32"]) < 0.05 and abs(bpb["int8"] - bpb["float32"]) < 0.05
