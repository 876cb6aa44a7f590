"""seqmix models as transformers models: SeqMixConfig / SeqMixForCausalLM, the Auto classes,
save_pretrained / from_pretrained (safetensors), generate() on the recurrent state, and
`seqmix generate --from-hf`."""
from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import assert_rel_close  # noqa: E402
from seqmix import ModelConfig, SeqMixLM, available_mixers  # noqa: E402
from seqmix.cli import main  # noqa: E402
from seqmix.interop import SeqMixConfig, SeqMixForCausalLM, load_pretrained  # noqa: E402
from seqmix.interop.hf import GenerationState  # noqa: E402
from seqmix.model.generate import sample  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

CONFIGS = {
    "mamba2": ModelConfig(mixer="mamba2", vocab_size=61, d_model=32, n_layers=2, n_heads=2),
    "ttt-untied": ModelConfig(mixer="ttt_mlp", vocab_size=61, d_model=32, n_layers=2, n_heads=2, tie_embeddings=False,
                              mixer_options={"mini_batch_size": 4}),
    "hybrid": ModelConfig(pattern=["attention", {"mixer": "rwkv4", "options": {"d_attn": 24}}], vocab_size=61,
                          d_model=32, n_layers=2, n_heads=2, ffn="none", norm="layernorm", embed_norm=True),
}


@pytest.fixture(params=list(CONFIGS))
def wrapped(request):
    torch.manual_seed(0)
    return SeqMixForCausalLM.from_seqmix(SeqMixLM(CONFIGS[request.param])).eval()


def test_config_carries_and_validates_model_config():
    cfg = SeqMixConfig.from_model_config(CONFIGS["hybrid"])
    assert cfg.to_model_config() == CONFIGS["hybrid"]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 32, 2)  # what generate() reads
    assert SeqMixConfig.from_dict(cfg.to_dict()).to_model_config() == CONFIGS["hybrid"]
    with pytest.raises(ValueError, match="ModelConfig.norm='rms'"):
        SeqMixConfig(norm="rms")


def test_save_pretrained_round_trip_through_auto_classes(wrapped, tmp_path):
    wrapped.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "seqmix"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SeqMixConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SeqMixForCausalLM)
    tied = wrapped.config.tie_word_embeddings
    assert (loaded.model.head.weight is loaded.model.embed.weight) == tied
    for name, tensor in wrapped.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    tokens = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, wrapped.model(tokens))
    assert torch.equal(load_pretrained(tmp_path)(tokens), wrapped.model(tokens))


# every mixer alone, and every hybrid preset
GENERATE_CONFIGS = {name: ModelConfig(mixer=name, vocab_size=61, d_model=32, n_layers=2, n_heads=2)
                    for name in available_mixers()}
GENERATE_CONFIGS.update({name: ModelConfig(pattern=name, vocab_size=61, d_model=32, n_layers=3, n_heads=2)
                         for name in ("jamba", "samba", "griffin")})
GENERATE_CONFIGS.update({f"wrapped-{name}": config for name, config in CONFIGS.items()})


def _count_forward_lengths(model):
    """Record the sequence length of every SeqMixLM forward call."""
    lengths, forward = [], model.forward
    model.forward = lambda tokens, state=None, **kw: lengths.append(tokens.shape[1]) or forward(tokens, state=state, **kw)
    return lengths


@pytest.mark.parametrize("name", list(GENERATE_CONFIGS))
def test_generate_runs_on_the_state(name):
    """Greedy, sampling and beam search: one prefill, then one token per step (no prefix recomputed), and the
    same tokens as recomputing every prefix (use_cache=False). float64, so sampling draws the same tokens."""
    torch.manual_seed(0)
    wrapped = SeqMixForCausalLM.from_seqmix(SeqMixLM(GENERATE_CONFIGS[name])).double().eval()
    model = wrapped.model
    prompt = torch.randint(0, 61, (2, 9))
    lengths = _count_forward_lengths(model)
    with torch.no_grad():
        greedy = wrapped.generate(prompt, max_new_tokens=8, do_sample=False)
        assert lengths == [9] + [1] * 7
        assert torch.equal(greedy[:, :9], prompt)
        assert torch.equal(greedy[:, 9:], sample(model, prompt, 8, temperature=0))
        for kwargs in (dict(do_sample=True, top_k=0), dict(num_beams=3, do_sample=False)):
            lengths.clear()
            torch.manual_seed(1)
            with_state = wrapped.generate(prompt, max_new_tokens=6, **kwargs)
            assert lengths == [9] + [1] * 5, kwargs
            torch.manual_seed(1)
            recomputed = wrapped.generate(prompt, max_new_tokens=6, use_cache=False, **kwargs)
            assert lengths[6:] == [9, 10, 11, 12, 13, 14], kwargs
            assert torch.equal(with_state, recomputed), kwargs


