import pytest
import torch

from seqmix import ModelConfig, SeqMixLM
from seqmix.cli import main
from seqmix.model.generate import generate, sample
from seqmix.train.checkpoint import save_checkpoint


def _model(mixer="gla", dtype=torch.float32):
    torch.manual_seed(0)
    return SeqMixLM(ModelConfig(mixer=mixer, d_model=32, n_layers=2, n_heads=2)).to(dtype)


def test_generate_is_deterministic_given_a_seed():
    model = _model()
    a = generate(model, "To be", 40, temperature=1.0, seed=3)
    b = generate(model, "To be", 40, temperature=1.0, seed=3)
    c = generate(model, "To be", 40, temperature=1.0, seed=4)
    assert a == b and a != c


@pytest.mark.parametrize("mixer", ["attention", "gla"])
def test_decoding_through_the_state_equals_recomputing_the_whole_sequence(mixer):
    model = _model(mixer, torch.float64)
    prompt = torch.randint(0, 256, (2, 7))
    new = sample(model, prompt, 12, temperature=0)
    tokens = prompt
    with torch.no_grad():
        for _ in range(12):  # the oracle: a full forward pass for every new token
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(new, tokens[:, 7:])
    assert not new.is_inference()  # sampled in inference mode, handed back usable anywhere (e.g. as training input)
    model(new).sum().backward()


def test_top_k_one_is_greedy_and_sampling_respects_top_k():
    model = _model()
    prompt = torch.tensor([[84, 111]])
    assert torch.equal(sample(model, prompt, 10, temperature=1.5, top_k=1, seed=0), sample(model, prompt, 10, temperature=0))
    with torch.no_grad():
        allowed = set(model(prompt)[0, -1].topk(3).indices.tolist())
    firsts = {int(sample(model, prompt, 1, temperature=5.0, top_k=3, seed=s)[0, 0]) for s in range(30)}
    assert firsts <= allowed and len(firsts) > 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt must not be empty"),
    (dict(top_k=0), "top_k=0"),
    (dict(temperature=-1.0), "temperature=-1.0"),
])
def test_generate_refuses_bad_arguments(kwargs, message):
    args = dict(prompt="x", max_new_tokens=3, temperature=1.0, top_k=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        generate(_model(), args.pop("prompt"), **args)


def test_cli_generate_smoke(tmp_path, capsys):
    model = _model()
    save_checkpoint(tmp_path / "ckpt", model, {"model": model.config.to_dict()}, {"step": 0})
    argv = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "ROMEO.", "--max-new-tokens", "20",
            "--seed", "1", "--top-k", "5"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert first.startswith("ROMEO.") and capsys.readouterr().out == first


def test_sample_reports_its_prefill_and_decode_time_without_changing_the_tokens():
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2))
    prompt = torch.randint(0, 256, (2, 9))
    timings = {}
    timed = sample(model, prompt, 5, temperature=0, timings=timings)
    assert torch.equal(timed, sample(model, prompt, 5, temperature=0))
    assert set(timings) == {"prefill_seconds", "decode_seconds"}
    assert timings["prefill_seconds"] > 0 and timings["decode_seconds"] > 0
