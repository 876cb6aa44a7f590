"""The parallel mixer: the sum of its mixers, each with its own options and state."""
import pytest
import torch

from helpers import assert_any_split, assert_close
from seqmix import ModelConfig, SeqMixLM
from seqmix.mixers import MIXERS

SIDE_BY_SIDE = ["gla", {"mixer": "attention", "options": {"n_heads": 4, "n_kv_heads": 2, "rope_fraction": 0.5}},
                {"mixer": "mamba2", "options": {"d_state": 4, "headdim": 8, "chunk_size": 4}}]


def test_parallel_is_the_sum_of_its_mixers():
    torch.manual_seed(0)
    m = MIXERS.build("parallel", 16, 2, options={"mixers": SIDE_BY_SIDE}).double()
    assert [x.registered_name for x in m.mixers] == ["gla", "attention", "mamba2"]
    assert (m.mixers[1].n_heads, m.mixers[1].n_kv_heads, m.mixers[0].n_heads) == (4, 2, 2)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    assert_close(m(x)[0], sum(sub(x)[0] for sub in m.mixers))
    state = m.init_state(2)
    assert set(state) == {"0", "1", "2"}
    y, new = m(x, state)
    assert_close(y, m(x)[0])
    assert new["1"]["k"].shape == (2, 2, 9, 4)


def test_parallel_any_split():
    assert_any_split(ModelConfig(mixer="parallel", d_model=16, n_layers=2, n_heads=2,
                                 mixer_options={"mixers": SIDE_BY_SIDE}))


@pytest.mark.parametrize("mixers, message", [
    ([], r"mixers=\[\]"), (["gla", "nope"], "unknown mixer 'nope'"), ([{"name": "gla"}], "entry"),
    ([{"mixer": "gla", "options": {"chunk_size": -1}}], "chunk_size=-1"), ("gla", "mixers='gla'"),
])
def test_parallel_refuses_bad_entries(mixers, message):
    with pytest.raises(ValueError, match=message):
        SeqMixLM(ModelConfig(mixer="parallel", d_model=16, n_layers=1, n_heads=2, mixer_options={"mixers": mixers}))


def test_parallel_gradients_are_exact():
    torch.manual_seed(0)
    mixers = ["gla", {"mixer": "mamba2", "options": {"d_state": 2, "headdim": 4, "chunk_size": 4}}]
    m = MIXERS.build("parallel", 8, 2, options={"mixers": mixers}).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,))
