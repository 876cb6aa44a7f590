import pytest
import torch
import torch.nn.functional as F

from helpers import assert_any_split
from seqmix import ModelConfig, SeqMixLM


def layout(pattern, n_layers):
    """Short names per layer: M(amba), R(G-LRU), A(ttention, full), W(indowed attention, window)."""
    out = []
    for s in ModelConfig(pattern=pattern, n_layers=n_layers, d_model=32, n_heads=2).layer_specs():
        if s.mixer == "attention":
            out.append(f"W{s.options['window']}" if s.options.get("window") else "A")
        else:
            out.append({"mamba": "M", "rglru": "R"}[s.mixer])
    return out


def test_jamba_layout():
    assert layout("jamba", 8) == ["M"] * 4 + ["A"] + ["M"] * 3
    assert layout("jamba", 16) == (["M"] * 4 + ["A"] + ["M"] * 3) * 2
    assert layout("jamba", 10).count("A") == 1
    for n in range(1, 5):  # fewer than 5 layers: still one attention layer, in the middle
        assert layout("jamba", n) == ["A" if i == n // 2 else "M" for i in range(n)]
    spec = ModelConfig(pattern="jamba", n_layers=8, d_model=32, n_heads=2).layer_specs()[4]
    assert spec.options == {"rope": False}


def test_production_hybrid_layouts():
    for pattern, linear, full in (("qwen3_next", "gated_deltanet", "attention"), ("kimi_linear", "kda", "mla")):
        names = [s.mixer for s in ModelConfig(pattern=pattern, n_layers=8, d_model=32, n_heads=2).layer_specs()]
        assert names == [linear] * 3 + [full] + [linear] * 3 + [full]
        names = [s.mixer for s in ModelConfig(pattern=pattern, n_layers=2, d_model=32, n_heads=2).layer_specs()]
        assert names == [linear, full]


def test_samba_and_griffin_layouts():
    assert layout("samba", 5) == ["M", "W128", "M", "W128", "M"]
    assert layout("griffin", 7) == ["R", "R", "W128", "R", "R", "W128", "R"]
    assert layout("griffin", 2) == ["R", "W128"]
    assert layout("griffin", 1) == ["R"]


@pytest.mark.parametrize("pattern, n_layers", [("jamba", 2), ("samba", 2), ("griffin", 3), ("qwen3_next", 4),
                                               ("kimi_linear", 2)])
def test_presets_hold_the_any_split_invariant(pattern, n_layers):
    assert_any_split(ModelConfig(pattern=pattern, n_layers=n_layers, d_model=32, n_heads=2))


def test_free_list_with_short_windows_holds_the_any_split_invariant():
    # windows shorter than the test sequence, so the rolling KV caches really roll
    swa = {"mixer": "attention", "options": {"window": 5}}
    cfg = ModelConfig(pattern=["mamba", swa, "rglru", "rglru", {"mixer": "attention", "options": {"window": 3}}],
                      n_layers=5, d_model=32, n_heads=2, mixer_options={"rglru": {"chunk_size": 4}})
    assert_any_split(cfg)


@pytest.mark.parametrize("pattern, n_layers", [("jamba", 2), ("samba", 2), ("griffin", 3), ("qwen3_next", 2),
                                               ("kimi_linear", 2)])
def test_presets_train(pattern, n_layers):
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig(pattern=pattern, n_layers=n_layers, d_model=32, n_heads=2, vocab_size=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 16, (4, 33))
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_mixer_options_refine_a_preset_but_not_an_explicit_entry():
    preset = ModelConfig(pattern="samba", n_layers=2, d_model=32, n_heads=2,
                         mixer_options={"attention": {"window": 16}})
    assert preset.layer_specs()[1].options["window"] == 16
    explicit = ModelConfig(pattern=["mamba", {"mixer": "attention", "options": {"window": 8}}], n_layers=2,
                           d_model=32, n_heads=2, mixer_options={"attention": {"window": 16}})
    assert explicit.layer_specs()[1].options["window"] == 8
