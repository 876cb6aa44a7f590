"""The mixture-of-experts FFN against a plain loop over tokens and experts with the same routing; its
load-balancing loss; per-layer FFNs in a pattern; training with the auxiliary loss."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.ffn import FFNS
from seqmix.ffn.moe import MoE, auxiliary_loss
from seqmix.train import train

F64 = torch.float64


def _loop_over_experts(m: MoE, x):
    """Every token separately: scores, its top-k, and a sum of SwiGLU (or relu² MLP) experts written out."""
    out = torch.zeros_like(x)
    for n, token in enumerate(x):
        logits = m.router.weight @ token
        scores = logits.softmax(-1) if m.score == "softmax" else logits.sigmoid()
        choice = scores if m.selection_bias is None else scores + m.selection_bias
        size = m.n_experts // m.n_groups
        group_score = [sorted(choice[g * size:(g + 1) * size].tolist())[-2:] for g in range(m.n_groups)]
        best_groups = sorted(range(m.n_groups), key=lambda g: -sum(group_score[g]))[:m.top_groups]
        allowed = [e for e in range(m.n_experts) if e // size in best_groups]
        chosen = sorted(allowed, key=lambda e: -choice[e])[:m.top_k]
        total = sum(scores[e] for e in chosen) if m.normalize else 1.0
        for e in chosen:
            W1, W3 = m.gate_up[e][:m.hidden], m.gate_up[e][m.hidden:]
            hidden = F.silu(W1 @ token) * (W3 @ token) if m.gated else F.relu(W1 @ token) ** 2
            out[n] += m.scale * scores[e] / total * (m.down[e] @ hidden)
        if m.shared is not None and not m.gated:
            out[n] += m.shared.down.weight @ F.relu(m.shared.up.weight @ token) ** 2
        elif m.shared is not None:
            s = m.shared.down.weight @ (F.silu(m.shared.gate_up.weight[:m.shared.down.in_features] @ token)
                                        * (m.shared.gate_up.weight[m.shared.down.in_features:] @ token))
            out[n] += s * (torch.sigmoid(m.shared_gate.weight[0] @ token) if m.shared_gate is not None else 1)
    return out


@pytest.mark.parametrize("options", [
    {},
    {"n_experts": 6, "top_k": 3, "normalize": False, "shared_hidden": 10, "shared_gate": True},  # Qwen3-Next's
    {"score": "sigmoid", "selection_bias": True, "scale": 2.5, "shared_hidden": 8},  # DeepSeek-V3 / Kimi's
    {"n_experts": 4, "top_k": 4, "hidden": 5},
    {"n_experts": 8, "top_k": 3, "n_groups": 4, "top_groups": 2, "score": "sigmoid", "selection_bias": True},  # Kimi's
    {"expert": "relu2", "score": "sigmoid", "selection_bias": True, "scale": 2.5, "shared_hidden": 8},  # Nemotron-H's
    {"expert": "relu2", "n_experts": 5, "top_k": 2, "hidden": 3}])
def test_moe_equals_a_loop_over_experts(options):
    torch.manual_seed(0)
    m = FFNS.build("moe", 12, options=options).double()
    if m.selection_bias is not None:
        m.selection_bias.copy_(torch.randn(m.n_experts, dtype=F64))
    x = torch.randn(3, 7, 12, dtype=F64)
    y, _ = m(x)
    assert_close(y.reshape(-1, 12), _loop_over_experts(m, x.reshape(-1, 12)))


def test_moe_gradients_are_exact():
    torch.manual_seed(0)
    m = FFNS.build("moe", 6, options={"n_experts": 3, "hidden": 4, "shared_hidden": 3, "shared_gate": True,
                                      "aux_loss_weight": 0.0}).double()
    x = torch.randn(1, 5, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W: torch.func.functional_call(m, {"gate_up": W}, (x,))[0],
                                    (x, m.gate_up.detach().clone().requires_grad_()))


def test_load_balancing_loss():
    m = FFNS.build("moe", 8, options={"n_experts": 4, "top_k": 2, "aux_loss_weight": 0.5})
    torch.nn.init.zeros_(m.router.weight)  # uniform scores: E · Σ_e f_e / E = Σ_e f_e = top_k
    m.train()
    m(torch.randn(2, 5, 8))
    assert m.aux_loss.item() == pytest.approx(0.5 * 2)
    loss = auxiliary_loss(m)
    assert m.aux_loss is None and auxiliary_loss(m) == 0.0  # read once
    loss.backward()
    assert m.router.weight.grad is not None  # it trains the router
    m.eval()
    m(torch.randn(2, 5, 8))
    with torch.no_grad():
        m.train()(torch.randn(2, 5, 8))
    assert m.aux_loss is None and auxiliary_loss(m) == 0.0  # eval and no-grad forwards leave no loss behind


def test_moe_model_with_dense_layers_holds_the_any_split_invariant():
    moe = {"n_experts": 4, "top_k": 2, "shared_hidden": 8, "shared_gate": True}
    config = ModelConfig(d_model=32, n_layers=3, n_heads=2, ffn="moe", ffn_options=moe, pattern=[
        "gated_deltanet", {"mixer": "attention", "ffn": "swiglu", "ffn_options": {"hidden": 40}},
        {"mixer": "gated_deltanet", "ffn": "none"}])
    model = SeqMixLM(config)
    assert [type(b.ffn).__name__ for b in model.blocks] == ["MoE", "SwiGLU", "NoneType"]
    assert model.blocks[1].ffn.down.in_features == 40
    assert_any_split(config)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ffn="moe", ffn_options={"top_k": 9}), "top_k=9: must be at most n_experts=8"),
    (dict(ffn="moe", ffn_options={"score": "relu"}), r"score='relu': must be one of \['softmax', 'sigmoid'\]"),
    (dict(ffn="moe", ffn_options={"shared_gate": True}), "shared_gate=True needs shared experts"),
    (dict(ffn="moe", ffn_options={"n_groups": 3}), "n_groups=3: must divide n_experts=8"),
    (dict(ffn="moe", ffn_options={"n_groups": 4, "top_groups": 1, "top_k": 3}), "top_groups=1: must be at most"),
    (dict(pattern=["gla", {"mixer": "gla", "ffn": "geglu"}], n_layers=2), r"pattern\[1\].ffn='geglu': unknown"),
    (dict(pattern=["gla", {"mixer": "gla", "ffn": "moe", "ffn_options": {"experts": 2}}], n_layers=2),
     r"pattern\[1\] for 'moe': unknown option\(s\) \['experts'\]"),
    (dict(pattern=["gla", {"mixer": "gla", "norm": "x"}], n_layers=2), "must be a mixer name or a dict with keys"),
])
def test_bad_moe_and_layer_ffn_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(**{"d_model": 32, "n_heads": 2, **kwargs}))


def test_training_adds_the_load_balancing_loss(corpus_dir, tmp_path):
    """One step with and without the auxiliary loss: the same language-model loss, different router updates."""
    routers = {}
    for weight in (0.0, 1.0):
        model = ModelConfig(mixer="gla", d_model=32, n_layers=1, n_heads=2, ffn="moe",
                            ffn_options={"n_experts": 4, "aux_loss_weight": weight})
        result = train(train_config(corpus_dir, tmp_path / str(weight), model), quiet=True)
        routers[weight] = (result["model"].blocks[0].ffn.router.weight.detach(), result["history"][0]["loss"])
    assert routers[0.0][1] == routers[1.0][1]  # the logged loss is the language model's alone
    assert not torch.allclose(routers[0.0][0], routers[1.0][0])


def train_config(corpus, out, model):
    from seqmix.train import TrainConfig
    return TrainConfig(model=model, corpus=corpus, steps=1, batch_size=2, seq_len=16, lr=1e-2, warmup_steps=0,
                       eval_interval=1000, log_interval=1, checkpoint_interval=1000, out_dir=str(out), device="cpu",
                       final_eval_bytes=64)
