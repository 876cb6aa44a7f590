"""Multi-query associative recall (MQAR), generated exactly by the zoology recipe (Arora et al. 2023).

Each example lists key-value pairs ``k1 v1 k2 v2 ...`` (keys from [1, V/2), values from [V/2, V)), then a
query region where each key reappears once at a power-law distributed gap; the model must emit the key's
value right after the key. Labels are -100 except at those positions. The random draws follow zoology's
``multiquery_ar`` step by step (numpy's global generator seeded once), so the same arguments give the
same examples as the reference.
"""
from __future__ import annotations

import numpy as np
import torch

IGNORE = -100


def multiquery_ar(vocab_size: int, num_examples: int, input_seq_len: int, seed: int, power_a: float = 0.01,
                  num_kv_pairs: int = 8, num_passes: int = 1,
                  random_non_queries: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (inputs, labels), both int64 [num_examples, input_seq_len]."""
    if input_seq_len % 2:
        raise ValueError(f"mqar: input_seq_len={input_seq_len} must be even")
    if vocab_size <= input_seq_len:
        raise ValueError(f"mqar: vocab_size={vocab_size} must exceed input_seq_len={input_seq_len}")
    if num_kv_pairs * 2 * num_passes + num_kv_pairs * 2 > input_seq_len:
        raise ValueError(f"mqar: {num_kv_pairs} pairs × {num_passes} passes do not fit in {input_seq_len} tokens")
    np.random.seed(seed)
    context_size = num_kv_pairs * 2 * num_passes
    key_vocab_size = vocab_size // 2
    key_choices = np.arange(1, key_vocab_size)
    value_choices = np.arange(key_vocab_size, vocab_size)
    keys = np.stack([np.random.choice(key_choices, size=num_kv_pairs, replace=False) for _ in range(num_examples)])
    values = np.stack([np.random.choice(value_choices, size=num_kv_pairs, replace=False) for _ in range(num_examples)])
    kvs = np.zeros((num_examples, num_kv_pairs * 2), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values
    kvs = np.tile(kvs, num_passes)

    space = (input_seq_len - context_size) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np.stack([np.random.choice(space, size=num_kv_pairs, replace=False, p=p) for _ in range(num_examples)])

    queries = np.zeros((num_examples, input_seq_len - context_size + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, values=keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((num_examples, input_seq_len + 1), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context_size + 1, values=values, axis=1)

    inputs, labels = torch.tensor(examples[:, :-1]), torch.tensor(labels[:, 1:])
    if random_non_queries:
        zeros = inputs == 0
        # zoology draws these from torch's global generator; a generator seeded by `seed` keeps the
        # examples reproducible without touching global state.
        gen = torch.Generator().manual_seed(seed)
        inputs[zeros] = torch.randint(vocab_size, (int(zeros.sum()),), generator=gen)
    return inputs, labels


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact-match accuracy of argmax predictions over labelled positions."""
    mask = labels != IGNORE
    return (logits.argmax(-1)[mask] == labels[mask]).float().mean().item()


def prompt_order_recall(vocab_size: int, num_examples: int, num_kv_pairs: int, num_queries: int, seed: int,
                        announce: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall where the question may come first (the prompt-order study of RWKV-4's paper, §9, and "Just read
    twice", Arora et al. 2024), as a synthetic task.

    Each example holds ``num_kv_pairs`` key-value pairs of which ``num_queries`` are asked, in three parts
    of fixed length, so the two layouts differ in nothing but what the prefix says:

        [prefix: num_queries tokens] [k1 v1 ... kN vN] [q1 q2 ... qQ]

    With ``announce`` the prefix lists the queried keys (in the order they will be asked); without it, the
    prefix is the blank token 0. Labels: the value of each query key at its position, -100 elsewhere. Keys
    come from [1, V/2), values from [V/2, V). The same seed gives the same pairs and queries in both layouts.
    Returns (inputs, labels), int64 [num_examples, 2·num_queries + 2·num_kv_pairs].
    """
    if not 1 <= num_queries <= num_kv_pairs:
        raise ValueError(f"prompt_order_recall: num_queries={num_queries} must be in 1..num_kv_pairs={num_kv_pairs}")
    if num_kv_pairs >= vocab_size // 2:
        raise ValueError(f"prompt_order_recall: {num_kv_pairs} distinct keys need vocab_size > {2 * num_kv_pairs + 1}")
    rng = np.random.default_rng(seed)
    half = vocab_size // 2
    keys = np.stack([rng.choice(np.arange(1, half), num_kv_pairs, replace=False) for _ in range(num_examples)])
    values = np.stack([rng.choice(np.arange(half, vocab_size), num_kv_pairs, replace=False)
                       for _ in range(num_examples)])
    asked = np.stack([rng.choice(num_kv_pairs, num_queries, replace=False) for _ in range(num_examples)])
    query_keys = np.take_along_axis(keys, asked, axis=1)
    context = np.zeros((num_examples, 2 * num_kv_pairs), dtype=np.int64)
    context[:, 0::2], context[:, 1::2] = keys, values
    prefix = query_keys if announce else np.zeros_like(query_keys)
    inputs = np.concatenate([prefix, context, query_keys], axis=1)
    labels = np.full_like(inputs, IGNORE)
    labels[:, -num_queries:] = np.take_along_axis(values, asked, axis=1)
    return torch.tensor(inputs, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
