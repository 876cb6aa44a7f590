import pytest
import torch

from seqmix.data.mqar import IGNORE, multiquery_ar, recall_accuracy


def test_mqar_labels_are_the_values_of_the_queried_keys():
    inputs, labels = multiquery_ar(vocab_size=256, num_examples=16, input_seq_len=64, seed=3, num_kv_pairs=8)
    assert inputs.shape == labels.shape == (16, 64)
    for x, y in zip(inputs, labels):
        pairs = {int(x[2 * j]): int(x[2 * j + 1]) for j in range(8)}
        assert all(1 <= k < 128 for k in pairs) and all(128 <= v < 256 for v in pairs.values())
        positions = torch.nonzero(y != IGNORE).flatten()
        assert len(positions) == 8
        for t in positions:
            assert pairs[int(x[t])] == int(y[t])


def test_mqar_is_deterministic_per_seed_and_differs_across_seeds():
    a = multiquery_ar(128, 8, 32, seed=1, num_kv_pairs=4)
    b = multiquery_ar(128, 8, 32, seed=1, num_kv_pairs=4)
    c = multiquery_ar(128, 8, 32, seed=2, num_kv_pairs=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=64, input_seq_len=33), "must be even"),
    (dict(vocab_size=32, input_seq_len=64), "must exceed"),
    (dict(vocab_size=256, input_seq_len=16, num_kv_pairs=8), "do not fit"),
])
def test_mqar_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        multiquery_ar(num_examples=2, seed=0, **kwargs)


def test_recall_accuracy_counts_only_labelled_positions():
    labels = torch.tensor([[IGNORE, 5, IGNORE, 7]])
    logits = torch.zeros(1, 4, 10)
    logits[0, 1, 5] = 1  # right
    logits[0, 3, 2] = 1  # wrong
    logits[0, 0, 9] = 1  # unlabelled, ignored
    assert recall_accuracy(logits, labels) == 0.5


def test_prompt_order_layouts_differ_only_in_the_prefix():
    from seqmix.data.mqar import prompt_order_recall

    after, y_after = prompt_order_recall(128, 20, num_kv_pairs=8, num_queries=2, seed=4, announce=False)
    first, y_first = prompt_order_recall(128, 20, num_kv_pairs=8, num_queries=2, seed=4, announce=True)
    assert after.shape == first.shape == (20, 2 + 16 + 2)
    assert torch.equal(after[:, 2:], first[:, 2:]) and torch.equal(y_after, y_first)
    assert bool((after[:, :2] == 0).all()) and torch.equal(first[:, :2], first[:, -2:])  # the asked keys, in order
    for x, y in zip(first, y_first):
        pairs = {int(x[2 + 2 * j]): int(x[3 + 2 * j]) for j in range(8)}
        assert len(pairs) == 8 and all(1 <= k < 64 for k in pairs) and all(64 <= v < 128 for v in pairs.values())
        assert [pairs[int(k)] for k in x[-2:]] == y[-2:].tolist() and bool((y[:-2] == IGNORE).all())


@pytest.mark.parametrize("kwargs, message", [(dict(num_queries=9), "num_queries=9"),
                                             (dict(num_kv_pairs=64, num_queries=2), "distinct keys")])
def test_prompt_order_rejects_impossible_settings(kwargs, message):
    from seqmix.data.mqar import prompt_order_recall

    args = {"num_kv_pairs": 8, "num_queries": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        prompt_order_recall(128, 4, seed=0, announce=True, **args)
