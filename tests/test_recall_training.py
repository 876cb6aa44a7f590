"""The recall trainer: learning-rate sweep by successive halving, early stopping, test accuracy on its own split."""
import torch

from seqmix.arena.plan import Arch
from seqmix.arena.recall import RecallData, accuracy, train_recall
from seqmix.arena.cells import recall_model
from seqmix.data.mqar import multiquery_ar


def _data():
    gen = dict(vocab_size=32, input_seq_len=16, num_kv_pairs=2)
    return RecallData(multiquery_ar(num_examples=64, seed=0, **gen), multiquery_ar(num_examples=16, seed=1, **gen),
                      multiquery_ar(num_examples=24, seed=2, **gen))


def _build():
    return recall_model(Arch("attention", mixer="attention"), 16, 1, 32, mixer_conv=3)


def test_recall_model_is_zoologys():
    model = _build()
    assert model.config.ffn == "none" and not model.config.tie_embeddings and model.config.mixer_conv == 3
    assert model.config.n_heads == 1


def test_a_run_that_reaches_the_target_stops_and_skips_the_other_learning_rates():
    result = train_recall(_build, _data(), lrs=(1e-2, 3e-3), probe_steps=6, max_steps=10, batch_size=8,
                          eval_every=2, target=0.0)
    assert list(result["lrs"]) == ["0.01"] and result["steps"] == 2 and result["converged"]


def test_the_best_probe_continues_to_max_steps_and_is_tested_on_the_test_split():
    data = _data()
    result = train_recall(_build, data, lrs=(1e-9, 1e-2), probe_steps=4, max_steps=12, batch_size=8, eval_every=2,
                          target=2.0)
    probes = {float(lr): acc for lr, acc in result["lrs"].items()}
    assert set(probes) == {1e-9, 1e-2} and result["best_lr"] == max(probes, key=probes.get)
    assert result["steps"] == 12 and not result["converged"]
    assert result["curve"][-1] == (12, result["val_accuracy"])
    assert result["test_queries"] == int((data.test[1] != -100).sum()) == 24 * 2
    torch.manual_seed(0)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= accuracy(_build(), data.test) <= 1.0