def test_beam_search_is_exact_when_transformers_does_not_reorder_the_state(wrapped, monkeypatch):
    """If a transformers version stops reordering the state between beams, the rows are matched by their
    token history instead: still one token per step, still the recomputed result."""
    monkeypatch.setattr(SeqMixForCausalLM, "_reorder_cache", lambda self, state, beam_idx: state)
    prompt = torch.randint(0, 61, (1, 7))
    lengths = _count_forward_lengths(wrapped.model)
    with torch.no_grad():
        with_state = wrapped.generate(prompt, max_new_tokens=6, num_beams=4, do_sample=False)
        assert lengths == [7] + [1] * 5
        recomputed = wrapped.generate(prompt, max_new_tokens=6, num_beams=4, do_sample=False, use_cache=False)
    assert torch.equal(with_state, recomputed)


def test_generation_state_that_does_not_continue_the_tokens_is_recomputed_with_a_warning(wrapped):
    prompt = torch.randint(0, 61, (2, 6))
    with torch.no_grad():
        state = wrapped(prompt[:, :4], state=GenerationState(wrapped.model.init_state(2), prompt[:, :0])).state
        assert torch.equal(state.tokens, prompt[:, :4])
        inputs = wrapped.prepare_inputs_for_generation(prompt, state=state)
        assert torch.equal(inputs["input_ids"], prompt[:, 4:])  # continues: only the unseen tokens
        other = prompt.clone()
        other[:, 0] = (other[:, 0] + 1) % 61
        with pytest.warns(RuntimeWarning, match="recomputing from the start"):
            inputs = wrapped.prepare_inputs_for_generation(other, state=state)
        assert torch.equal(inputs["input_ids"], other) and inputs["state"].tokens.shape == (2, 0)


def test_forward_loss_state_and_padding():
    torch.manual_seed(0)
    wrapped = SeqMixForCausalLM(SeqMixConfig.from_model_config(CONFIGS["mamba2"]))
    tokens = torch.randint(0, 61, (2, 8))
    out = wrapped(tokens, labels=tokens)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 61), tokens[:, 1:].reshape(-1))
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-6) and out.state is None  # training mode
    wrapped.eval()
    with torch.no_grad():
        first = wrapped(tokens[:, :5])
        rest = wrapped(tokens[:, 5:], state=first.state)
        assert_rel_close(torch.cat([first.logits, rest.logits], 1), wrapped(tokens, use_cache=False).logits)
    with pytest.raises(ValueError, match="padded batches"):
        wrapped(tokens, attention_mask=torch.tensor([[1] * 8, [0] + [1] * 7]))


def test_cli_generate_from_hf_directories(tmp_path, capsys):
    torch.manual_seed(0)
    ours = SeqMixForCausalLM.from_seqmix(SeqMixLM(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2)))
    ours.save_pretrained(tmp_path / "seqmix")
    mamba = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=256, hidden_size=16,
                                                                   num_hidden_layers=2, state_size=4))
    mamba.save_pretrained(tmp_path / "mamba")
    for name, model in (("seqmix", ours.model), ("mamba", None)):
        argv = ["generate", "--from-hf", str(tmp_path / name), "--prompt", "ROMEO.", "--max-new-tokens", "12",
                "--temperature", "0"]
        assert main(argv) == 0
        text = capsys.readouterr().out
        if model is None:
            model = load_pretrained(tmp_path / name)
        greedy = sample(model, torch.tensor([list(b"ROMEO.")]), 12, temperature=0)[0]
        assert text == "ROMEO." + bytes(greedy.tolist()).decode("utf-8", errors="replace") + "\n"
    small = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1))
    small.save_pretrained(tmp_path / "no-tokenizer")
    assert main(["generate", "--from-hf", str(tmp_path / "no-tokenizer")]) == 2
    assert "no tokenizer" in capsys.readouterr().err
